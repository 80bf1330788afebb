"""Lesson 08's queue, as the benchmarks drive it: its schema, its workers, woken by NOTIFY.

The worker is the lesson's own, unchanged: each one runs in a process of its own
started by the lesson's `WorkerProcess`, listening for notifications, with the
lesson's default fallback poll (the one `benchmarks/notify_latency.py` uses too)
and the no-op task of `noop.py`. Lesson 04's bulk enqueue writes the same rows here:
lesson 08's statement-level trigger sends one notification per queue for the whole
INSERT. `Lesson08` is the lesson as a `QueueSystem`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from lessons.common.database import REPOSITORY_ROOT, connect, reset_schema
from lessons.lesson08_listen_notify.engine.client import enqueue
from lessons.lesson08_listen_notify.tools.worker_process import WorkerProcess

from ..harness.pacing import steady
from ..harness.processes import started_together, wait_for_go
from ..harness.queue_system import Layout
from ..harness.vacuum import Vacuum, apply_vacuum
from .lesson04 import FIRST_START_SQL, LATENCY_SQL, QUEUE, UNFINISHED_SQL, enqueue_many
from .noop import NOOP_FUNCTIONS, TASK_NAME

SCHEMA_SQL = REPOSITORY_ROOT / "lessons" / "lesson08_listen_notify" / "sql" / "schema.sql"
QUEUE_TABLES = ("tasks",)
# The lesson's default: notifications wake the workers, polling is only the fallback.
POLL_INTERVAL = 5.0


class Lesson08:
    """Lesson 08's worker, unchanged: woken by NOTIFY, polling every 5 s as its fallback."""

    name = "lesson 08"
    schema = "bench_notify_queue"
    queue_tables = QUEUE_TABLES
    # The same tasks table as lesson 04's, with the same indexes and timestamps.
    unfinished_sql = UNFINISHED_SQL
    first_start_sql = FIRST_START_SQL
    latency_sql = LATENCY_SQL
    producer = __name__

    def settings(self, layout: Layout) -> str:
        plural = "es" if layout.processes > 1 else ""
        return (
            f"{layout.processes} worker process{plural} x {layout.batch} slots, "
            f"LISTEN/NOTIFY, fallback poll {POLL_INTERVAL:g} s"
        )

    def prepare(self, vacuum: Vacuum) -> None:
        reset_schema(self.schema, SCHEMA_SQL)
        with connect(schema=self.schema) as conn:
            apply_vacuum(conn, self.queue_tables, vacuum)

    @contextmanager
    def draining(self, tasks: int, layout: Layout) -> Iterator[list[int]]:
        # No need to freeze the workers: the INSERT's one notification, sent at its
        # commit, wakes every idle worker at once on a queue that is already full.
        with self._workers(layout) as pids, connect(schema=self.schema) as conn:
            enqueue_many(conn, tasks)
            yield pids

    @contextmanager
    def serving(self, layout: Layout) -> Iterator[list[int]]:
        with self._workers(layout) as pids:
            yield pids

    @contextmanager
    def _workers(self, layout: Layout) -> Iterator[list[int]]:
        """`layout.processes` workers started at once, each listening; yields their pids."""
        workers = [
            WorkerProcess(
                schema=self.schema,
                queues=[QUEUE],
                functions=NOOP_FUNCTIONS,
                slots=layout.batch,
                poll_interval=POLL_INTERVAL,
                listen=True,
            )
            for _ in range(layout.processes)
        ]
        with started_together(workers):
            yield [worker.pid for worker in workers]


def produce(schema: str, rate: float, seconds: float) -> float:
    """The producer process's side (`harness/producer.py`): the lesson's `enqueue()`."""
    with connect(schema=schema) as conn:
        wait_for_go()
        return steady(rate, seconds, lambda: enqueue(conn, TASK_NAME, {}, queue=QUEUE))
