"""Transaction limits: no engine transaction outlives a frozen or cut-off worker for long.

A transaction of several statements keeps its row locks from its first write
until it commits. If its worker freezes (SIGSTOP, a stalled VM) or loses the
network in between, the server keeps the session open, and the locks with it,
for as long as the connection looks alive: for ever, to a frozen process whose
kernel still answers TCP. The sweeps skip locked rows (SKIP LOCKED), so the
frozen worker's task would never be reassigned; and any statement that needs
that row waits behind it.

So every multi-statement engine transaction runs `bounded_transaction`, which
sets two limits for that transaction only:

- idle for longer than `idle_seconds` between two statements, the server ends
  the session, rolls the transaction back and releases its locks. Half the
  worker's inactivity threshold: the locks are gone before its lease expires,
  and a sweeper can take the task back as soon as it does.
- waiting for a lock for longer than `lock_seconds`, a statement fails with
  lock_not_available (transient, see `shared.is_transient`): a shared peer that
  must not stall tries again later. A task thread may wait instead
  (`wait_for_locks=True`): it waits at most until the holder's transaction is
  ended by its own idle limit.

Client-side and operator transactions are not bounded here: they are not the
engine's, and they wait at most until a frozen transaction is ended by its own
limit.

BEGIN and the limits travel in one round trip, in one message: a simple
query, which may hold several statements (psycopg sends a query that has no
parameters as one), `BEGIN; SELECT set_config(...), set_config(...)`. The
limits are numbers the engine computes, written into the text as literals.
The server runs both, and answers once, ready for the transaction's first
statement: the idle limit is armed from then on, so a worker frozen after
any of its statements is ended at that limit. Of a spawn's five statements
(BEGIN and the limits, CreateTask, AppendEvent, COMMIT) four round trips are
left, as many as with a plain BEGIN.

Why not `conn.transaction()`, then the limits as a statement of their own?
That is a second round trip before the first real statement. Sent together
in psycopg's pipeline mode instead (the first version of this module), they
took one round trip but cost the client more CPU than the round trip saved:
measured on the 2-core machine of the benchmarks, a bounded transaction of one
INSERT took 305-330 us of the client's CPU with the pipeline, 225-230 as two
round trips, and 165-195 as one simple query, about what the same
transaction costs with no limits at all (180-195). The worker is bound by
CPU, so the simple query it is.
And why not the limits riding on the first real statement? That statement is
the caller's, with parameters, so it cannot share a simple query.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql


@dataclass(frozen=True)
class TransactionLimits:
    """How long an engine transaction may sit idle, and wait for a lock, in seconds."""

    idle_seconds: float
    lock_seconds: float

    @classmethod
    def for_worker(cls, inactivity_threshold: float) -> TransactionLimits:
        """The limits of a worker whose lease is `inactivity_threshold` seconds long.

        Idle at half the threshold, so that a frozen worker's locks are released
        before its lease expires; locks waited for at most a quarter, so that a
        peer that gives up still tries again well within a lease.
        """
        return cls(idle_seconds=inactivity_threshold / 2, lock_seconds=inactivity_threshold / 4)


# set_config(..., true): the setting lasts until the transaction ends.
BEGIN_WITH_LIMITS = sql.SQL(
    "BEGIN; SELECT set_config('idle_in_transaction_session_timeout', {idle}, true),"
    " set_config('lock_timeout', {lock}, true)"
)


@contextmanager
def bounded_transaction(
    conn: psycopg.Connection[Any], limits: TransactionLimits, *, wait_for_locks: bool = False
) -> Iterator[None]:
    """A transaction on `conn` (an autocommit connection), bounded by `limits` from
    its first statement on.

    BEGIN and the limits cost one round trip (a simple query, see above). The
    block commits when it ends, and rolls back when an exception leaves it;
    `psycopg.Rollback` raised in the block rolls back and goes no further.

    With `wait_for_locks`, its statements wait for locks as long as it takes
    (the idle limit of the transaction that holds them still bounds the wait).
    """
    lock_milliseconds = 0 if wait_for_locks else _milliseconds(limits.lock_seconds)
    begin = BEGIN_WITH_LIMITS.format(
        idle=sql.Literal(str(_milliseconds(limits.idle_seconds))),
        lock=sql.Literal(str(lock_milliseconds)),
    )
    try:
        # Never prepared: a prepared statement holds one statement, and this is
        # two. Inside the try: should the limits fail after BEGIN ran, the
        # transaction it opened is rolled back like any other.
        conn.execute(begin, prepare=False)
        yield
    except psycopg.Rollback:
        conn.rollback()
    except BaseException:
        _roll_back_after_failure(conn)
        raise
    else:
        conn.commit()


def _roll_back_after_failure(conn: psycopg.Connection[Any]) -> None:
    # The failure that left the block is the one to raise: a connection that
    # broke cannot roll back, and its transaction is gone with its session.
    if conn.broken:
        return
    with suppress(psycopg.OperationalError):
        conn.rollback()


def _milliseconds(seconds: float) -> int:
    # At least 1: for both settings, 0 would mean no limit at all.
    return max(1, round(seconds * 1000))
