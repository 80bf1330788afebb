"""The aggressive-autovacuum pass, including the one setting a table cannot carry.

Per-table settings decide *whether* autovacuum should vacuum a table; the launcher
only looks every `autovacuum_naptime` (60 s stock). A burn-down lasts seconds, so
with the stock naptime the per-table settings would never get a chance to act. On
the embedded server, which belongs to this repository, the aggressive pass lowers
the naptime for its duration (ALTER SYSTEM, then reload) and restores it after. On
any other server (DATABASE_URL) it changes the naptime only when asked to.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from lessons.common.database import connect, locate_database

from .vacuum import Vacuum

AGGRESSIVE_NAPTIME_SECONDS = 1


@contextmanager
def vacuum_pass(vacuum: Vacuum, *, change_naptime: bool | None = None) -> Iterator[str]:
    """Run a pass under `vacuum`; yields the server-wide part of the settings, in words.

    `change_naptime=None` means: only on the embedded server.
    """
    allowed = locate_database().embedded if change_naptime is None else change_naptime
    if vacuum is Vacuum.STOCK or not allowed:
        with connect() as conn:
            row = conn.execute("SHOW autovacuum_naptime").fetchone()
        yield f"autovacuum_naptime {row[0] if row else '?'} (unchanged)"
        return
    previous = _naptime_in_auto_conf()
    try:
        _set_naptime(f"{AGGRESSIVE_NAPTIME_SECONDS}s")
    except psycopg.Error as error:
        yield f"autovacuum_naptime unchanged (could not set it: {str(error).strip()})"
        return
    try:
        yield f"autovacuum_naptime {AGGRESSIVE_NAPTIME_SECONDS}s for this pass"
    finally:
        _set_naptime(previous)


def _naptime_in_auto_conf() -> str | None:
    """The naptime postgresql.auto.conf sets already (restored after the pass), if any."""
    with connect() as conn:
        row = conn.execute(
            "SELECT setting FROM pg_file_settings"
            " WHERE name = 'autovacuum_naptime' AND sourcefile LIKE '%postgresql.auto.conf'"
            " ORDER BY seqno DESC LIMIT 1"
        ).fetchone()
    return str(row[0]) if row else None


def _set_naptime(value: str | None) -> None:
    """ALTER SYSTEM SET the naptime (None: RESET it), and reload the configuration."""
    with connect() as conn:
        if value is None:
            conn.execute("ALTER SYSTEM RESET autovacuum_naptime")
        else:
            conn.execute(
                sql.SQL("ALTER SYSTEM SET autovacuum_naptime = {}").format(sql.Literal(value))
            )
        conn.execute("SELECT pg_reload_conf()")
