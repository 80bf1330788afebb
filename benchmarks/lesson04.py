"""Lesson 04's queue, as the benchmarks drive it: its schema, bulk enqueueing, its workers.

The worker is the lesson's own, unchanged: each one runs in a process of its own
started by the lesson's `WorkerProcess` (`worker_process.py`), with the no-op task
of `benchmarks.noop` registered.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

import lessons.lesson04_queue_improvements as lesson04
from lessons.common.database import connect, reset_schema
from lessons.lesson04_queue_improvements.client import enqueue
from lessons.lesson04_queue_improvements.worker_process import WorkerProcess

from .noop import NOOP_FUNCTIONS, TASK_NAME
from .pacing import steady
from .processes import started_together, wait_for_go
from .vacuum import Vacuum, apply_vacuum

LESSON_DIRECTORY = Path(lesson04.__file__).resolve().parent
SCHEMA_SQL = LESSON_DIRECTORY / "sql" / "schema.sql"
QUERIES_SQL = LESSON_DIRECTORY / "sql" / "queries.sql"
QUEUE_TABLES = ("tasks",)
QUEUE = "bench"
# How often an idle worker asks for work. Only an idle worker waits this long: one
# that finds work asks again at once. The course default is 0.5 s.
POLL_INTERVAL = 0.5


def prepare_schema(schema: str, vacuum: Vacuum) -> None:
    """A fresh schema with lesson 04's tables, and the vacuum settings on its queue table."""
    reset_schema(schema, SCHEMA_SQL)
    with connect(schema=schema) as conn:
        apply_vacuum(conn, QUEUE_TABLES, vacuum)


def enqueue_many(conn: psycopg.Connection[Any], count: int, *, queue: str = QUEUE) -> None:
    """Put `count` no-op tasks on the queue in one statement (one transaction).

    Pre-enqueueing is not what is measured, so it skips the client's one round trip
    per task; the rows are the ones `enqueue()` would write, with the same defaults.
    """
    conn.execute(
        "INSERT INTO tasks (queue, task_name, display_name, input)"
        " SELECT %(queue)s, %(name)s, %(name)s, '{}'::jsonb FROM generate_series(1, %(count)s)",
        {"queue": queue, "name": TASK_NAME, "count": count},
    )


# Whether any task is left to finish. Each EXISTS reads one of the lesson's partial
# indexes, so the question costs about as much as one claim, however long the queue.
UNFINISHED_SQL = (
    "SELECT EXISTS (SELECT FROM tasks WHERE status = 'queued')"
    " OR EXISTS (SELECT FROM tasks WHERE status = 'running')"
)


@contextmanager
def worker_processes(schema: str, *, processes: int, slots: int) -> Iterator[list[WorkerProcess]]:
    """Start `processes` workers (all at once), and wait until each one polls; stop them after."""
    workers = [
        WorkerProcess(
            schema=schema,
            queue=QUEUE,
            functions=NOOP_FUNCTIONS,
            slots=slots,
            poll_interval=POLL_INTERVAL,
        )
        for _ in range(processes)
    ]
    with started_together(workers):
        yield workers


def produce(schema: str, rate: float, seconds: float) -> float:
    """The producer process's side (`benchmarks.producer`): the lesson's `enqueue()`."""
    with connect(schema=schema) as conn:
        wait_for_go()
        return steady(rate, seconds, lambda: enqueue(conn, TASK_NAME, {}, queue=QUEUE))
