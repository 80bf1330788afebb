"""One number, one key.

`{"parcels": 3}` and `{"parcels": 3.0}` are the same call for Python (3 == 3.0) and
for jsonb, but not for the key: a deploy that computes a number with `/` instead of
`//` fails every task in flight with a `NonDeterminismError`. Make a float with a
whole value (3.0) give the key its int (3) gives, without changing the key of any
input that holds no such float. The check retries a step called with 3 as 3.0
(it must replay), with 3.5 (it must not), and compares the keys of inputs without
whole floats with the keys lesson 06 ships.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest

from lessons.lesson06_non_determinism.db.models import EventKind, Task, TaskStatus
from lessons.lesson06_non_determinism.engine.client import enqueue, wait_for_task
from lessons.lesson06_non_determinism.engine.durable import DurableContext, event_key
from lessons.lesson06_non_determinism.engine.worker import Worker
from tests.conftest import LessonDatabase

LESSON = "lesson06_non_determinism"

# The step's input on attempt 1 (as the old code wrote it), by the input the task got:
# attempt 2 (the new code) calls it with the input itself.
FIRST_CALLS = {
    "whole floats": {"parcels": 3, "sizes": [1, 2.5], "box": {"kg": 12}},
    "another number": {"parcels": 3, "sizes": [1, 2.5], "box": {"kg": 12}},
}
SECOND_CALLS = {
    "whole floats": {"parcels": 3.0, "sizes": [1.0, 2.5], "box": {"kg": 12.0}},
    "another number": {"parcels": 3.5, "sizes": [1, 2.5], "box": {"kg": 12}},
}

# How many times `weigh` ran (the worker runs in-process).
WEIGHED = [0]

# Inputs with no float of a whole value: their keys must stay as lesson 06 ships them,
# or the histories already recorded would no longer match the code that wrote them.
UNCHANGED_INPUTS: list[Any] = [
    None,
    True,
    {"flag": True, "off": False, "count": 1, "none": None},
    {"order_id": "A-1", "address": "1 Harbour Street", "items": [{"sku": "X", "n": 2}]},
    {"amount": 2.5, "rate": 0.1, "tiny": 1e-7, "huge": 10**30, "negative": -4},
    {"name": "Zoë", "city": "Москва", "emoji": "📦", "quote": '"', "back": "\\"},
    [1, "1", [True, 1, 1.5], {}],
    "",
]


def weigh(input: dict[str, Any]) -> dict[str, Any]:
    WEIGHED[0] += 1
    return {"weighed": input["parcels"]}


def pack(ctx: DurableContext, case: str) -> Any:
    """Attempt 1 calls `weigh` as the old code did, and fails; attempt 2 as the new code."""
    calls = FIRST_CALLS if ctx.attempt == 1 else SECOND_CALLS
    weight = ctx.run_step("weigh", weigh, calls[case])
    if ctx.attempt == 1:
        raise ConnectionError("attempt 1 fails after weighing")
    return weight


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def run_pack(database: LessonDatabase, case: str) -> Task:
    WEIGHED[0] = 0
    with database.pool.connection() as conn:
        task_id = enqueue(conn, "pack", case, durable=True, max_retries=3)
    with Worker(
        database.pool,
        durable_functions={"pack": pack},
        slots=1,
        poll_interval=0.02,
        heartbeat_interval=0.1,
        inactivity_threshold=0.6,
    ):
        return wait_for_task(database.pool, task_id, timeout=20)


def test_a_whole_float_is_the_same_call_as_its_int(database: LessonDatabase) -> None:
    task = run_pack(database, "whole floats")
    if task.status == TaskStatus.FAILED:
        pytest.fail(
            f"the retry that called weigh with 3.0 where attempt 1 had 3 failed: "
            f"{(task.output or {}).get('error')}: see exercise 2 in lesson 06's README",
            pytrace=False,
        )
    assert task.status == TaskStatus.COMPLETED and task.attempt == 2, (
        f"task {task.id}: {task.status} on attempt {task.attempt}: {task.output}"
    )
    assert task.output == {"weighed": 3}
    assert WEIGHED[0] == 1, f"the step ran {WEIGHED[0]} times, not once: it was not replayed"


def test_another_number_is_another_call(database: LessonDatabase) -> None:
    task = run_pack(database, "another number")
    assert task.status == TaskStatus.FAILED, (
        f"task {task.id}: {task.status} on attempt {task.attempt}: 3.5 replayed the call with 3"
    )
    error = (task.output or {}).get("error", {})
    assert error.get("type") == "NonDeterminismError", task.output


@pytest.mark.parametrize("input", UNCHANGED_INPUTS)
def test_keys_without_whole_floats_are_unchanged(input: Any) -> None:
    call = json.dumps(
        ["step", "weigh", input], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    shipped = hashlib.sha256(call.encode()).hexdigest()
    assert event_key(EventKind.STEP, "weigh", input) == shipped, (
        f"the key of {input!r} changed: histories recorded before would no longer replay"
    )
