"""The sweeper: a thread that, every interval, takes back work that went wrong elsewhere.

Each sweep is one statement, and every worker runs them; SKIP LOCKED lets two
sweepers share the rows instead of waiting for each other:

- a queued task whose schedule timeout passed before it started fails;
- a running attempt past its execution timeout fails (and is retried, if the
  task has retries left);
- the running tasks of a worker whose lease expired go back to the queue (or
  fail, if they have no retries left), but only once this worker has been in
  touch with the database for a whole lease of that worker (see
  `ReassignTasksOfLostWorkers`): after an outage, every lease has expired, and
  the workers that are alive must first have had the time to renew theirs.
  That judgement rests on this worker's own health, read before the statement
  runs; if the heartbeat failed while the statement ran (it may have waited out
  the outage for a pooled connection, or stalled in a network partition), the
  judgement is void and its transaction rolls back.

Each statement ends `batch_size` tasks at most, and the sweeper runs it again
at once while it finds full batches: ending 200,000 overdue tasks takes many
short statements, each holding its locks for milliseconds, never one that makes
every claim wait for seconds. The sweeper has a thread of its own, so that
however long a sweep takes, it never delays a heartbeat.

A child task a sweep fails wakes its parent, in the same transaction as the
batch that failed it. That transaction is bounded (`transactions.py`): waking
a parent whose row a frozen worker holds fails after the lock timeout instead
of waiting for ever, and the batch is tried again at the next sweep.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from psycopg_pool import ConnectionPool

from ..db.models import Task
from ..db.queries import Querier
from .crash_points import crash_point
from .periodic import Periodic
from .transactions import TransactionLimits, bounded_transaction
from .wake_ups import wake_parents

log = logging.getLogger(__name__)

# A sweep: one bounded statement, given the queries to run it with.
Sweep = Callable[[Querier], list[Task]]


class LostTouchWhileSweeping(Exception):
    """This worker's heartbeat failed while it judged other workers dead."""


class Sweeper:
    """Sweeps every `interval` seconds, on a thread of its own."""

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        worker_id: int,
        interval: float,
        healthy_since: Callable[[], datetime | None],
        limits: TransactionLimits,
        batch_size: int = 1000,
    ) -> None:
        self.pool = pool
        # The bounds of each batch's transaction (the worker's).
        self.limits = limits
        # When this worker's unbroken run of heartbeats began (the heartbeat's).
        self.healthy_since = healthy_since
        # The most tasks one sweep statement ends.
        self.batch_size = batch_size
        self._periodic = Periodic(f"sweeper-{worker_id}", interval, self.sweep)

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()

    def sweep(self) -> None:
        self._sweep_in_batches(
            "schedule timeout",
            lambda queries: queries.time_out_queued_tasks(max_tasks=self.batch_size),
        )
        self._sweep_in_batches(
            "execution timeout",
            lambda queries: queries.time_out_running_tasks(max_tasks=self.batch_size),
        )
        healthy_since = self.healthy_since()
        if healthy_since is None:
            return  # out of touch: in no position to judge whether others are
        try:
            self._sweep_in_batches(
                "worker lost",
                lambda queries: self._reassign_tasks_of_lost_workers(queries, healthy_since),
            )
        except LostTouchWhileSweeping:
            log.info("the heartbeat failed during the lost-worker sweep: its batch rolled back")

    def _reassign_tasks_of_lost_workers(
        self, queries: Querier, healthy_since: datetime
    ) -> list[Task]:
        """One batch of the lost-worker sweep, void unless this worker stayed in touch.

        The statement trusts `healthy_since`, read before it ran. If the
        heartbeat has failed or started a new run since, that value is stale:
        the statement may have been waiting through the very outage that
        expired the other leases, and those workers may not have had a lease's
        time to renew. Raising rolls the batch back.
        """
        lost = queries.reassign_tasks_of_lost_workers(
            healthy_since=healthy_since, max_tasks=self.batch_size
        )
        if self.healthy_since() != healthy_since:
            raise LostTouchWhileSweeping
        return lost

    def _sweep_in_batches(self, reason: str, sweep: Sweep) -> None:
        """Run `sweep` until it ends fewer tasks than a full batch (or the worker stops).

        A child a batch fails wakes its parent, in the batch's transaction. A
        shared peer must not wait behind a frozen worker's locks: the lock
        timeout applies.
        """
        while not self._periodic.stopping:
            with self.pool.connection() as conn, bounded_transaction(conn, self.limits):
                queries = Querier(conn)
                tasks = sweep(queries)
                wake_parents(queries, tasks)
                crash_point("sweep:before_commit")
            for task in tasks:
                log.info(
                    "%s: task %d (%s) attempt %d is now %s",
                    reason,
                    task.id,
                    task.display_name,
                    task.attempt,
                    task.status,
                )
            if len(tasks) < self.batch_size:
                return
