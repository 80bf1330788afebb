"""Bounded transactions: a worker that freezes inside one cannot hold its locks for ever.

A transaction of more than one statement holds its row locks between them. A
worker frozen (SIGSTOP, a stalled VM) or cut off from the database in the
middle of one would hold them until someone noticed: the sweeps pass over a
locked row (SKIP LOCKED), so its task would never be reassigned, and a healthy
worker's statement that needs that row would wait behind it.

So every multi-statement transaction of the engine starts with
`LimitTransaction`: idle between two statements for longer than
`idle_seconds`, the server ends the session, and its locks with it; a statement
that waits for a lock for longer than `lock_seconds` fails with
lock_not_available, which `shared.is_transient` counts as transient: the
caller tries again later. A task thread may wait for locks (a failed wait would
fail its attempt); a peer shared by the whole worker, such as the result
writer, must not.
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
    """How long a transaction may sit idle, and one of its statements wait for a lock."""

    idle_seconds: float
    lock_seconds: float

    @classmethod
    def for_worker(cls, inactivity_threshold: float) -> TransactionLimits:
        """Limits well within a worker's lease: a frozen worker's locks are gone at
        half of it, before its lease expires, so that its task can be reassigned
        then; a statement waits at most a quarter of it for a lock."""
        return cls(idle_seconds=inactivity_threshold / 2, lock_seconds=inactivity_threshold / 4)


@contextmanager
def bounded_transaction(
    conn: psycopg.Connection[Any], limits: TransactionLimits, *, wait_for_locks: bool = False
) -> Iterator[psycopg.Transaction]:
    """`conn.transaction()`, bounded by `limits` (without a lock timeout when `wait_for_locks`)."""
    with conn.transaction() as transaction:
        Querier(conn).limit_transaction(
            idle_milliseconds=milliseconds(limits.idle_seconds),
            lock_milliseconds=0 if wait_for_locks else milliseconds(limits.lock_seconds),
        )
        yield transaction


def milliseconds(seconds: float) -> int:
    """`seconds` in whole milliseconds, at least 1 (0 would mean no limit at all)."""
    return max(1, round(seconds * 1000))
