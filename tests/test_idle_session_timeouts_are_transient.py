"""A session the server ended for idling in its transaction is a blip, in every lesson
with bounded transactions (07 on).

A worker frozen inside a bounded transaction (transactions.py) loses its
session at the idle limit, half its lease. Resumed within its lease, it still
owns its attempt: its next statement meets the server's error, SQLSTATE 25P03,
and must try again on a new connection (statement_retries.py), not fail the
attempt. This asks the real server for that error and each lesson's
`is_transient` for its verdict.
"""

from __future__ import annotations

import importlib

import psycopg
import pytest

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
]


@pytest.fixture(scope="module")
def idle_session_error(database_url: str) -> psycopg.Error:
    """The error a statement meets after the server ended its idle transaction."""
    with psycopg.connect(database_url) as conn, psycopg.connect(database_url) as observer:
        conn.execute("SET idle_in_transaction_session_timeout = '100ms'")
        conn.execute("SELECT 1")  # the transaction begins (autocommit is off)
        backend = conn.info.backend_pid

        def session_ended() -> bool:
            row = observer.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend,)
            ).fetchone()
            observer.commit()  # a new snapshot of pg_stat_activity at each look
            return row is not None and row[0] == 0

        wait_until(session_ended, message="the server did not end the idle session")
        with pytest.raises(psycopg.Error) as raised:
            conn.execute("SELECT 1")
    return raised.value


@pytest.mark.parametrize("lesson", LESSONS_WITH_BOUNDED_TRANSACTIONS)
def test_a_session_ended_idle_in_its_transaction_is_tried_again(
    idle_session_error: psycopg.Error, lesson: str
) -> None:
    shared = importlib.import_module(f"lessons.{lesson}.engine.shared")
    assert idle_session_error.sqlstate == "25P03", idle_session_error
    assert shared.is_transient(idle_session_error)
