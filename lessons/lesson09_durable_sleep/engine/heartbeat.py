"""The heartbeat: a thread that tells the database, every interval, that this worker lives.

A worker silent for longer than the inactivity threshold is taken for dead, and
the sweeper of any worker gives its tasks to others (see `sweeper.py`). Missing
a beat or two is fine; missing them all for the whole threshold gets this
worker's tasks reassigned.

Each beat also finds the attempts this worker runs but no longer owns (they
timed out, or were reassigned while it looked dead) and raises their
cancellation flags, so that their functions can give up.
"""

from __future__ import annotations

import logging

from psycopg_pool import ConnectionPool

from ..db.queries import Querier
from .attempts import RunningAttempts
from .periodic import Periodic

log = logging.getLogger(__name__)


class Heartbeat:
    """Beats for one worker every `interval` seconds, on a thread of its own."""

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        worker_id: int,
        interval: float,
        running: RunningAttempts,
    ) -> None:
        self.pool = pool
        self.worker_id = worker_id
        self.running = running
        self._periodic = Periodic(f"heartbeat-{worker_id}", interval, self.beat)

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()

    def beat(self) -> None:
        """Say this worker is alive, and cancel the attempts it no longer owns."""
        # Which attempts run here *before* asking the database which ones this
        # worker owns: an attempt claimed after this line may not be visible to
        # the query below, and must not be mistaken for a lost one.
        running = self.running.snapshot()
        with self.pool.connection() as conn:
            queries = Querier(conn)
            queries.record_heartbeat(id=self.worker_id)
            owned = {
                (row.id, row.attempt)
                for row in queries.list_owned_attempts(worker_id=self.worker_id)
            }
        for attempt in running:
            if (attempt.id, attempt.attempt) not in owned and not attempt.cancelled.is_set():
                log.info(
                    "task %d attempt %d is no longer this worker's: cancelling it",
                    attempt.id,
                    attempt.attempt,
                )
                attempt.cancelled.set()
