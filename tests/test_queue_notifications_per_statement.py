"""One notification call per statement and queue, not per row (lessons 08-15).

A statement that puts thirty tasks of two queues back on the queue (lesson 08's
`tasks_requeued_notify`), or gives thirty suspended tasks a new wake-up time
(lesson 09's `tasks_wake_at_notify`, as the result writer's `WakeTasks` does for a
batch's parents), runs each trigger function once: statement-level triggers with
transition tables, which call pg_notify once per distinct queue. The calls are
counted by the server (`track_functions`, in the statement's own transaction);
the listener hears each queue once, with the queue's name as the payload.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from lessons.common.database import connect
from tests.conftest import LessonDatabase

LESSONS_WITH_REQUEUE_NOTIFICATIONS = [
    "lesson08_listen_notify",
    "lesson09_durable_sleep",
    "lesson10_durable_events",
    "lesson11_retries_replays_forks",
    "lesson12_flow_control",
    "lesson13_cancellation_and_schedules",
    "lesson14_changing_code_safely",
    "lesson15_operating_at_scale",
]
LESSONS_WITH_WAKE_UP_NOTIFICATIONS = LESSONS_WITH_REQUEUE_NOTIFICATIONS[1:]

QUEUES = {"alpha": 20, "beta": 10}
END_MARK = "(end of test notifications)"


@pytest.fixture
def database(lesson: str, lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    database = lesson_database(lesson)
    with database.pool.connection() as conn:
        for queue, count in QUEUES.items():
            conn.execute(
                "INSERT INTO tasks (queue, task_name, display_name, input)"
                " SELECT %s, 'note', 'note', '{}' FROM generate_series(1, %s)",
                (queue, count),
            )
    return database


def channel(database: LessonDatabase) -> str:
    return f"{database.schema}.task_queued"


@pytest.fixture
def listener(database: LessonDatabase) -> Iterator[psycopg.Connection[Any]]:
    with connect(database.url) as conn:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel(database))))
        yield conn


def heard(database: LessonDatabase, listener: psycopg.Connection[Any]) -> list[str]:
    """Every payload sent since the last call: read up to a mark of our own, which
    arrives after whatever was committed before it."""
    with database.pool.connection() as conn:
        conn.execute("SELECT pg_notify(%s, %s)", (channel(database), END_MARK))
    payloads: list[str] = []
    for notification in listener.notifies(timeout=10):
        if notification.payload == END_MARK:
            return payloads
        payloads.append(notification.payload)
    raise TimeoutError("the end mark never arrived")


def trigger_calls(
    database: LessonDatabase, statement: Callable[[psycopg.Connection[Any]], object]
) -> dict[str, int]:
    """Run `statement` and count the calls of the schema's notify_* functions it made."""
    with database.pool.connection() as conn, conn.transaction():
        conn.execute("SET LOCAL track_functions = 'pl'")
        statement(conn)
        rows = conn.execute(
            "SELECT funcname, calls FROM pg_stat_xact_user_functions"
            " WHERE schemaname = %s AND funcname LIKE 'notify%%'",
            (database.schema,),
        ).fetchall()
    return {str(name): int(calls) for name, calls in rows}


def all_ids(conn: psycopg.Connection[Any]) -> list[int]:
    return [row[0] for row in conn.execute("SELECT id FROM tasks ORDER BY id").fetchall()]


@pytest.mark.parametrize("lesson", LESSONS_WITH_REQUEUE_NOTIFICATIONS)
def test_one_statement_that_requeues_thirty_tasks_notifies_once_per_queue(
    database: LessonDatabase, listener: psycopg.Connection[Any]
) -> None:
    with database.pool.connection() as conn:
        conn.execute("UPDATE tasks SET status = 'failed'")
    assert heard(database, listener) == []

    calls = trigger_calls(database, lambda conn: conn.execute("UPDATE tasks SET status = 'queued'"))
    assert calls and max(calls.values()) == 1, calls  # each function once, not per row
    assert sorted(heard(database, listener)) == sorted(QUEUES)


@pytest.mark.parametrize("lesson", LESSONS_WITH_WAKE_UP_NOTIFICATIONS)
def test_one_wake_up_of_thirty_suspended_tasks_notifies_once_per_queue(
    lesson: str, database: LessonDatabase, listener: psycopg.Connection[Any]
) -> None:
    with database.pool.connection() as conn:
        conn.execute("UPDATE tasks SET status = 'suspended', wake_at = NULL")
        ids = all_ids(conn)
    assert heard(database, listener) == []  # suspended to wait for a child: no news

    queries = importlib.import_module(f"lessons.{lesson}.db.queries")
    calls = trigger_calls(database, lambda conn: queries.Querier(conn).wake_tasks(ids=ids))
    assert calls and max(calls.values()) == 1, calls
    assert sorted(heard(database, listener)) == sorted(QUEUES)
