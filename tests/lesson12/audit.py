"""The test's own audit of every concurrency key's slots (see audit.sql).

The engine counts each key's running tasks itself, with a trigger; a test that
read only that counter would take the engine's word for what it checks. The
audit recounts the rows instead, after every statement that changes a key's
slots, one transaction at a time per key, and keeps what it found next to the
engine's counter (like lesson 03's record of every claim).

    install_audit(database)                 # before any worker starts
    ...
    assert max_held_per_key(pool) <= ...    # the most a key ever held, at any commit
    assert counter_mismatches(pool) == []   # where the engine's counter was wrong
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from psycopg_pool import ConnectionPool

from tests.conftest import LessonDatabase

AUDIT_SQL = Path(__file__).with_name("audit.sql")


@dataclass(frozen=True)
class AuditRow:
    """One key's state as one transaction committed it."""

    seq: int
    queue: str
    key: str
    # The recount of the key's slot-holding rows.
    held: int
    # The engine's counter (NULL if the key has no row).
    counter: int | None
    at: datetime


def install_audit(database: LessonDatabase) -> None:
    """Create the audit's table, index and triggers in the lesson's test schema."""
    with database.pool.connection() as conn:
        conn.execute(AUDIT_SQL.read_text())


def audit_rows(pool: ConnectionPool) -> list[AuditRow]:
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT seq, queue, key, held, counter, at FROM key_slot_audit ORDER BY seq"
        ).fetchall()
    return [AuditRow(*row) for row in rows]


def max_held_per_key(pool: ConnectionPool) -> dict[str, int]:
    """The most slots each audited key held at any commit, by key."""
    with pool.connection() as conn:
        rows = conn.execute("SELECT key, max(held) FROM key_slot_audit GROUP BY key").fetchall()
    return {key: most for key, most in rows}


def counter_mismatches(pool: ConnectionPool) -> list[AuditRow]:
    """Every audited commit at which the engine's counter differed from the recount."""
    return [row for row in audit_rows(pool) if row.counter != row.held]


def counters(pool: ConnectionPool) -> dict[str, int]:
    """The engine's counter of every key, now."""
    with pool.connection() as conn:
        rows = conn.execute("SELECT key, running FROM concurrency_keys").fetchall()
    return {key: running for key, running in rows}


def recounts(pool: ConnectionPool) -> dict[str, int]:
    """Every key's slot-holding rows, counted now (0 for a key with none)."""
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT k.key, count(t.id) FROM concurrency_keys AS k "
            "LEFT JOIN tasks AS t ON t.queue = k.queue AND t.concurrency_key = k.key "
            "AND t.key_slot_held GROUP BY k.key"
        ).fetchall()
    return {key: held for key, held in rows}
