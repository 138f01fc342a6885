"""Run coordination in Redis: the run store, leases, locks, abort, progress, the stuck-run sweep."""
