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
from contextlib import ExitStack, contextmanager
from pathlib import Path

import lessons.lesson08_listen_notify as lesson08
from lessons.common.database import REPOSITORY_ROOT, connect, reset_schema
from lessons.lesson08_listen_notify.tools.worker_process import WorkerProcess

from .notify_latency import FALLBACK_POLL_INTERVAL
from .processes import start_together
from .vacuum import Vacuum, apply_vacuum

LESSON_DIRECTORY = Path(lesson08.__file__).resolve().parent
SCHEMA_SQL = LESSON_DIRECTORY / "sql" / "schema.sql"
QUEUE_TABLES = ("tasks",)
POLL_INTERVAL = FALLBACK_POLL_INTERVAL
# Workers of the comparison load the no-op task from here, and find it from any directory.
ENVIRONMENT = {"PYTHONPATH": str(REPOSITORY_ROOT)}


def prepare_schema(schema: str, vacuum: Vacuum, *, tables: tuple[str, ...] = QUEUE_TABLES) -> None:
    """A fresh schema with lesson 08's tables, and the vacuum settings on its queue tables."""
    reset_schema(schema, SCHEMA_SQL)
    with connect(schema=schema) as conn:
        apply_vacuum(conn, tables, vacuum)


@contextmanager
def worker_processes(
    schema: str,
    *,
    queues: list[str],
    functions: str,
    processes: int,
    slots: int,
    poll_interval: float = POLL_INTERVAL,
) -> Iterator[list[WorkerProcess]]:
    """Start `processes` workers at once, each listening; wait until each one polls."""
    with ExitStack() as stack:
        workers = [
            stack.enter_context(
                WorkerProcess(
                    schema=schema,
                    queues=queues,
                    functions=functions,
                    slots=slots,
                    poll_interval=poll_interval,
                    listen=True,
                    environment=ENVIRONMENT,
                )
            )
            for _ in range(processes)
        ]
        start_together([worker.start for worker in workers])
        try:
            yield workers
        finally:
            for worker in workers:
                worker.stop()
