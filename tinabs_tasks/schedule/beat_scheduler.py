"""Beat's scheduler: redbeat, told the broker's URL only inside the beat process.

redbeat wants ``redbeat_redis_url`` set (its fallback to ``broker_url`` is
deprecated), but Celery masks only settings whose names look secret or say
``broker_url``/``backend`` when workers report their configuration (Flower's
worker page shows it): a ``redbeat_redis_url`` in the app's settings would
show the Redis password there.  So it is set here, in beat, and nowhere else.
"""
from __future__ import annotations

from redbeat import RedBeatScheduler


class Scheduler(RedBeatScheduler):
    def __init__(self, app, *args, **kwargs):
        app.conf.redbeat_redis_url = app.conf.broker_url
        super().__init__(app, *args, **kwargs)
