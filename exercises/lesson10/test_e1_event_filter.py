"""A wait for an event that matches.

A wait ends with the first event pushed for its key, whatever it says. Give
`wait_for_event` a `matching` parameter (a JSON object, None by default): the wait
ends only with an event whose payload contains it (as jsonb's `@>` means it), and an
event that does not match leaves it open. The check waits for
`{"approved": true}`, pushes a refusal, then an approval, and asserts that the
refusal woke nobody and the task got the approval.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from lessons.lesson10_durable_events.db.models import TaskStatus
from lessons.lesson10_durable_events.db.queries import Querier
from lessons.lesson10_durable_events.engine.client import enqueue, push_event, wait_for_task
from lessons.lesson10_durable_events.engine.durable import DurableContext
from lessons.lesson10_durable_events.engine.worker import Worker
from tests.conftest import LessonDatabase
from tests.waiting import wait_until

LESSON = "lesson10_durable_events"
KEY = "approval:A-1"


def wait_for_an_approval(ctx: DurableContext, input: Any) -> Any:
    return ctx.wait_for_event(
        KEY,
        timeout=60,
        matching={"approved": True},  # type: ignore[call-arg, unused-ignore]
    )


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def wait_is_open(database: LessonDatabase, task_id: int) -> bool:
    with database.pool.connection() as conn:
        waits = Querier(conn).list_event_waits()
    return any(wait.task_id == task_id and wait.ended_at is None for wait in waits)


def test_an_event_that_does_not_match_leaves_the_wait_open(database: LessonDatabase) -> None:
    if "matching" not in inspect.signature(DurableContext.wait_for_event).parameters:
        pytest.fail(
            "lesson 10's wait_for_event has no `matching` parameter yet: "
            "see exercise 1 in its README",
            pytrace=False,
        )
    with database.pool.connection() as conn:
        task_id = enqueue(conn, "wait_for_an_approval", None, durable=True)
    with Worker(
        database.pool,
        {},
        durable_functions={"wait_for_an_approval": wait_for_an_approval},
        slots=1,
        poll_interval=5.0,
        heartbeat_interval=0.1,
        inactivity_threshold=0.6,
    ):
        wait_until(lambda: wait_is_open(database, task_id), message="the wait never opened")
        with database.pool.connection() as conn:
            refusal = push_event(conn, KEY, {"approved": False, "by": "bob"})
        assert refusal.woke_task_ids == [], "an event that does not match woke the task"
        assert wait_is_open(database, task_id), "an event that does not match ended the wait"
        with database.pool.connection() as conn:
            approval = push_event(conn, KEY, {"approved": True, "by": "ada"})
        assert approval.woke_task_ids == [task_id]
        task = wait_for_task(database.pool, task_id, timeout=20)
    assert task.status == TaskStatus.COMPLETED, f"task {task.id}: {task.status}: {task.output}"
    assert task.output == {"approved": True, "by": "ada"}
