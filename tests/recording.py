"""What task functions use to tell the tests what they did, and to be held back.

A test must not take the engine's word for what ran: the task functions write
their own account into an `executions` table of the test's schema, one row per
event ("started", "finished", ...), from whichever process runs them. The
tests count those rows.

A *gate* is a file: a task function that waits on a gate blocks until the test
creates that file, so a test can hold tasks in the middle of running, do
something to their worker (SIGTERM, SIGSTOP, ...), and then let them go.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

from lessons.common.database import connect

EXECUTIONS_TABLE = """
CREATE TABLE executions (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- What identifies the task to its function: a number from its input, or its id.
    key bigint NOT NULL,
    -- The attempt, where the lesson has attempts.
    attempt integer,
    event text NOT NULL,
    -- The process that ran the function.
    pid integer NOT NULL,
    detail jsonb,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""

# One connection per schema and process, shared by every task thread of the
# process under a lock: recording must not need a connection per task.
_connections: dict[str, psycopg.Connection[TupleRow]] = {}
_lock = threading.Lock()


def create_executions_table(conn: psycopg.Connection[Any]) -> None:
    """Create `executions` in the connection's schema (its search_path)."""
    conn.execute(EXECUTIONS_TABLE)


def record(
    schema: str,
    key: int,
    event: str,
    *,
    attempt: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append one event to `schema.executions`, committed before this returns."""
    with _lock:
        conn = _connections.get(schema)
        if conn is None or conn.closed:
            conn = connect(schema=schema)  # DATABASE_URL, exported by the tests' conftest
            _connections[schema] = conn
        conn.execute(
            "INSERT INTO executions (key, attempt, event, pid, detail) VALUES (%s, %s, %s, %s, %s)",
            (key, attempt, event, os.getpid(), Jsonb(detail) if detail is not None else None),
        )


def close_connections() -> None:
    """Close the recording connections this process opened (for in-process workers)."""
    with _lock:
        for conn in _connections.values():
            conn.close()
        _connections.clear()


def wait_for_gate(gate: str | Path, *, timeout: float = 30.0) -> None:
    """Block until the file `gate` exists. Raise TimeoutError if it never does,
    so that a test that forgot to open a gate fails instead of hanging."""
    deadline = time.monotonic() + timeout
    path = Path(gate)
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gate {gate} was not opened within {timeout} s")
        time.sleep(0.01)


def open_gate(gate: str | Path) -> None:
    Path(gate).touch()
