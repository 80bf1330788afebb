"""The sweeper: a thread that, every interval, takes back work that went wrong elsewhere.

Each sweep is one statement, and every worker runs them; SKIP LOCKED lets two
sweepers share the rows instead of waiting for each other:

- a queued task whose schedule timeout passed before it started fails;
- a running attempt past its execution timeout fails (and is retried, if the
  task has retries left);
- the running tasks of a worker silent for longer than the inactivity
  threshold go back to the queue (or fail, if they have no retries left).

A child task a sweep fails wakes its parent, in the same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from ..db.models import Task
from ..db.queries import Querier
from .periodic import Periodic
from .wake_ups import wake_parents

log = logging.getLogger(__name__)


class Sweeper:
    """Sweeps every `interval` seconds, on a thread of its own."""

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        worker_id: int,
        interval: float,
        inactivity_threshold: float,
    ) -> None:
        self.pool = pool
        # How long a worker may stay silent before its tasks are taken back.
        self.inactivity_threshold = inactivity_threshold
        self._periodic = Periodic(f"sweeper-{worker_id}", interval, self.sweep)

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()

    def sweep(self) -> None:
        with self.pool.connection() as conn:
            queries = Querier(conn)
            self._sweep(conn, "schedule timeout", queries.time_out_queued_tasks)
            self._sweep(conn, "execution timeout", queries.time_out_running_tasks)
            self._sweep(
                conn,
                "worker lost",
                lambda: queries.reassign_tasks_of_lost_workers(
                    inactivity_threshold_seconds=self.inactivity_threshold
                ),
            )

    def _sweep(
        self, conn: psycopg.Connection[Any], reason: str, sweep: Callable[[], list[Task]]
    ) -> None:
        """Run one sweep; a child it fails wakes its parent, in the same transaction."""
        with conn.transaction():
            tasks = sweep()
            wake_parents(Querier(conn), tasks)
        for task in tasks:
            log.info(
                "%s: task %d (%s) attempt %d is now %s",
                reason,
                task.id,
                task.display_name,
                task.attempt,
                task.status,
            )
