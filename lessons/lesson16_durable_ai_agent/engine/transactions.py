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
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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

    With `wait_for_locks`, its statements wait for locks as long as it takes
    (the idle limit of the transaction that holds them still bounds the wait).
    """
    with conn.transaction() as transaction:
        Querier(conn).limit_transaction(
            idle_milliseconds=_milliseconds(limits.idle_seconds),
            lock_milliseconds=0 if wait_for_locks else _milliseconds(limits.lock_seconds),
        )
        yield transaction


def _milliseconds(seconds: float) -> int:
    # At least 1: for both settings, 0 would mean no limit at all.
    return max(1, round(seconds * 1000))
