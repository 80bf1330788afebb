"""`ctx.now()`, the time as the history recorded it.

A durable function that reads the clock itself decides from a value that changes on
every attempt. Add `DurableContext.now()`, which returns the time (seconds since the
epoch, a float, like `time.time()`) the first time the function asks, and the same
value on every later attempt. The check runs a function that reads `ctx.now()` twice,
fails its first attempt, and asserts that the retry saw the two times attempt 1 saw.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from lessons.lesson06_non_determinism.db.models import TaskStatus
from lessons.lesson06_non_determinism.engine.client import enqueue, wait_for_task
from lessons.lesson06_non_determinism.engine.durable import DurableContext
from lessons.lesson06_non_determinism.engine.worker import Worker
from tests.conftest import LessonDatabase

LESSON = "lesson06_non_determinism"

# What each attempt of `read_the_clock_twice` saw, by attempt (the worker runs in-process).
SEEN: dict[int, list[float]] = {}


def read_the_clock_twice(ctx: DurableContext, input: Any) -> Any:
    """Read `ctx.now()` twice, with a step between; attempt 1 fails after that."""
    first = ctx.now()  # type: ignore[attr-defined, unused-ignore]
    ctx.run_step("between", lambda value: value, input)
    second = ctx.now()  # type: ignore[attr-defined, unused-ignore]
    SEEN[ctx.attempt] = [first, second]
    if ctx.attempt == 1:
        raise ConnectionError("attempt 1 fails after reading the clock")
    return [first, second]


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def test_a_retry_sees_the_times_the_first_attempt_saw(database: LessonDatabase) -> None:
    if not hasattr(DurableContext, "now"):
        pytest.fail(
            "lesson 06 has no `DurableContext.now` yet: see exercise 1 in its README", pytrace=False
        )
    SEEN.clear()
    before = time.time()
    with database.pool.connection() as conn:
        task_id = enqueue(conn, "read_the_clock_twice", "x", durable=True, max_retries=3)
    with Worker(
        database.pool,
        durable_functions={"read_the_clock_twice": read_the_clock_twice},
        slots=1,
        poll_interval=0.02,
        heartbeat_interval=0.1,
        inactivity_threshold=0.6,
    ):
        task = wait_for_task(database.pool, task_id, timeout=20)
    after = time.time()
    assert task.status == TaskStatus.COMPLETED and task.attempt == 2, (
        f"task {task.id}: {task.status} on attempt {task.attempt}: {task.output}"
    )
    first, second = SEEN[1]
    assert all(isinstance(value, float) for value in (first, second)), SEEN[1]
    assert before <= first <= second <= after, (
        f"ctx.now() should be the time of the call: {SEEN[1]}, the check ran from {before}"
    )
    assert SEEN[2] == SEEN[1], f"attempt 2 saw {SEEN[2]}, attempt 1 saw {SEEN[1]}"
    assert task.output == SEEN[1]
