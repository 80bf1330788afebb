"""Statement retries: a durable operation rides out a connection blip instead of failing.

A connection cut for a second or two (a server restart, a failover, a network
blip) used to fail whichever durable operation was running then, and so the
attempt: its steps ran again on the next attempt, and a task with no retries
left failed for good. Every statement of the durable context is fenced (only
the attempt's owner can write) and keyed (an event is written once, at its
number), so trying it again is safe; `with_retries` does, with a bounded backoff.

A failure while a write was in flight is ambiguous: the server may have
committed before the connection died. So before each new try, the operation's
`resolve` reads what the database holds (the task's history, the task's row):
if the write is there, it was made, and the operation returns that instead of
writing again.

After an outage the pool reconnects in the background, backing off (one
second, then two, four...), and may have no connection to give for seconds
after the database is back: a try that cannot get a pooled connection at once
opens one of its own (`shared.connect_like`), as the heartbeat does, rather
than wait for the pool and run out of time.

The retries stop at `window_seconds`, half the worker's inactivity threshold:
past that, the worker's lease is at risk anyway, and another worker may take
the task. The operation then raises `DatabaseUnreachable`, which the worker
records as an attempt ended by the infrastructure, not charged to the task's
retries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from .shared import connect_like, first_line, is_transient

log = logging.getLogger(__name__)

Result = TypeVar("Result")

# What an operation does on one connection of the pool, and how a later try
# finds what an earlier one wrote (None: nothing was written).
Operation = Callable[[psycopg.Connection[Any]], Result]
Resolve = Callable[[psycopg.Connection[Any]], Result | None]


class DatabaseUnreachable(Exception):
    """A durable operation kept failing on transient database errors for its whole window.

    Not the task's fault: the worker sends the attempt back to the queue without
    charging it to the task's retries.
    """


@dataclass(frozen=True)
class StatementRetries:
    """How long a durable operation keeps trying, and how long it waits between tries."""

    window_seconds: float
    first_backoff_seconds: float = 0.05
    max_backoff_seconds: float = 1.0

    @classmethod
    def for_worker(cls, inactivity_threshold: float) -> StatementRetries:
        """Half the threshold: a blip of seconds passes, a lease is never outlived."""
        return cls(window_seconds=inactivity_threshold / 2)


def with_retries(
    pool: ConnectionPool,
    retries: StatementRetries,
    what: str,
    operation: Operation[Result],
    *,
    resolve: Resolve[Result] | None = None,
) -> Result:
    """`operation(conn)` on a pooled connection, tried again while its errors are transient.

    Before every try but the first, `resolve(conn)` says whether an earlier try
    was committed after all (its result), or not (None). Errors that are not
    transient, and exceptions that are not the database's, go through at once.
    """
    deadline = time.monotonic() + retries.window_seconds
    backoff = retries.first_backoff_seconds
    tries = 0
    while True:
        tries += 1
        try:
            with _connection(pool, retries.first_backoff_seconds, what) as conn:
                if tries > 1 and resolve is not None:
                    resolved = resolve(conn)
                    if resolved is not None:
                        log.info("%s: found recorded by an earlier try", what)
                        return resolved
                return operation(conn)
        except psycopg.Error as error:
            if not is_transient(error):
                raise
            if time.monotonic() + backoff > deadline:
                raise DatabaseUnreachable(
                    f"{what}: the database was unreachable for {retries.window_seconds} s "
                    f"({tries} tries): {first_line(error)}"
                ) from error
            log.warning("%s: try %d failed, again in %.2f s: %s", what, tries, backoff, error)
            time.sleep(backoff)
            backoff = min(backoff * 2, retries.max_backoff_seconds)


@contextmanager
def _connection(
    pool: ConnectionPool, wait_seconds: float, what: str
) -> Iterator[psycopg.Connection[Any]]:
    """A connection of the pool, or one of our own if the pool has none within `wait_seconds`.

    A pool sized as the worker sizes it (a connection per slot) has one to give
    at once, unless it is reconnecting after an outage.
    """
    try:
        conn = pool.getconn(timeout=wait_seconds)
    except PoolTimeout:
        log.info("%s: the pool has no connection yet, using one of its own", what)
        with connect_like(pool, application_name="durable context") as own:
            yield own
        return
    try:
        yield conn
    finally:
        pool.putconn(conn)
