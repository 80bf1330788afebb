"""A queue system as the benchmarks see it, and lesson 04's worker as the first of them.

Every system (the course's lessons, and the peers in `benchmarks/peers/`) answers the
same few questions, so that one harness measures them all the same way: set up a
fresh schema; start consumers on a queue that is already full; start consumers and
leave them waiting for work; and, in SQL, "is anything left?", "when did the first
task start?" and "how long did each task wait?".

Lesson 08's worker (LISTEN/NOTIFY) is the second of them; the durable cases (orders
against DBOS workflows) are another kind of case, in `durable.py`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol

from lessons.common.database import connect

from . import lesson04, lesson08
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
        """The module whose `produce()` the producer process runs (`benchmarks.producer`)."""
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


class Lesson04:
    """Lesson 04's worker, unchanged: one `worker_process` per process, `batch` slots each."""

    name = "lesson 04"
    schema = "bench_queue"
    queue_tables = lesson04.QUEUE_TABLES
    unfinished_sql = lesson04.UNFINISHED_SQL
    first_start_sql = "SELECT min(started_at) FROM tasks"
    latency_sql = (
        "SELECT extract(epoch FROM started_at - inserted_at) FROM tasks"
        " WHERE started_at IS NOT NULL"
    )
    producer = lesson04.__name__

    def settings(self, layout: Layout) -> str:
        plural = "es" if layout.processes > 1 else ""
        return (
            f"{layout.processes} worker process{plural} x {layout.batch} slots, "
            f"poll {lesson04.POLL_INTERVAL:g} s"
        )

    def prepare(self, vacuum: Vacuum) -> None:
        lesson04.prepare_schema(self.schema, vacuum)

    @contextmanager
    def draining(self, tasks: int, layout: Layout) -> Iterator[list[int]]:
        with lesson04.worker_processes(
            self.schema, processes=layout.processes, slots=layout.batch
        ) as workers:
            # The lesson's worker has no "wait for go": freeze the idle workers, fill
            # the queue, and wake them all at once. Frozen for longer than the poll
            # interval, each one asks for work the moment it wakes.
            for worker in workers:
                worker.pause()
            started = time.monotonic()
            with connect(schema=self.schema) as conn:
                lesson04.enqueue_many(conn, tasks)
            time.sleep(max(0.0, lesson04.POLL_INTERVAL + 0.05 - (time.monotonic() - started)))
            for worker in workers:
                worker.resume()
            yield [worker.pid for worker in workers]

    @contextmanager
    def serving(self, layout: Layout) -> Iterator[list[int]]:
        with lesson04.worker_processes(
            self.schema, processes=layout.processes, slots=layout.batch
        ) as workers:
            yield [worker.pid for worker in workers]


class Lesson08:
    """Lesson 08's worker, unchanged: woken by NOTIFY, polling every 5 s as its fallback."""

    name = "lesson 08"
    schema = "bench_notify_queue"
    queue_tables = lesson08.QUEUE_TABLES
    unfinished_sql = lesson04.UNFINISHED_SQL
    first_start_sql = Lesson04.first_start_sql
    latency_sql = Lesson04.latency_sql
    producer = lesson08.__name__

    def settings(self, layout: Layout) -> str:
        plural = "es" if layout.processes > 1 else ""
        return (
            f"{layout.processes} worker process{plural} x {layout.batch} slots, "
            f"LISTEN/NOTIFY, fallback poll {lesson08.POLL_INTERVAL:g} s"
        )

    def prepare(self, vacuum: Vacuum) -> None:
        lesson08.prepare_schema(self.schema, vacuum)

    @contextmanager
    def draining(self, tasks: int, layout: Layout) -> Iterator[list[int]]:
        # No need to freeze the workers: the INSERT's one notification, sent at its
        # commit, wakes every idle worker at once on a queue that is already full.
        with self._workers(layout) as pids, connect(schema=self.schema) as conn:
            lesson04.enqueue_many(conn, tasks)
            yield pids

    @contextmanager
    def serving(self, layout: Layout) -> Iterator[list[int]]:
        with self._workers(layout) as pids:
            yield pids

    @contextmanager
    def _workers(self, layout: Layout) -> Iterator[list[int]]:
        with lesson08.worker_processes(
            self.schema, processes=layout.processes, slots=layout.batch
        ) as workers:
            yield [worker.pid for worker in workers]
