"""A queue system as the harness sees it: what the burn-down, latency and memory cases ask.

Every queue system (lessons 04 and 08 in `benchmarks/systems/`, and the peers in
`benchmarks/systems/peers/`) answers the same few questions, so that one harness
measures them all the same way: set up a fresh schema; start consumers on a queue
that is already full; start consumers and leave them waiting for work; and, in SQL,
"is anything left?", "when did the first task start?" and "how long did each task
wait?". Durable work (orders against DBOS workflows) asks other questions, in
`durable_system.py`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from .vacuum import Vacuum


@dataclass(frozen=True)
class Layout:
    """How many consumer processes, and how many tasks each one claims at once.

    For lesson 04 `batch` is the worker's slots (it claims at most its free slots);
    for PgQueuer it is the dequeue batch size; for Procrastinate, its concurrency.
    """

    processes: int
    batch: int

    def describe(self) -> str:
        plural = "es" if self.processes > 1 else ""
        return f"{self.processes} process{plural} x batch {self.batch}"


class QueueSystem(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def schema(self) -> str: ...

    @property
    def queue_tables(self) -> tuple[str, ...]:
        """The tables the aggressive vacuum settings go on."""
        ...

    @property
    def unfinished_sql(self) -> str:
        """SQL: true while any task is queued or running."""
        ...

    @property
    def first_start_sql(self) -> str:
        """SQL: the start time of the first task (the database's clock)."""
        ...

    @property
    def latency_sql(self) -> str:
        """SQL: one row per started task, its enqueue-to-start latency in seconds."""
        ...

    @property
    def producer(self) -> str:
        """The module whose `produce()` the producer process runs (`harness/producer.py`)."""
        ...

    def settings(self, layout: Layout) -> str:
        """The consumer settings, as the report states them."""
        ...

    def prepare(self, vacuum: Vacuum) -> None:
        """A fresh schema for this system, with the vacuum settings on its queue tables."""
        ...

    def draining(self, tasks: int, layout: Layout) -> AbstractContextManager[list[int]]:
        """Enqueue `tasks` no-op tasks, then let consumers loose on them all at once.

        Yields the consumers' process ids; stops the consumers on exit.
        """
        ...

    def serving(self, layout: Layout) -> AbstractContextManager[list[int]]:
        """Consumers waiting for work, for a producer to feed. Yields their process ids."""
        ...
