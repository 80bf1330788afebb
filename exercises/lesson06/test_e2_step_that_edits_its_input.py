"""Lesson 06, exercise 2: a step that edits its input is not a change of code.

A step that adds a field to the dict it was given (or pops one) makes the engine
record the edited input, and its key, so the retry's unchanged call looks like
another call: a false `NonDeterminismError`. Make the history record the call as the
function made it. The check runs such a step, fails attempt 1 after it, and asserts
that attempt 2 completes without running the step again, and that the recorded
input is the one the function passed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from lessons.lesson06_non_determinism.db.models import TaskStatus
from lessons.lesson06_non_determinism.db.queries import Querier
from lessons.lesson06_non_determinism.engine.client import enqueue, wait_for_task
from lessons.lesson06_non_determinism.engine.durable import DurableContext
from lessons.lesson06_non_determinism.engine.worker import Worker
from tests.conftest import LessonDatabase

LESSON = "lesson06_non_determinism"
ORDER = {"order_id": "A-1", "address": "1 Harbour Street"}

# How many times `print_label` ran (the worker runs in-process).
LABELS_PRINTED = [0]


def print_label(input: dict[str, Any]) -> dict[str, Any]:
    """A step that tidies its input in place before using it."""
    LABELS_PRINTED[0] += 1
    input["address"] = input["address"].upper()
    input.setdefault("paper", "A6")
    return {"label": f"{input['order_id']}: {input['address']}"}


def ship(ctx: DurableContext, order: dict[str, Any]) -> Any:
    label = ctx.run_step("print_label", print_label, dict(order))
    if ctx.attempt == 1:
        raise ConnectionError("attempt 1 fails after printing the label")
    return label


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def test_a_retry_replays_a_step_that_edited_its_input(database: LessonDatabase) -> None:
    LABELS_PRINTED[0] = 0
    with database.pool.connection() as conn:
        task_id = enqueue(conn, "ship", ORDER, durable=True, max_retries=3)
    with Worker(
        database.pool,
        durable_functions={"ship": ship},
        slots=1,
        poll_interval=0.02,
        heartbeat_interval=0.1,
        inactivity_threshold=0.6,
    ):
        task = wait_for_task(database.pool, task_id, timeout=20)
    assert task.status == TaskStatus.COMPLETED and task.attempt == 2, (
        f"task {task.id}: {task.status} on attempt {task.attempt}: {task.output}"
    )
    assert task.output == {"label": "A-1: 1 HARBOUR STREET"}
    assert LABELS_PRINTED[0] == 1, f"the step ran {LABELS_PRINTED[0]} times, not once"
    with database.pool.connection() as conn:
        [event] = Querier(conn).list_task_events(task_id=task_id)
    assert event.input == ORDER, f"the history recorded the input {event.input}, not the call's"
