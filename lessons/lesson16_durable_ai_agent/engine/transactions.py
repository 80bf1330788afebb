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

BEGIN and the limits travel in one round trip, not two. `conn.transaction()`
sends BEGIN alone and waits for its reply; the limits would then be a second
round trip, before the transaction's first real statement. Both are only
there to set things up, and the server needs no reply to one before it can
take the other: so `bounded_transaction` sends them together in psycopg's
pipeline mode (several statements sent, then their replies read) and ends the
pipeline before the caller's first statement. Of a spawn's five round trips
(BEGIN, limits, CreateTask, AppendEvent, COMMIT) four are left.

Why not further, with BEGIN and the limits riding on the first real statement
too? That statement is the caller's, and psycopg would have to keep the
pipeline open until its reply comes back: it asks for a pipeline's replies
with a Flush, which does not end the server's batch of messages, and the
server starts the idle timer only when a batch ends (a Sync), when it tells
the client it is ready for the next query. So in an open pipeline a frozen
worker's transaction would not be idle to the server, and its locks would be
held for ever again. Ending the pipeline (a Sync) before the first statement
keeps the idle limit in force from the first statement on. A failure of
BEGIN or of the limits (the connection lost) is raised there, and the
transaction rolls back as for any other failure.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg

from ..db.queries import Querier


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


@contextmanager
def bounded_transaction(
    conn: psycopg.Connection[Any], limits: TransactionLimits, *, wait_for_locks: bool = False
) -> Iterator[psycopg.Transaction]:
    """`conn.transaction()`, bounded by `limits` from its first statement on.

    BEGIN and the limits cost one round trip (a pipeline, see above), and are
    done before the block's first statement.

    With `wait_for_locks`, its statements wait for locks as long as it takes
    (the idle limit of the transaction that holds them still bounds the wait).
    """
    with ExitStack() as transaction_block:
        # BEGIN and the limits in one round trip: queued in a pipeline, sent,
        # and their replies read when it ends. Entered by hand, not with
        # conn.transaction(), which in a pipeline waits for BEGIN's reply alone.
        # The transaction outlives the pipeline: it ends (COMMIT, or ROLLBACK
        # when an exception leaves the block) when `transaction_block` does.
        with conn.pipeline():
            transaction = transaction_block.enter_context(psycopg.Transaction(conn))
            Querier(conn).limit_transaction(
                idle_milliseconds=_milliseconds(limits.idle_seconds),
                lock_milliseconds=0 if wait_for_locks else _milliseconds(limits.lock_seconds),
            )
        yield transaction


def _milliseconds(seconds: float) -> int:
    # At least 1: for both settings, 0 would mean no limit at all.
    return max(1, round(seconds * 1000))
