"""The web console (`tinabs web`): pools, backups started and watched live, abort, the catalog,
verify and restore, behind a login.  It drives the same Celery app, job store and catalog as
the CLI; it has no backup logic of its own (routes.py lists every page and action)."""
