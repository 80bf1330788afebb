"""When a frozen worker's task was taken from it, measured from what the rule is about.

A sweeper takes a task from a worker only once that worker's lease has expired
and the sweeper's own worker has been in touch with the database for a whole
lease of it (lessons 07-11, `ReassignTasksOfLostWorkers`). Both moments are on
the database's clock, in the `workers` table; so is the takeover, which a
trigger of the test's schema records as it happens. A test compares the three,
and never counts the seconds the machine took to start the healthy worker, or
to schedule the test's own polling: on a busy machine those can be many.

    record_takeovers(pool, schema)           # before the workers start
    ...
    assert_taken_back_in_time(pool, schema, task_id, frozen, healthy, threshold=2.0)

A worker process that froze itself (SIGSTOP) shows it in /proc: `is_frozen(pid)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from psycopg import sql
from psycopg_pool import ConnectionPool

from tests.waiting import wait_until

TAKEOVERS = """
CREATE TABLE {schema}.takeovers (
    task_id bigint NOT NULL,
    -- The worker the task was running on when it was taken from it.
    from_worker bigint NOT NULL,
    taken_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION {schema}.record_takeover() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {schema}.takeovers (task_id, from_worker) VALUES (OLD.id, OLD.worker_id);
    RETURN NEW;
END
$$;
-- A running attempt that stops running, or runs on another worker: taken from
-- its worker (or ended by it, which a frozen worker cannot do).
CREATE TRIGGER record_takeover AFTER UPDATE ON {schema}.tasks FOR EACH ROW
WHEN (OLD.status = 'running' AND (NEW.status <> 'running' OR NEW.worker_id <> OLD.worker_id))
EXECUTE FUNCTION {schema}.record_takeover();
"""

FIRST_TAKEOVER = """
SELECT takeovers.taken_at,
       lost.lease_expires_at,
       (SELECT min(sweeping.started_at) FROM {schema}.workers AS sweeping
        WHERE sweeping.id = ANY(%(healthy)s))
           + lost.lease_seconds * interval '1 second'
FROM {schema}.takeovers AS takeovers
JOIN {schema}.workers AS lost ON lost.id = takeovers.from_worker
WHERE takeovers.task_id = %(task_id)s AND takeovers.from_worker = ANY(%(frozen)s)
ORDER BY takeovers.taken_at
LIMIT 1
"""


@dataclass(frozen=True)
class Takeover:
    """A task taken from a frozen worker, and the earliest moment the rule allowed it."""

    taken_at: datetime
    # When the frozen worker's lease expired (it beat no more once frozen).
    lease_expired_at: datetime
    # When the first healthy worker had been in touch for a whole lease of the
    # frozen one: registering is its first contact (`healthy_since`).
    sweeper_entitled_at: datetime

    @property
    def earliest(self) -> datetime:
        return max(self.lease_expired_at, self.sweeper_entitled_at)

    def seconds_after_earliest(self) -> float:
        return (self.taken_at - self.earliest) / timedelta(seconds=1)


def record_takeovers(pool: ConnectionPool, schema: str) -> None:
    """Install the trigger that records, on the database's clock, every task taken
    from the worker it was running on (table `takeovers` of `schema`)."""
    with pool.connection() as conn:
        conn.execute(sql.SQL(TAKEOVERS).format(schema=sql.Identifier(schema)))


def wait_for_takeover(
    pool: ConnectionPool,
    schema: str,
    task_id: int,
    frozen: list[int],
    healthy: list[int],
    timeout: float = 30.0,
) -> Takeover:
    """The first takeover of `task_id` from one of the `frozen` workers, once it happened.

    `timeout` only guards against a hang (a task never taken back): it is not
    the bound the test asserts."""
    query = sql.SQL(FIRST_TAKEOVER).format(schema=sql.Identifier(schema))

    def taken() -> Takeover | None:
        with pool.connection() as conn:
            row = conn.execute(
                query, {"task_id": task_id, "frozen": frozen, "healthy": healthy}
            ).fetchone()
        return Takeover(*row) if row else None

    return wait_until(
        taken, timeout=timeout, message=f"task {task_id} was never taken from the frozen worker"
    )


class WorkerProcessLike(Protocol):
    """What these helpers need of a lesson's `WorkerProcess`."""

    @property
    def ids(self) -> list[int]: ...

    def log(self) -> str: ...


def assert_taken_back_in_time(
    pool: ConnectionPool,
    schema: str,
    task_id: int,
    frozen: WorkerProcessLike,
    healthy: WorkerProcessLike,
    *,
    threshold: float,
) -> Takeover:
    """Wait until `task_id` is taken from the `frozen` worker process, and check when.

    Never sooner than the rule allows, and within one `threshold` of that: many
    of the sweeper's rounds (one a heartbeat interval), and far sooner than
    never, which is when a task whose row a frozen transaction keeps locked
    would be taken back (the sweeps skip locked rows)."""
    takeover = wait_for_takeover(pool, schema, task_id, frozen.ids, healthy.ids)
    assert takeover.earliest <= takeover.taken_at, takeover
    assert takeover.seconds_after_earliest() < threshold, (takeover, healthy.log())
    return takeover


def is_frozen(pid: int) -> bool:
    """Whether process `pid` is stopped (state T in /proc): it froze itself."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The state follows the command name, which is in parentheses.
    return stat.rsplit(")", 1)[1].split()[0] == "T"
