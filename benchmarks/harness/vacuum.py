"""Vacuum settings, stated next to every figure.

A queue table is a worst case for vacuum. Every claim updates a row so that it
leaves the partial index of queued tasks, and leaves behind a dead index entry at
the *head* of that index, exactly where the next claim starts reading. Until vacuum
removes those entries, each claim steps over all the entries of the tasks claimed
before it (cheaply once they are marked dead, but it still reads their pages). Stock
autovacuum waits for 20 % of the table to be dead; the aggressive settings below make
it vacuum the queue table after every thousand dead rows, without pausing.

Per-table settings cannot shorten `autovacuum_naptime`, the pause between two
rounds of the autovacuum launcher (60 s stock): that one is server-wide, and the
benchmarks leave it as it is.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg import sql

AGGRESSIVE_THRESHOLD = 1000

AGGRESSIVE_SETTINGS: dict[str, int | float] = {
    "autovacuum_vacuum_scale_factor": 0,
    "autovacuum_vacuum_threshold": AGGRESSIVE_THRESHOLD,
    "autovacuum_vacuum_insert_scale_factor": 0,
    "autovacuum_vacuum_insert_threshold": AGGRESSIVE_THRESHOLD,
    "autovacuum_analyze_scale_factor": 0,
    "autovacuum_analyze_threshold": AGGRESSIVE_THRESHOLD,
    "autovacuum_vacuum_cost_delay": 0,
}


class Vacuum(enum.Enum):
    STOCK = "stock"
    AGGRESSIVE = "aggressive"

    def describe(self) -> str:
        if self is Vacuum.STOCK:
            return "stock autovacuum (the server's settings)"
        return (
            "aggressive autovacuum on the queue tables (scale factors 0, "
            f"thresholds {AGGRESSIVE_THRESHOLD}, cost delay 0)"
        )


def apply_vacuum(conn: psycopg.Connection[Any], tables: Iterable[str], vacuum: Vacuum) -> None:
    """Give `tables` (names as the connection's search_path finds them) the vacuum settings."""
    if vacuum is Vacuum.STOCK:
        return
    options = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(name), sql.Literal(value))
        for name, value in AGGRESSIVE_SETTINGS.items()
    )
    for table in tables:
        conn.execute(sql.SQL("ALTER TABLE {} SET ({})").format(sql.Identifier(table), options))
