"""What several engine modules share: defaults, the finished statuses, errors, the JSON rules.

The bottom of the engine: it imports nothing of the engine, and every other
engine module may import it, so that the client, the worker and the result
writer agree on these rules without importing each other.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from ..db.models import TaskStatus

DEFAULT_QUEUE = "default"

# Like the column default in schema.sql: up to 4 attempts in all.
DEFAULT_MAX_RETRIES = 3

# A task in one of these statuses is done: nothing will run it again.
FINISHED_STATUSES = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


class NonRetryableError(Exception):
    """Raise it (or a subclass) from a task function to fail the task at once.

    Any other exception fails only the attempt, and the task is retried while it
    has retries left. Use this one when trying again cannot help: a declined
    card, an input that can never be valid.
    """


def to_json(value: Any, what: str) -> str:
    """`value` as JSON text the database can store, or a `ValueError` that names `what`.

    `what` says whose value it is ("the input of charge_card"), so that the
    refusal can be read where it ends up: an exception, or a failed task.

    allow_nan=False: Python would write NaN and Infinity, which are not JSON. A
    value nested too deep to write out is no JSON we can store either. A
    lone surrogate (what bytes that are not UTF-8 decode to, with
    errors="surrogateescape": file names, for one) is not text, and cannot be
    stored. What jsonb alone refuses (a string holding U+0000) is left for the
    database to say when the value is written.
    """
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as error:
        raise ValueError(f"{what} is not JSON: {error}") from error
    try:
        text.encode()
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{what} cannot be stored: it holds a string that is not valid Unicode: {error}"
        ) from error
    return text


def canonical_json(value: Any) -> str:
    """One text per JSON value: keys sorted, no spaces, characters as they are.

    Two values that are equal as JSON give the same text, whatever order their
    keys were inserted in: what keeps the key of a durable call (`durable.py`)
    the same from one attempt to the next.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def error_document(kind: str, message: str) -> dict[str, Any]:
    """What a failed task's output holds: the kind of error and a readable message."""
    # jsonb cannot hold the character U+0000, nor a lone surrogate (what a file name
    # that is not UTF-8 decodes to): spell them out rather than lose the failure.
    storable = message.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode()
    return {"error": {"type": kind, "message": storable}}


def exception_message(error: BaseException) -> str:
    """`str(error)`, which runs the exception's own code and so can itself raise."""
    try:
        return str(error)
    except Exception:
        return f"(the message of this {type(error).__name__} could not be read)"


def first_line(error: BaseException) -> str:
    """The first line of an error's message, for a log line or a one-line refusal."""
    message = exception_message(error).strip()
    return message.splitlines()[0] if message else type(error).__name__


# SQLSTATE classes that mean "try again later", not "this statement is wrong":
# 08 connection exception, 40 transaction rollback (a deadlock, a serialization
# failure), 53 insufficient resources, 57 operator intervention (the server
# shutting down or starting up, a cancelled statement).
TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57")

# Lock not available: a statement gave up waiting for a lock (lock_timeout).
LOCK_NOT_AVAILABLE = "55P03"

# The server ended this session, idle too long inside a transaction (a worker
# frozen in the middle of one, see transactions.py): the transaction rolled back,
# and the same statements may succeed on a new connection, like after a lost one.
IDLE_IN_TRANSACTION_SESSION_TIMEOUT = "25P03"


def is_transient(error: psycopg.Error) -> bool:
    """Whether the same statement may succeed if tried again later.

    An error without a SQLSTATE never reached the server: the connection
    failed, or the pool had none to give. A refusal with a SQLSTATE of another
    class (a value jsonb cannot hold, a row too big) is deterministic: trying
    the same statement again gives the same answer.
    """
    if error.sqlstate is None:
        return True
    return error.sqlstate[:2] in TRANSIENT_SQLSTATE_CLASSES or error.sqlstate in (
        LOCK_NOT_AVAILABLE,
        IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
    )


def connect_like(pool: ConnectionPool, *, application_name: str) -> psycopg.Connection[Any]:
    """A connection of its own, to the same database and with the same settings as `pool`'s.

    For a loop that must not wait for a pooled connection: after an outage a
    pool reconnects in the background, backing off, and may make a caller wait
    for seconds.
    """
    conninfo = pool.conninfo() if callable(pool.conninfo) else pool.conninfo
    settings = pool.kwargs() if callable(pool.kwargs) else dict(pool.kwargs or {})
    settings.update(autocommit=True, application_name=application_name, connect_timeout=2)
    return psycopg.connect(conninfo, **settings)
