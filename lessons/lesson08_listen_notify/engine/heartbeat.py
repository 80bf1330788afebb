"""The heartbeat: a thread that renews this worker's lease, every interval.

A worker holds a lease in the `workers` table: it is presumed alive until the
lease expires, and each beat extends it by the worker's own inactivity
threshold. A worker whose lease expired is taken for dead, and the sweeper of
any worker gives its tasks to others (see `sweeper.py`). Missing a beat or two
is fine; missing them all for a whole threshold gets this worker's tasks
reassigned.

The heartbeat has a connection of its own, not one of the pool's: after an
outage, the pool reconnects in the background and backs off, and a beat that
waited for it could come too late. The heartbeat connects again at its next
beat.

It also keeps `healthy_since`, the time (on the database's clock) its current
unbroken run of beats began, for the sweeper: only a worker in touch with the
database may judge that others are not.

Each beat also finds the attempts this worker runs but no longer owns (they
timed out, or were reassigned while it looked dead) and raises their
cancellation flags, so that their functions can give up.

And each beat gives back to the queue the attempts this worker owns but never
received: a claim that committed and whose answer was lost (`claims.py`).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from ..db.queries import ListOwnedAttemptsRow, Querier
from .attempts import RunningAttempts
from .claims import Claim, ClaimedAttempts, Suspects, lost_claims
from .periodic import Periodic
from .shared import connect_like

log = logging.getLogger(__name__)


class Heartbeat:
    """Beats for one worker every `interval` seconds, on a thread and a connection of its own."""

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        worker_id: int,
        interval: float,
        running: RunningAttempts,
        claimed: ClaimedAttempts,
        registered_at: datetime,
    ) -> None:
        self.pool = pool
        self.worker_id = worker_id
        self.running = running
        self.claimed = claimed
        # What the last beat found owned and never received (see claims.py).
        self._suspects: Suspects | None = None
        self._connection: psycopg.Connection[Any] | None = None
        # Registering was the first contact. Written by the heartbeat's thread
        # only, read by the sweeper's: one assignment of an immutable value.
        self._healthy_since: datetime | None = registered_at
        self._periodic = Periodic(f"heartbeat-{worker_id}", interval, self.beat)

    @property
    def healthy_since(self) -> datetime | None:
        """When this worker's unbroken run of beats began (None: the last one failed)."""
        return self._healthy_since

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()
        if self._connection is not None:
            self._connection.close()

    def beat(self) -> None:
        """Renew this worker's lease, and cancel the attempts it no longer owns."""
        # Which attempts run here *before* asking the database which ones this
        # worker owns: an attempt claimed after this line may not be visible to
        # the query below, and must not be mistaken for a lost one.
        running = self.running.snapshot()
        # Likewise the last claim received before asking: an attempt received
        # after it may have been claimed after the answer was read, so only
        # those received before may be taken for ended when it does not show them.
        asked_after = self.claimed.last_receipt()
        try:
            queries = Querier(self._connected())
            beat_at = queries.record_heartbeat(id=self.worker_id)
            owned_rows = queries.list_owned_attempts(worker_id=self.worker_id)
            self._give_back_lost_claims(queries, owned_rows, asked_after)
        except psycopg.Error:
            self._healthy_since = None
            self._disconnect()
            raise
        if beat_at is None:  # the worker's row is never deleted while it runs
            raise RuntimeError(f"worker {self.worker_id} has no row to renew")
        if self._healthy_since is None:
            self._healthy_since = beat_at
        owned = {(row.id, row.attempt) for row in owned_rows}
        for attempt in running:
            if (attempt.id, attempt.attempt) not in owned and not attempt.cancelled.is_set():
                log.info(
                    "task %d attempt %d is no longer this worker's: cancelling it",
                    attempt.id,
                    attempt.attempt,
                )
                attempt.cancelled.set()
                attempt.wakeup.set()  # it may be waiting for a child

    def _give_back_lost_claims(
        self, queries: Querier, owned_rows: list[ListOwnedAttemptsRow], asked_after: int
    ) -> None:
        """Give back the claims two beats in a row found owned and never received."""
        owned = {Claim.of(row.id, row.attempt, row.started_at) for row in owned_rows}
        suspects = self.claimed.never_received(owned, asked_after=asked_after)
        lost = sorted(lost_claims(self._suspects, suspects))
        self._suspects = suspects
        if not lost:
            return
        released = queries.release_lost_claims(
            worker_id=self.worker_id,
            ids=[claim.task_id for claim in lost],
            attempts=[claim.attempt for claim in lost],
            started_ats=[claim.started_at for claim in lost],
        )
        for row in released:
            log.warning(
                "task %d attempt %d: this worker's claim of it committed and its answer"
                " never arrived: giving it back to the queue",
                row.id,
                row.attempt,
            )

    def _connected(self) -> psycopg.Connection[Any]:
        if self._connection is None or self._connection.closed:
            self._connection = connect_like(
                self.pool, application_name=f"worker {self.worker_id} heartbeat"
            )
        return self._connection

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
