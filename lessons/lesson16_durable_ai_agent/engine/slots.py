"""A worker's slots: how many tasks it runs at once.

The poller takes a slot for each task it claims, and never claims more tasks
than there are free slots; a task thread gives its slot back when its function
returns. The poller waits here while every slot is taken.
"""

from __future__ import annotations

import threading


class Slots:
    """A fixed number of slots, taken by the poller and given back by task threads."""

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"a worker needs at least one slot, not {total}")
        self.total = total
        # Wakes the poller when a slot is given back, or when the slots close.
        self._changed = threading.Condition()
        self._in_use = 0
        self._peak_in_use = 0
        self._given_back = 0
        self._closed = False

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def peak_in_use(self) -> int:
        """The most slots that were ever in use at once."""
        return self._peak_in_use

    @property
    def given_back(self) -> int:
        """How many times a slot was given back: how many attempts have run."""
        return self._given_back

    def wait_for_free(self) -> int:
        """Block until at least one slot is free; return how many are (0 once closed)."""
        with self._changed:
            while self._in_use == self.total and not self._closed:
                self._changed.wait()
            return 0 if self._closed else self.total - self._in_use

    def take(self) -> None:
        with self._changed:
            self._in_use += 1
            self._peak_in_use = max(self._peak_in_use, self._in_use)

    def give_back(self) -> None:
        with self._changed:
            self._in_use -= 1
            self._given_back += 1
            self._changed.notify()

    def close(self) -> None:
        """Wake a poller waiting for a free slot, for good: the worker is stopping."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
