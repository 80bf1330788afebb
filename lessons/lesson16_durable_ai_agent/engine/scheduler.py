"""The scheduler: a thread that fires the schedules whose tick has come.

Every worker runs one, and none is in charge. There is no leader to elect, and
so none to lose: a tick is fired by whichever scheduler gets to it first, in
one transaction that

1. locks the schedule's row (`LockDueSchedules`, SKIP LOCKED: a schedule
   another worker is firing right now is passed over, not waited for);
2. enqueues the tick's task, with an idempotency key made of the schedule's
   name and the tick's time;
3. records the tick (`RecordTick`), whose primary key (schedule, tick) admits
   it once;
4. moves the schedule's next tick on (`AdvanceSchedule`).

A worker killed anywhere in there commits nothing, and the next scheduler
fires the same tick. Missed ticks (no worker was up) are fired, or skipped, as
the schedule's catch-up policy says (`schedules.py`), and recorded either way.

The thread sleeps until the next tick of any schedule, on the database's clock,
or `max_wait` at most (a schedule defined meanwhile is found then).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime

import psycopg
from psycopg_pool import ConnectionPool

from ..db.models import Schedule, TickOutcome
from ..db.queries import Querier
from .client import enqueue
from .crash_points import crash_point
from .schedules import MAX_TICKS_PER_FIRING, plan_firing
from .shared import first_line
from .transactions import TransactionLimits, bounded_transaction

log = logging.getLogger(__name__)

# The most schedules one transaction fires: a firing locks them until it commits.
SCHEDULES_PER_FIRING = 20


def tick_idempotency_key(schedule: str, tick_at: datetime) -> str:
    """The idempotency key of a tick's task: the same tick, the same task."""
    return f"schedule:{schedule}:{tick_at.isoformat()}"


class Scheduler:
    """Fires due schedules for one worker, on a thread of its own."""

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        worker_id: int,
        max_wait: float,
        limits: TransactionLimits,
    ) -> None:
        self.pool = pool
        self.worker_id = worker_id
        # The longest this thread sleeps without looking at the schedules.
        self.max_wait = max_wait
        # The bounds of each firing's transaction (the worker's).
        self.limits = limits
        # How many ticks this scheduler has fired (on time or late) and skipped.
        self.ticks_fired = 0
        self.ticks_skipped = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"scheduler-{worker_id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                while self.fire_due_schedules() and not self._stopping.is_set():
                    pass  # a full firing: more may be due at once
                wait = self._seconds_until_next_tick()
            except psycopg.Error as error:
                # The database may be restarting: look again after a while.
                log.warning("could not fire schedules: %s", first_line(error))
                wait = self.max_wait
            self._stopping.wait(wait)

    def _seconds_until_next_tick(self) -> float:
        with self.pool.connection() as conn:
            seconds = Querier(conn).seconds_until_next_tick(max_seconds=self.max_wait)
        return self.max_wait if seconds is None else seconds

    def fire_due_schedules(self) -> bool:
        """Fire what is due of the schedules no other worker is firing; True if
        there may be more due right away (a batch was full)."""
        with self.pool.connection() as conn, bounded_transaction(conn, self.limits):
            queries = Querier(conn)
            due = queries.lock_due_schedules(max_schedules=SCHEDULES_PER_FIRING)
            more = len(due) == SCHEDULES_PER_FIRING
            for row in due:
                more |= self._fire(conn, row.schedule, row.checked_at)
            if due:
                crash_point("schedule_tick:before_commit")
        return more

    def _fire(self, conn: psycopg.Connection[object], schedule: Schedule, now: datetime) -> bool:
        """Fire or skip the due ticks of one locked schedule; True if some are left."""
        queries = Querier(conn)
        firing = plan_firing(schedule, now)
        for tick_at, outcome in firing.ticks:
            task_id = None
            if outcome != TickOutcome.SKIPPED:
                task_id = enqueue(
                    conn,
                    schedule.task_name,
                    {
                        "schedule": schedule.name,
                        "tick_at": tick_at.isoformat(),
                        "input": schedule.input,
                    },
                    queue=schedule.queue,
                    durable=schedule.durable,
                    idempotency_key=tick_idempotency_key(schedule.name, tick_at),
                )
            recorded = queries.record_tick(
                schedule=schedule.name,
                tick_at=tick_at,
                outcome=outcome,
                task_id=task_id,
                worker_id=self.worker_id,
            )
            if recorded is None:
                # Recorded already: the schedule's next tick was set back (it
                # was redefined). The tick's task is the one it had (its
                # idempotency key), so nothing ran twice.
                continue
            if outcome == TickOutcome.SKIPPED:
                self.ticks_skipped += 1
            else:
                self.ticks_fired += 1
            log.info("schedule %s: tick %s %s (task %s)", schedule.name, tick_at, outcome, task_id)
        queries.advance_schedule(name=schedule.name, next_tick_at=firing.next_tick_at)
        return len(firing.ticks) == MAX_TICKS_PER_FIRING
