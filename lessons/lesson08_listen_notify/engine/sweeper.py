"""The sweeper: a thread that, every interval, takes back work that went wrong elsewhere.

Each sweep is one statement, and every worker runs them; SKIP LOCKED lets two
sweepers share the rows instead of waiting for each other:

- a queued task whose schedule timeout passed before it started fails;
- a running attempt past its execution timeout fails (and is retried, if the
  task has retries left);
- the running tasks of a worker silent for longer than the inactivity
  threshold go back to the queue (or fail, if they have no retries left).
"""

from __future__ import annotations

import logging

from psycopg_pool import ConnectionPool

from ..db.models import Task
from ..db.queries import Querier
from .periodic import Periodic

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
            self._log_sweep("schedule timeout", queries.time_out_queued_tasks())
            self._log_sweep("execution timeout", queries.time_out_running_tasks())
            self._log_sweep(
                "worker lost",
                queries.reassign_tasks_of_lost_workers(
                    inactivity_threshold_seconds=self.inactivity_threshold
                ),
            )

    def _log_sweep(self, reason: str, tasks: list[Task]) -> None:
        for task in tasks:
            log.info(
                "%s: task %d (%s) attempt %d is now %s",
                reason,
                task.id,
                task.display_name,
                task.attempt,
                task.status,
            )
