"""Lesson 09, a wait for a child with a timeout: the deadline is recorded once,
like a sleep's wake-up; a child on a queue no worker serves no longer suspends
its parent for ever, the wait raises `ChildTimeout` at the deadline, and the
timeout is recorded, so that the outcome never changes. Without a timeout the
wait has no limit, as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from lessons.lesson09_durable_sleep.db.models import EventKind, Task, TaskEvent, TaskStatus
from lessons.lesson09_durable_sleep.db.queries import Querier
from lessons.lesson09_durable_sleep.engine.client import enqueue, wait_for_task
from lessons.lesson09_durable_sleep.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.lesson09.functions import CHILDREN_QUEUE, UNSERVED_QUEUE

LESSON = "lesson09_durable_sleep"
PARENTS_QUEUE = "q"
# Lesson 08's fallback: the wake-up at the deadline must come from the timer.
POLL_INTERVAL = 5.0


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


@contextmanager
def worker(database: LessonDatabase) -> Iterator[None]:
    """A worker process for the parents' queue and the children's, never UNSERVED_QUEUE."""
    with WorkerProcess(
        schema=database.schema,
        queues=[PARENTS_QUEUE, CHILDREN_QUEUE],
        functions="tests.lesson09.functions",
        slots=2,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=0.1,
        inactivity_threshold=1.0,
    ) as process:
        process.start()
        yield


def run(database: LessonDatabase, name: str, input: object) -> tuple[Task, float]:
    """Enqueue a durable task, run it to its end: the task, and how long it took."""
    with database.pool.connection() as conn:
        task_id = enqueue(conn, name, input, queue=PARENTS_QUEUE, durable=True, max_retries=3)
    started = time.monotonic()
    with worker(database):
        finished = wait_for_task(database.pool, task_id, timeout=30)
    return finished, time.monotonic() - started


def history(database: LessonDatabase, task_id: int) -> list[TaskEvent]:
    with database.pool.connection() as conn:
        return Querier(conn).list_task_events(task_id=task_id)


def get_task(database: LessonDatabase, task_id: int) -> Task:
    with database.pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    assert task is not None
    return task


def test_a_child_no_worker_serves_times_out_at_the_recorded_deadline(
    database: LessonDatabase,
) -> None:
    parent, took = run(
        database, "call_with_a_timeout", {"n": 1, "queue": UNSERVED_QUEUE, "timeout": 1.0}
    )

    assert parent.status == TaskStatus.COMPLETED, parent
    assert parent.output == {"output": "timed out"}
    assert parent.attempt == 1  # a suspension, and a timeout caught, cost no retry
    assert took >= 1.0
    child, wait, after = history(database, parent.id)
    assert (child.kind, wait.kind, after.kind) == (EventKind.CHILD, EventKind.CHILD_WAIT, "step")
    assert wait.input == {"child_task_id": child.child_task_id, "timeout": 1.0}
    # The deadline, computed once when the wait began; and the timeout, recorded.
    assert wait.wake_at is not None
    assert abs((wait.wake_at - wait.recorded_at).total_seconds() - 1.0) < 0.01
    assert wait.output == {"timed_out": True}
    assert get_task(database, child.child_task_id or 0).status == TaskStatus.QUEUED


def test_a_child_that_finishes_before_the_deadline_gives_its_output(
    database: LessonDatabase,
) -> None:
    parent, took = run(
        database, "call_with_a_timeout", {"n": 2, "queue": CHILDREN_QUEUE, "timeout": 60.0}
    )

    assert parent.status == TaskStatus.COMPLETED, parent
    assert parent.output == {"output": {"n": 2}}
    assert took < 30
    [_, wait, _] = history(database, parent.id)
    assert wait.kind == EventKind.CHILD_WAIT and wait.output is None


def test_an_uncaught_child_timeout_fails_the_task_at_once(database: LessonDatabase) -> None:
    parent, _ = run(database, "wait_for_an_unserved_child", {"n": 3, "timeout": 0.5})

    assert parent.status == TaskStatus.FAILED, parent
    assert (parent.output or {})["error"]["type"] == "ChildTimeout", parent.output
    assert parent.attempt == 1, "a ChildTimeout is not retried: a retry replays it"
