"""A step retried in place.

When a step fails, the whole attempt fails, and the next attempt replays the history
from event 1 and waits in the queue. A flaky call deserves a quicker, smaller retry:
`ctx.run_step(name, function, input, retries=N)` runs the step's function again, in
the same attempt, up to N more times (pausing a little longer each time) before its
exception goes on through the durable function; a `NonRetryableError` is never
retried. The check runs a step that fails twice and then works, with `retries=2`, in
a task that has no retries of its own: the task completes on attempt 1, the step's
function ran three times and left one event. A step that raises a
`NonRetryableError`, with `retries=5`, runs once.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable
from typing import Any

from exercises import expect
from lessons.lesson05_durable_event_log.db.models import TaskStatus
from lessons.lesson05_durable_event_log.db.queries import Querier
from lessons.lesson05_durable_event_log.engine.client import enqueue, wait_for_task
from lessons.lesson05_durable_event_log.engine.durable import DurableContext
from lessons.lesson05_durable_event_log.engine.shared import NonRetryableError
from lessons.lesson05_durable_event_log.engine.worker import Worker
from tests.conftest import LessonDatabase

LESSON = "lesson05_durable_event_log"

# How many times each step function ran, by task id (the worker runs in this process).
CALLS: Counter[tuple[str, int]] = Counter()


class CardDeclined(NonRetryableError):
    pass


def fails_twice(input: dict[str, Any]) -> dict[str, Any]:
    CALLS["fails_twice", input["task"]] += 1
    if CALLS["fails_twice", input["task"]] <= 2:
        raise ConnectionError("the service is unavailable")
    return {"worked_on_call": CALLS["fails_twice", input["task"]]}


def declined(input: dict[str, Any]) -> dict[str, Any]:
    CALLS["declined", input["task"]] += 1
    raise CardDeclined("card 4000-0000-0000-0002 was declined")


def with_step_retries(ctx: DurableContext, input: dict[str, Any]) -> Any:
    # Untyped: the shipped run_step has no retries, a solved one has.
    run_step: Callable[..., Any] = ctx.run_step
    step = fails_twice if input["step"] == "fails_twice" else declined
    return run_step(input["step"], step, {"task": ctx.task_id}, retries=input["retries"])


def test_a_step_is_retried_within_its_attempt(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    expect(
        "retries" in inspect.signature(DurableContext.run_step).parameters,
        "lesson05's DurableContext.run_step has no `retries` parameter yet: see exercise 2 "
        "in its README",
    )
    database = lesson_database(LESSON)
    with database.pool.connection() as conn:
        flaky = enqueue(
            conn,
            "with_step_retries",
            {"step": "fails_twice", "retries": 2},
            durable=True,
            max_retries=0,
        )
        hopeless = enqueue(
            conn,
            "with_step_retries",
            {"step": "declined", "retries": 5},
            durable=True,
            max_retries=0,
        )
    functions = {"with_step_retries": with_step_retries}
    with Worker(database.pool, durable_functions=functions, poll_interval=0.02):
        flaky_task = wait_for_task(database.pool, flaky, timeout=30)
        hopeless_task = wait_for_task(database.pool, hopeless, timeout=30)
    with database.pool.connection() as conn:
        events = Querier(conn).list_task_events(task_id=flaky)
    expect(
        flaky_task.status == TaskStatus.COMPLETED and flaky_task.attempt == 1,
        f"the task whose step failed twice, with retries=2, should complete on attempt 1; "
        f"it is {flaky_task.status} after attempt {flaky_task.attempt}: {flaky_task.output}",
    )
    expect(
        CALLS["fails_twice", flaky] == 3,
        f"the flaky step's function ran {CALLS['fails_twice', flaky]} times, not 3",
    )
    expect(
        [event.name for event in events] == ["fails_twice"],
        f"the flaky step should leave one event: {[event.name for event in events]}",
    )
    expect(
        hopeless_task.status == TaskStatus.FAILED and CALLS["declined", hopeless] == 1,
        f"a step that raised a NonRetryableError should run once and fail the task; it ran "
        f"{CALLS['declined', hopeless]} times and the task is {hopeless_task.status}",
    )
