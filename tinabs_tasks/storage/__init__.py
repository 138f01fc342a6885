"""What is on disk: the destination, manifests, the catalog, verify, retention, prune, janitor."""
