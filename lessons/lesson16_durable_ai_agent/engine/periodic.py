"""A thread that does one piece of work every interval, until it is stopped.

The heartbeat and the sweeper are two of these, each with a thread of its own,
so that a slow sweep never delays a heartbeat.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    """Calls `work()` every `interval` seconds on a thread named `name`."""

    def __init__(self, name: str, interval: float, work: Callable[[], None]) -> None:
        self.name = name
        self.interval = interval
        self.work = work
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def stopping(self) -> bool:
        """Whether `stop()` was called: long work should end early."""
        return self._stopping.is_set()

    def stop(self) -> None:
        """Stop after the run in progress, if there is one."""
        self._stopping.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self.work()
            except Exception:
                # The database may be restarting, or the work has a bug: either
                # way the loop goes on, and the next run comes on time.
                log.exception("%s failed", self.name)
