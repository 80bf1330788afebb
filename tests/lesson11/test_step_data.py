"""Lesson 11: a step input that is JSON but has no canonical form is refused before
the step runs (carried from lesson 06), with retries left or not; a step that
changes its input in place is recorded, and replayed, as it was called."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lessons.lesson11_retries_replays_forks.db.models import TaskStatus
from tests.conftest import LessonDatabase
from tests.lesson11.functions import STEP_RUNS
from tests.lesson11.helpers import LESSON, enqueue_durable, history, run_until_finished


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON, max_size=16)


def test_an_input_without_a_canonical_form_is_refused_before_the_step_runs(
    database: LessonDatabase,
) -> None:
    STEP_RUNS["unkeyable"] = 0
    task_id = enqueue_durable(database, "step_with_an_unkeyable_input", None, max_retries=3)
    task = run_until_finished(database, task_id)
    assert (task.status, task.attempt) == (TaskStatus.FAILED, 1), task
    error = (task.output or {}).get("error") or {}
    assert error.get("type") == "InvalidStepData", error
    assert str(error.get("message")).startswith("the input of step s has no canonical JSON form")
    assert STEP_RUNS["unkeyable"] == 0
    assert history(database.pool, task_id) == []


def test_a_step_that_changes_its_input_in_place_replays_without_a_mismatch(
    database: LessonDatabase,
) -> None:
    """The step adds to a list of its input and deletes one of its keys: its event
    holds the input (and the key) of the call as it was made, not what the step left
    of it, so attempt 2, which makes the same call, replays the step."""
    STEP_RUNS["pack_in_place"] = 0
    task_id = enqueue_durable(database, "pack_then_fail_on_attempt_1", None)
    task = run_until_finished(database, task_id)
    assert task.status == TaskStatus.COMPLETED and task.attempt == 2, task
    assert task.output == 3
    assert STEP_RUNS["pack_in_place"] == 1
    [event] = history(database.pool, task_id)
    assert event.input == {"items": ["teapot", "cup"], "note": "fragile"}
