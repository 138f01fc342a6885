"""tinabs: skeleton backups of XenServer / XCP-ng VMs as Celery task chains."""
