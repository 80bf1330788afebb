"""Issue 21: the claim planned once, on an empty table, still probes by index once the
table has grown (see claim_plans.py). Lessons 13 to 15 carry lesson 12's claim and
PlanOnce, with a claim whose estimates differ: their plan scans the whole table."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import LessonDatabase
from tests.lesson12.claim_plans import seq_scans_of_tasks_in_a_claim_after_growth

UNFIXED = pytest.mark.xfail(
    strict=True,
    reason="issue 21: the generic plan made on an empty table joins chosen to a "
    "sequential scan of tasks (hash join): locked_rate_limits' OR ... IN (to_resume) "
    "makes the planner expect 540 rate limits, so 17 chosen rows, not 1",
)


@pytest.mark.parametrize(
    "package",
    [
        "lesson12_flow_control",
        pytest.param("lesson13_cancellation_and_schedules", marks=UNFIXED),
        pytest.param("lesson14_changing_code_safely", marks=UNFIXED),
        pytest.param("lesson15_operating_at_scale", marks=UNFIXED),
    ],
)
def test_a_claim_planned_on_an_empty_table_does_not_scan_the_grown_table(
    package: str, lesson_database: Callable[..., LessonDatabase]
) -> None:
    assert seq_scans_of_tasks_in_a_claim_after_growth(package, lesson_database(package)) == []
