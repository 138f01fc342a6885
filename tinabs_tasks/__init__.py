"""tinabs: skeleton backups of XenServer / XCP-ng VMs as Celery task chains.

``celery -A tinabs_tasks worker`` finds the app through ``app``/``celery``
below; importing the package alone (e.g. for the simulator) loads no config.
"""


def __getattr__(name: str):
    if name in ("app", "celery"):
        from tinabs_tasks.app import app
        return app
    raise AttributeError(name)
