"""Lesson 08's queue, as the comparison drives it: its schema, its workers, woken by NOTIFY.

The worker is the lesson's own, unchanged: each one runs in a process of its own
started by the lesson's `WorkerProcess`, listening for notifications, with the
lesson's default fallback poll (the one `benchmarks/notify_latency.py` uses too)
and the no-op task of `benchmarks.noop`. Lesson 04's bulk enqueue writes the same
rows here: lesson 08's statement-level trigger sends one notification per queue
for the whole INSERT.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lessons.lesson08_listen_notify as lesson08
from lessons.common.database import connect, reset_schema
from lessons.lesson08_listen_notify.client import enqueue
from lessons.lesson08_listen_notify.worker_process import WorkerProcess

from .lesson04 import QUEUE
from .noop import NOOP_FUNCTIONS, TASK_NAME
from .pacing import steady
from .processes import started_together, wait_for_go
from .vacuum import Vacuum, apply_vacuum

LESSON_DIRECTORY = Path(lesson08.__file__).resolve().parent
SCHEMA_SQL = LESSON_DIRECTORY / "sql" / "schema.sql"
QUEUE_TABLES = ("tasks",)
# The lesson's default: notifications wake the workers, polling is only the fallback.
POLL_INTERVAL = 5.0


def prepare_schema(schema: str, vacuum: Vacuum, *, tables: tuple[str, ...] = QUEUE_TABLES) -> None:
    """A fresh schema with lesson 08's tables, and the vacuum settings on its queue tables."""
    reset_schema(schema, SCHEMA_SQL)
    with connect(schema=schema) as conn:
        apply_vacuum(conn, tables, vacuum)


@contextmanager
def worker_processes(schema: str, *, processes: int, slots: int) -> Iterator[list[WorkerProcess]]:
    """Start `processes` workers at once, each listening; wait until each one polls."""
    workers = [
        WorkerProcess(
            schema=schema,
            queues=[QUEUE],
            functions=NOOP_FUNCTIONS,
            slots=slots,
            poll_interval=POLL_INTERVAL,
            listen=True,
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
