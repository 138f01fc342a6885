"""Restoring a backup into a pool, and the restore test (health check)."""
