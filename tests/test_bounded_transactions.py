"""A bounded transaction (transactions.py, lessons 07-16): BEGIN and its limits cost one
round trip, and the limits are in force from its first statement on.

BEGIN and the limits are one simple query, a single message holding both
statements, answered once: the server is then ready for the block's first
statement, with the idle limit armed, so a frozen worker's transaction must
still be ended at the idle limit after its first statement. Each test runs on
the real server, on a connection of its own, with a table of its own in the
lesson's schema; round trips are read from libpq's trace of the protocol
messages.
"""

from __future__ import annotations

import importlib
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest

from lessons.common.database import connect
from tests.conftest import LessonDatabase
from tests.waiting import wait_until

LESSONS_WITH_BOUNDED_TRANSACTIONS = [
    "lesson07_durable_tasks",
    "lesson08_listen_notify",
    "lesson09_durable_sleep",
    "lesson10_durable_events",
    "lesson11_retries_replays_forks",
    "lesson12_flow_control",
    "lesson13_cancellation_and_schedules",
    "lesson14_changing_code_safely",
    "lesson15_operating_at_scale",
    "lesson16_durable_ai_agent",
]

# A line of libpq's trace that begins a message: direction (Frontend, Backend), length.
MESSAGE = re.compile(r"^[FB]\t\d+\t")

IDLE_SECONDS = 0.3
LOCK_SECONDS = 0.1


@pytest.fixture(params=LESSONS_WITH_BOUNDED_TRANSACTIONS)
def lesson(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def transactions(lesson: str) -> ModuleType:
    return importlib.import_module(f"lessons.{lesson}.engine.transactions")


@pytest.fixture
def database(lesson: str, lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    database = lesson_database(lesson)
    with database.pool.connection() as conn:
        conn.execute("CREATE TABLE marks (n integer PRIMARY KEY)")
        conn.execute("INSERT INTO marks VALUES (1)")
    return database


@pytest.fixture
def conn(database: LessonDatabase) -> Iterator[psycopg.Connection[Any]]:
    with connect(database.url, schema=database.schema) as conn:
        yield conn


def limits(transactions: ModuleType) -> Any:
    return transactions.TransactionLimits(idle_seconds=IDLE_SECONDS, lock_seconds=LOCK_SECONDS)


def round_trips(conn: psycopg.Connection[Any], run: Callable[[], object]) -> list[list[str]]:
    """What `run()` sends, one list of frontend messages per round trip.

    A round trip is a run of messages the client sends followed by the
    server's replies, in libpq's trace.
    """
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "trace"
        with path.open("w") as trace:
            conn.pgconn.trace(trace.fileno())
            conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
            try:
                run()
            finally:
                conn.pgconn.untrace()
        lines = path.read_text().splitlines()
    trips: list[list[str]] = []
    previous = "B"
    for line in lines:
        if not MESSAGE.match(line):
            if previous == "F":  # a statement's text goes on over several lines
                trips[-1][-1] += "\n" + line
            continue
        direction, _length, message = line.split("\t", 2)
        if direction == "F":
            if previous == "B":
                trips.append([])
            trips[-1].append(message)
        previous = direction
    return trips


def test_begin_and_the_limits_cost_one_round_trip_before_the_first_statement(
    transactions: ModuleType, conn: psycopg.Connection[Any]
) -> None:
    def one_statement() -> None:
        with transactions.bounded_transaction(conn, limits(transactions)):
            conn.execute("SELECT n FROM marks").fetchall()

    trips = round_trips(conn, one_statement)
    assert len(trips) == 3, trips  # BEGIN and the limits; the statement; COMMIT
    begin_and_limits, statement, commit = trips
    assert len(begin_and_limits) == 1, trips  # one message, answered once
    assert begin_and_limits[0].startswith("Query"), trips  # a simple query: both statements
    assert "BEGIN" in begin_and_limits[0] and "set_config" in begin_and_limits[0], trips
    assert "marks" in " ".join(statement) and "BEGIN" not in " ".join(statement), trips
    assert "COMMIT" in " ".join(commit), trips


def test_the_limits_hold_inside_and_end_with_the_transaction(
    transactions: ModuleType, conn: psycopg.Connection[Any]
) -> None:
    def settings() -> tuple[str, str]:
        row = conn.execute(
            "SELECT current_setting('idle_in_transaction_session_timeout'),"
            " current_setting('lock_timeout')"
        ).fetchone()
        assert row is not None
        return row[0], row[1]

    before = settings()
    with transactions.bounded_transaction(conn, limits(transactions)):
        assert settings() == ("300ms", "100ms")
    with transactions.bounded_transaction(conn, limits(transactions), wait_for_locks=True):
        assert settings() == ("300ms", "0")
    assert settings() == before


def test_a_transaction_idle_after_its_first_statement_is_ended_at_the_idle_limit(
    transactions: ModuleType, database: LessonDatabase, conn: psycopg.Connection[Any]
) -> None:
    """The first statement takes a row lock; the client then says nothing (a frozen
    worker). The server ends the session at the idle limit, and the lock with it."""
    backend = conn.info.backend_pid
    with connect(database.url) as observer:

        def session_gone() -> bool:
            row = observer.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend,)
            ).fetchone()
            return row is not None and row[0] == 0

        with (
            pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout),
            transactions.bounded_transaction(conn, limits(transactions)),
        ):
            conn.execute("SELECT n FROM marks WHERE n = 1 FOR UPDATE").fetchall()
            wait_until(session_gone, timeout=10, message="the idle limit did not apply")
            conn.execute("SELECT 1")
        with connect(database.url, schema=database.schema) as other:
            locked = other.execute("SELECT n FROM marks FOR UPDATE NOWAIT").fetchall()
            assert locked == [(1,)]


def test_a_lock_wait_past_the_limit_fails_transient_and_rolls_back(
    lesson: str, transactions: ModuleType, database: LessonDatabase, conn: psycopg.Connection[Any]
) -> None:
    """The first statement writes, the second waits for a row another session holds:
    it fails with lock_not_available (transient), and the first write is undone."""
    shared = importlib.import_module(f"lessons.{lesson}.engine.shared")
    with connect(database.url, schema=database.schema) as holder, holder.transaction():
        holder.execute("SELECT n FROM marks WHERE n = 1 FOR UPDATE")
        with (
            pytest.raises(psycopg.errors.LockNotAvailable) as refused,
            transactions.bounded_transaction(conn, limits(transactions)),
        ):
            conn.execute("INSERT INTO marks VALUES (2)")
            conn.execute("UPDATE marks SET n = 10 WHERE n = 1")
    assert shared.is_transient(refused.value)
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert conn.execute("SELECT n FROM marks ORDER BY n").fetchall() == [(1,)]


def test_a_failed_first_statement_rolls_back_and_the_connection_stays_usable(
    transactions: ModuleType, database: LessonDatabase, conn: psycopg.Connection[Any]
) -> None:
    with (
        pytest.raises(psycopg.errors.UniqueViolation),
        transactions.bounded_transaction(conn, limits(transactions)),
    ):
        conn.execute("INSERT INTO marks VALUES (1)")
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with transactions.bounded_transaction(conn, limits(transactions)):
        conn.execute("INSERT INTO marks VALUES (3)")
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with connect(database.url, schema=database.schema) as other:  # committed: seen by all
        assert other.execute("SELECT n FROM marks ORDER BY n").fetchall() == [(1,), (3,)]


def test_a_rollback_raised_in_the_block_undoes_it_and_goes_no_further(
    transactions: ModuleType, conn: psycopg.Connection[Any]
) -> None:
    with transactions.bounded_transaction(conn, limits(transactions)):
        conn.execute("INSERT INTO marks VALUES (4)")
        raise psycopg.Rollback()
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert conn.execute("SELECT n FROM marks ORDER BY n").fetchall() == [(1,)]
