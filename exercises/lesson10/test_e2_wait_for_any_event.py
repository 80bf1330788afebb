"""A wait for the first of several events.

An order waits for its approval or its cancellation, whichever comes first. Add
`ctx.wait_for_any_event(keys, *, timeout)`, which returns `(key, payload)`: the key
of the first event pushed for any of `keys` while the wait is open, and its payload.
One wait, ended once: a later push for another of its keys changes nothing, on this
run or a replay; no event in time raises `EventTimeout`, as `wait_for_event` does.
The check ends one order's wait with a cancellation then an approval, another's
with an approval, lets a third time out, fails each first attempt after the wait,
and asserts what the replays return; and that `wait_for_event` still works.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from lessons.lesson10_durable_events.db.models import Task, TaskStatus
from lessons.lesson10_durable_events.db.queries import Querier
from lessons.lesson10_durable_events.engine.client import enqueue, push_event, wait_for_task
from lessons.lesson10_durable_events.engine.durable import DurableContext
from lessons.lesson10_durable_events.engine.worker import Worker
from tests.conftest import LessonDatabase
from tests.waiting import wait_until

LESSON = "lesson10_durable_events"


def approve_or_cancel(ctx: DurableContext, order: dict[str, Any]) -> Any:
    """Wait for the order's approval or cancellation; attempt 1 fails after the wait."""
    keys = [f"approval:{order['id']}", f"cancel:{order['id']}"]
    key, payload = ctx.wait_for_any_event(keys, timeout=order["timeout"])  # type: ignore[attr-defined, unused-ignore]
    decision = ctx.run_step("decide", lambda step: step, {"key": key, "payload": payload})
    if ctx.attempt == 1:
        raise ConnectionError("attempt 1 fails after the wait")
    return decision


def wait_for_one_event(ctx: DurableContext, order: dict[str, Any]) -> Any:
    return ctx.wait_for_event(f"approval:{order['id']}", timeout=60)


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def get_task(database: LessonDatabase, task_id: int) -> Task:
    with database.pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    assert task is not None, f"task {task_id} vanished"
    return task


def is_suspended(database: LessonDatabase, task_id: int) -> Callable[[], bool]:
    return lambda: get_task(database, task_id).status == TaskStatus.SUSPENDED


def test_the_first_event_of_any_key_ends_the_wait(database: LessonDatabase) -> None:
    if not hasattr(DurableContext, "wait_for_any_event"):
        pytest.fail(
            "lesson 10 has no `DurableContext.wait_for_any_event` yet: "
            "see exercise 2 in its README",
            pytrace=False,
        )
    with database.pool.connection() as conn:
        cancelled = enqueue(conn, "approve_or_cancel", {"id": "A-1", "timeout": 60}, durable=True)
        approved = enqueue(conn, "approve_or_cancel", {"id": "B-1", "timeout": 60}, durable=True)
        timed_out = enqueue(conn, "approve_or_cancel", {"id": "C-1", "timeout": 1}, durable=True)
        single = enqueue(conn, "wait_for_one_event", {"id": "D-1"}, durable=True)
    with Worker(
        database.pool,
        {},
        durable_functions={
            "approve_or_cancel": approve_or_cancel,
            "wait_for_one_event": wait_for_one_event,
        },
        slots=4,
        poll_interval=5.0,
        heartbeat_interval=0.1,
        inactivity_threshold=0.6,
    ):
        # A wait is open once its task's suspension has committed: they are one transaction.
        for task_id in (cancelled, approved, single):
            wait_until(
                is_suspended(database, task_id),
                message=f"task {task_id} never began to wait",
            )
        with database.pool.connection() as conn:
            cancellation = push_event(conn, "cancel:A-1", {"reason": "changed my mind"})
            late_approval = push_event(conn, "approval:A-1", {"approved": True})
            approval = push_event(conn, "approval:B-1", {"approved": True})
            other_key = push_event(conn, "cancel:D-1", {"reason": "not waited for"})
            single_approval = push_event(conn, "approval:D-1", {"approved": True})
        assert cancellation.woke_task_ids == [cancelled]
        assert late_approval.woke_task_ids == [], "a second event ended a wait already ended"
        assert approval.woke_task_ids == [approved]
        assert other_key.woke_task_ids == [], "wait_for_event ended with another key's event"
        assert single_approval.woke_task_ids == [single]
        finished = {
            task_id: wait_for_task(database.pool, task_id, timeout=20)
            for task_id in (cancelled, approved, timed_out, single)
        }
    for task_id, key, payload in (
        (cancelled, "cancel:A-1", {"reason": "changed my mind"}),
        (approved, "approval:B-1", {"approved": True}),
    ):
        task = finished[task_id]
        assert task.status == TaskStatus.COMPLETED and task.attempt == 2, (
            f"task {task_id}: {task.status} on attempt {task.attempt}: {task.output}"
        )
        assert task.output == {"key": key, "payload": payload}, (
            f"task {task_id} got {task.output}, not the first event, {key}"
        )
    task = finished[timed_out]
    assert task.status == TaskStatus.FAILED, f"task {timed_out}: {task.status}: {task.output}"
    assert (task.output or {}).get("error", {}).get("type") == "EventTimeout", task.output
    task = finished[single]
    assert task.status == TaskStatus.COMPLETED, f"task {single}: {task.status}: {task.output}"
    assert task.output == {"approved": True}
