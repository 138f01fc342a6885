"""The Celery entry points: thin tasks over backup, restore and the upkeep."""
