"""Cut a sleep short.

An operator wants a reminder flow that sleeps for an hour to go on now. Add
`client.end_sleep(conn, task_id) -> bool`: it ends the sleep a suspended task is in,
as if its wake-up time had come, and says whether it ended one. The task's `wake_at`
alone is not enough: a replay believes the history. The check puts a task to sleep
for an hour, ends its sleep, and asserts that the task goes on at once and completes,
with a history whose sleep ended early, and that a finished task has no sleep to end.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from lessons.lesson09_durable_sleep.db.models import EventKind, Task, TaskStatus
from lessons.lesson09_durable_sleep.db.queries import Querier
from lessons.lesson09_durable_sleep.engine import client
from lessons.lesson09_durable_sleep.engine.durable import DurableContext
from lessons.lesson09_durable_sleep.engine.worker import Worker
from tests.conftest import LessonDatabase
from tests.waiting import wait_until

LESSON = "lesson09_durable_sleep"
AN_HOUR = 3600.0

# How many times the function below started: once per run (the worker runs in-process).
RUNS = [0]


def remind_twice(ctx: DurableContext, input: Any) -> Any:
    RUNS[0] += 1
    first = ctx.run_step("first reminder", lambda step: step, {"reminder": 1})
    ctx.sleep(AN_HOUR)
    second = ctx.run_step("second reminder", lambda step: step, {"reminder": 2})
    return [first, second]


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def get_task(database: LessonDatabase, task_id: int) -> Task:
    with database.pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    assert task is not None, f"task {task_id} vanished"
    return task


def test_a_sleep_that_was_ended_is_over(database: LessonDatabase) -> None:
    end_sleep: Callable[..., bool] | None = getattr(client, "end_sleep", None)
    if end_sleep is None:
        pytest.fail(
            "lesson 09 has no `client.end_sleep` yet: see exercise 2 in its README", pytrace=False
        )
    RUNS[0] = 0
    with database.pool.connection() as conn:
        task_id = client.enqueue(conn, "remind_twice", None, durable=True)
    with Worker(
        database.pool,
        {},
        durable_functions={"remind_twice": remind_twice},
        slots=1,
        # Lesson 08's fallback poll: going on must not wait for a poll.
        poll_interval=5.0,
        heartbeat_interval=0.1,
        inactivity_threshold=0.6,
    ):
        wait_until(
            lambda: get_task(database, task_id).status == TaskStatus.SUSPENDED,
            message="the task never went to sleep",
        )
        with database.pool.connection() as conn:
            assert end_sleep(conn, task_id) is True, "end_sleep says it ended no sleep"

        def finished_or_asleep_again() -> Task | None:
            task = get_task(database, task_id)
            if task.status in (TaskStatus.COMPLETED, TaskStatus.FAILED):
                return task
            if task.status == TaskStatus.SUSPENDED and RUNS[0] >= 2:
                pytest.fail(
                    f"the task ran again, and went back to sleep until {task.wake_at}: "
                    "its replay still finds the sleep's old wake-up time in the history",
                    pytrace=False,
                )
            return None

        task = wait_until(finished_or_asleep_again, message="the task never went on")
    assert task.status == TaskStatus.COMPLETED and task.attempt == 1, (
        f"task {task.id}: {task.status} on attempt {task.attempt}: {task.output}"
    )
    assert task.output == [{"reminder": 1}, {"reminder": 2}]
    assert RUNS[0] == 2, f"the function ran {RUNS[0]} times, not twice (asleep, woken)"
    with database.pool.connection() as conn:
        events = Querier(conn).list_task_events(task_id=task_id)
        assert end_sleep(conn, task_id) is False, "end_sleep ended a sleep of a finished task"
    [sleep] = [event for event in events if event.kind == EventKind.SLEEP]
    assert sleep.wake_at is not None
    assert sleep.wake_at - sleep.recorded_at < timedelta(minutes=1), (
        f"the history says the sleep, recorded at {sleep.recorded_at}, ends at "
        f"{sleep.wake_at}: not ended early"
    )
