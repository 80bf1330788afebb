"""Issue 21: the claim planned once, on an empty table, still probes by index once the
table has grown (see claim_plans.py), in lesson 12 and in the lessons that carry its
PlanOnce. Without its nested-loops-only settings, lessons 13 to 15 failed it: their
plan joined the chosen tasks to a sequential scan of all of tasks (a hash join; on
PostgreSQL 18, lesson 15's nested loop over a materialized scan of its partitions)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import LessonDatabase
from tests.lesson12.claim_plans import seq_scans_of_tasks_in_a_claim_after_growth


@pytest.mark.parametrize(
    "package",
    [
        "lesson12_flow_control",
        "lesson13_cancellation_and_schedules",
        "lesson14_changing_code_safely",
        "lesson15_operating_at_scale",
    ],
)
def test_a_claim_planned_on_an_empty_table_does_not_scan_the_grown_table(
    package: str, lesson_database: Callable[..., LessonDatabase]
) -> None:
    assert seq_scans_of_tasks_in_a_claim_after_growth(package, lesson_database(package)) == []
