"""`ctx.sleep_until(when)`, a sleep to a time of day.

"Send the reminder at 09:00" is a time, not a duration, and a duration computed from
the clock in the durable function would change from one run to the next. Add
`DurableContext.sleep_until(when: datetime)` (timezone-aware), which suspends the task
until `when`, recorded once like `sleep`. The check sleeps until two seconds from now
and asserts one sleep event whose wake-up time is `when`, and a function that went on
no sooner than `when`; and that a time already past is no error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from lessons.lesson09_durable_sleep.db.models import EventKind, TaskStatus
from lessons.lesson09_durable_sleep.db.queries import Querier
from lessons.lesson09_durable_sleep.engine.client import enqueue, wait_for_task
from lessons.lesson09_durable_sleep.engine.durable import DurableContext
from lessons.lesson09_durable_sleep.engine.worker import Worker
from tests.conftest import LessonDatabase

LESSON = "lesson09_durable_sleep"
# The worker's clock and the database's are this machine's: they agree closely.
CLOCKS_AGREE_WITHIN = timedelta(seconds=0.5)


# How many times the function below started: once per run (the worker runs in-process).
RUNS = [0]


def sleep_until_the_input(ctx: DurableContext, input: dict[str, str]) -> Any:
    RUNS[0] += 1
    ctx.sleep_until(datetime.fromisoformat(input["until"]))  # type: ignore[attr-defined, unused-ignore]
    return {"went_on_at": time.time()}


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def run_until(database: LessonDatabase, until: datetime) -> int:
    if not hasattr(DurableContext, "sleep_until"):
        pytest.fail(
            "lesson 09 has no `DurableContext.sleep_until` yet: see exercise 1 in its README",
            pytrace=False,
        )
    RUNS[0] = 0
    with database.pool.connection() as conn:
        task_id = enqueue(conn, "sleep_until_the_input", {"until": until.isoformat()}, durable=True)
    with Worker(
        database.pool,
        {},
        durable_functions={"sleep_until_the_input": sleep_until_the_input},
        slots=1,
        # Lesson 08's fallback poll: waking on time must not depend on a poll.
        poll_interval=5.0,
        heartbeat_interval=0.1,
        inactivity_threshold=0.6,
    ):
        task = wait_for_task(database.pool, task_id, timeout=20)
    assert task.status == TaskStatus.COMPLETED, f"task {task.id}: {task.status}: {task.output}"
    return task_id


def test_a_task_sleeps_until_the_time_it_was_given(database: LessonDatabase) -> None:
    until = datetime.now(UTC) + timedelta(seconds=2)
    task_id = run_until(database, until)
    with database.pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
        events = Querier(conn).list_task_events(task_id=task_id)
    assert task is not None and task.output is not None
    assert [event.kind for event in events] == [EventKind.SLEEP], events
    [sleep] = events
    assert sleep.wake_at is not None
    assert abs(sleep.wake_at - until) <= CLOCKS_AGREE_WITHIN, (
        f"the sleep was recorded to wake at {sleep.wake_at}, not at {until}"
    )
    assert task.output["went_on_at"] >= until.timestamp(), "the function went on too soon"
    assert RUNS[0] == 2, f"the function ran {RUNS[0]} times, not twice (suspended, woken)"


def test_a_time_already_past_is_no_error(database: LessonDatabase) -> None:
    """The function reached its sleep late (its worker was busy, or it was replayed):
    it goes on at once, and completes."""
    run_until(database, datetime.now(UTC) - timedelta(hours=1))
