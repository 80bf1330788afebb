"""A budget of model calls: `budget={"turns": ..., "tokens": ..., "model_calls": N}`.

The budget counts turns and tokens; a model API also counts (and may bill)
requests, refused ones included. Let the budget hold `model_calls`, and end
the run `budget spent` once that many model calls have been made, whether the
last one was answered or refused (429): a run never asks the model past its
budget, not even again after a backoff. The check runs the research agent on
a worker process, its emails approved, with a budget of 3 model calls (it
ends after turn 3, 3 calls billed) and of 4 (the fourth request is the
provider's 429: the run ends there, after turn 3, 4 calls billed, without
asking again); and with no `model_calls` in the budget, as before (it
answers, 6 calls billed).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from exercises import expect
from tests.conftest import LessonDatabase
from tests.lesson16.conversations import run_conversation

LESSON = "lesson16_durable_ai_agent"


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


@pytest.mark.parametrize(("limit", "turns"), [(3, 3), (4, 3)])
def test_the_run_stops_at_its_budget_of_model_calls(
    database: LessonDatabase, tmp_path: Path, limit: int, turns: int
) -> None:
    budget = {"turns": 8, "tokens": 20_000, "model_calls": limit}
    run = run_conversation(database.pool, database.schema, tmp_path, budget=budget)
    output = run.output
    expect(
        output["status"] == "budget spent",
        f"with a budget of {limit} model calls, lesson 16's agent ended {output['status']!r} "
        f"after {len(run.bill)} model calls, not 'budget spent' after {limit}: see exercise 1 "
        "in its README",
    )
    assert len(run.bill) == output["model_calls"] == limit, run.bill
    assert output["turns"] == turns
    assert run.recorded_model_calls == limit


def test_a_budget_without_model_calls_is_as_before(
    database: LessonDatabase, tmp_path: Path
) -> None:
    run = run_conversation(
        database.pool, database.schema, tmp_path, budget={"turns": 8, "tokens": 20_000}
    )
    assert run.output["status"] == "answered"
    assert len(run.bill) == 6
