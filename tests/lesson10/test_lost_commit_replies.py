"""Lesson 10: wait_for_event's transactions whose commit reply is lost (the
connection died after the server committed) are resolved, not repeated.

Played in this process, as in lesson 09's test of the same name: the first two
durable transactions commit, then raise the error a dead connection raises.
The first opens the wait (the event, the wait and the suspension commit
together: the retry finds the event); the second looks at the wait once it has
ended, by a push or by its deadline (a timeout that did commit: the retry finds
the wait ended, and does not time it out twice).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from lessons.lesson10_durable_events.db.models import TaskStatus
from lessons.lesson10_durable_events.db.queries import Querier
from lessons.lesson10_durable_events.engine import durable
from lessons.lesson10_durable_events.engine.client import enqueue, push_event, wait_for_task
from lessons.lesson10_durable_events.engine.transactions import bounded_transaction
from lessons.lesson10_durable_events.engine.worker import Worker
from tests.conftest import LessonDatabase
from tests.lesson10.functions import DURABLE_FUNCTIONS, FUNCTIONS
from tests.waiting import wait_until

LESSON = "lesson10_durable_events"
QUEUE = "waits"


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON, max_size=16)


@pytest.fixture
def lost_replies(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The first two durable transactions commit, then lose their reply."""
    lost: list[str] = []
    calls = [0]

    @contextmanager
    def commit_then_lose_the_reply(*args: Any, **kwargs: Any) -> Iterator[Any]:
        calls[0] += 1
        with bounded_transaction(*args, **kwargs) as transaction:
            yield transaction
        if calls[0] <= 2:
            lost.append(f"transaction {calls[0]}")
            raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(durable, "bounded_transaction", commit_then_lose_the_reply)
    return lost


@pytest.mark.parametrize(
    ("pushed", "timeout", "output"),
    [(True, 60.0, {"payload": {"approved": True}}), (False, 1.0, {"timed_out": True})],
)
def test_lost_commit_replies_of_a_wait_are_resolved_not_repeated(
    database: LessonDatabase,
    lost_replies: list[str],
    pushed: bool,
    timeout: float,
    output: Any,
) -> None:
    pool = database.pool
    with pool.connection() as conn:
        task_id = enqueue(
            conn,
            "wait_for_key",
            {"key": "approval:A-1", "timeout": timeout},
            queue=QUEUE,
            durable=True,
            max_retries=0,
        )
    with Worker(
        pool,
        FUNCTIONS,
        durable_functions=DURABLE_FUNCTIONS,
        queue=QUEUE,
        slots=2,
        poll_interval=0.05,
        heartbeat_interval=0.1,
        inactivity_threshold=2.0,
    ):
        if pushed:

            def waiting() -> bool:
                with pool.connection() as conn:
                    waits = Querier(conn).list_event_waits()
                return any(wait.ended_at is None for wait in waits)

            wait_until(waiting, timeout=20)
            with pool.connection() as conn:
                push_event(conn, "approval:A-1", {"approved": True})
        task = wait_for_task(pool, task_id, timeout=30)
    assert (task.status, task.attempt, task.output) == (TaskStatus.COMPLETED, 1, output), task
    assert lost_replies == ["transaction 1", "transaction 2"]
    with pool.connection() as conn:
        queries = Querier(conn)
        events = queries.list_task_events(task_id=task_id)
        waits = queries.list_event_waits()
    assert [(event.event_number, event.kind, event.attempt) for event in events] == [(1, "wait", 1)]
    assert len(waits) == 1 and waits[0].ended_at is not None, waits
