"""A worker's slots: how many tasks it runs at once.

The poller takes a slot for each task it claims, and never claims more tasks
than there are free slots; a task thread gives its slot back when its function
returns. The poller waits here while every slot is taken, and, when its claim
policy asks, a little longer, until enough of them are free (see
`ClaimPolicy` in `poller.py`).
"""

from __future__ import annotations

import threading
import time


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
        # How many free slots the poller is waiting for: give_back() wakes it
        # only once there are that many, not once per slot.
        self._wanted_free = 1

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

    def wait_for_free(self, at_least: int = 1, linger: float = 0.0) -> int:
        """Block until a slot is free, then until `at_least` are, for `linger`
        seconds at most; return how many are free (0 once closed)."""
        with self._changed:
            self._wanted_free = 1
            while self._free() == 0 and not self._closed:
                self._changed.wait()
            self._wanted_free = min(at_least, self.total)
            deadline = time.monotonic() + linger
            while self._free() < self._wanted_free and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            self._wanted_free = 1
            return 0 if self._closed else self._free()

    def take(self) -> None:
        with self._changed:
            self._in_use += 1
            self._peak_in_use = max(self._peak_in_use, self._in_use)

    def give_back(self) -> None:
        with self._changed:
            self._in_use -= 1
            self._given_back += 1
            if self._free() >= self._wanted_free:
                self._changed.notify()

    def _free(self) -> int:
        return self.total - self._in_use

    def close(self) -> None:
        """Wake a poller waiting for a free slot, for good: the worker is stopping."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
