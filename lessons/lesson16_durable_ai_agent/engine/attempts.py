"""The attempts a worker is running now: what a task function sees of its own, and
what the heartbeat needs to cancel the ones this worker no longer owns.

A task thread makes its attempt known for as long as the function runs
(`RunningAttempts.running`); the function finds it with `current_task()`; the
heartbeat reads them all (`RunningAttempts.snapshot`) and raises the
cancellation flag of each attempt the database says is no longer this worker's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from psycopg_pool import ConnectionPool

from ..db.models import Task


# eq=False: each run is its own, even two runs of the same task at once (one
# given back to the queue while this worker looked dead, then claimed again; or
# one that suspended, and was claimed again before it had unwound).
@dataclass(frozen=True, eq=False)
class RunningTask:
    """The attempt a task function is running in, as `current_task()` returns it."""

    id: int
    name: str
    attempt: int
    max_retries: int
    # The worker's pool, for task functions that keep their effects in this
    # database (the example's charges and emails).
    pool: ConnectionPool
    # Set when this worker no longer owns the attempt (it timed out, or it was
    # given to another worker while this one looked dead), or when someone
    # cancelled its task (lesson 13: a durable function then meets `Cancelled`
    # at its next operation, see durable.py). Python cannot stop a
    # thread from outside, so a long function should look at this flag now and
    # then (`current_task().cancelled.wait(seconds)` is a sleep that ends early)
    # and give up. Whatever it returns after that is rejected anyway.
    cancelled: threading.Event = field(default_factory=threading.Event)


_current_task: ContextVar[RunningTask] = ContextVar("current_task")


def current_task() -> RunningTask:
    """The attempt the calling task function runs in. Only valid inside a task function."""
    try:
        return _current_task.get()
    except LookupError:
        raise RuntimeError("current_task() is only available inside a task function") from None


class RunningAttempts:
    """The attempts whose functions are running in this worker."""

    def __init__(self) -> None:
        # Task threads add and remove attempts while the heartbeat reads them.
        self._lock = threading.Lock()
        self._running: set[RunningTask] = set()

    @contextmanager
    def running(self, task: Task, pool: ConnectionPool) -> Iterator[RunningTask]:
        """Make the attempt visible to `current_task()` and to the heartbeat while it runs."""
        running = RunningTask(
            id=task.id,
            name=task.task_name,
            attempt=task.attempt,
            max_retries=task.max_retries,
            pool=pool,
        )
        with self._lock:
            self._running.add(running)
        token = _current_task.set(running)
        try:
            yield running
        finally:
            _current_task.reset(token)
            with self._lock:
                self._running.remove(running)

    def snapshot(self) -> list[RunningTask]:
        """The attempts running at this moment."""
        with self._lock:
            return list(self._running)

    def cancel(self, task_id: int) -> bool:
        """Raise the cancellation flag of the attempts of `task_id` running here;
        False if none is."""
        running = [attempt for attempt in self.snapshot() if attempt.id == task_id]
        for attempt in running:
            attempt.cancelled.set()
        return bool(running)
