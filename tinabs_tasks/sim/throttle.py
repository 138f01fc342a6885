"""A token bucket shared by every stream a host serves (its NIC, in effect)."""
from __future__ import annotations

import threading
import time


#: how far behind schedule a stream may fall before it is not allowed to catch up: absorbs
#: time.sleep's overshoot (without it, a 1 MiB chunk sent in 5 writes loses ~10% of the rate)
SLEEP_SLACK_S = 0.005


class Throttle:
    def __init__(self, bytes_per_s: float):
        self.rate = bytes_per_s
        self._lock = threading.Lock()
        self._next_free = time.monotonic()

    def consume(self, nbytes: int) -> None:
        """Call after sending ``nbytes``: waits until the link would have finished them.  The
        time spent actually sending counts towards the budget instead of adding to it."""
        if self.rate <= 0:
            return
        with self._lock:
            now = time.monotonic()
            self._next_free = max(now - SLEEP_SLACK_S, self._next_free) + nbytes / self.rate
            wait = self._next_free - now
        if wait > 0:
            time.sleep(wait)
