"""Lesson 06: a retry that makes another call than its history recorded (another
step name, another input, another order, fewer calls) fails at once, with the
documented message; an unchanged function is never flagged, wherever it replays.

The message format under test (lesson 06's README):

    event <n> does not match the history: recorded <call>, new call <call>

where a call is `<kind> <name>(<canonical JSON of its input>)`, or `none (the
function returned)`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from lessons.lesson06_non_determinism.db.models import Task, TaskEvent, TaskStatus
from lessons.lesson06_non_determinism.db.queries import Querier
from lessons.lesson06_non_determinism.engine.client import enqueue, wait_for_task
from lessons.lesson06_non_determinism.engine.worker import Worker
from lessons.lesson06_non_determinism.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.lesson06.functions import DURABLE_FUNCTIONS, STEP_RUNS
from tests.waiting import wait_until

LESSON = "lesson06_non_determinism"
POLL_INTERVAL = 0.02
HEARTBEAT_INTERVAL = 0.1
INACTIVITY_THRESHOLD = 0.6


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def local_worker(database: LessonDatabase) -> Worker:
    return Worker(
        database.pool,
        durable_functions=DURABLE_FUNCTIONS,
        slots=4,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
    )


def run(database: LessonDatabase, task_name: str, input: Any, *, max_retries: int = 3) -> Task:
    """Enqueue a durable task, run it to the end with a worker in this process."""
    with database.pool.connection() as conn:
        task_id = enqueue(conn, task_name, input, durable=True, max_retries=max_retries)
    with local_worker(database):
        return wait_for_task(database.pool, task_id)


def history(pool: ConnectionPool, task_id: int) -> list[TaskEvent]:
    with pool.connection() as conn:
        return Querier(conn).list_task_events(task_id=task_id)


def error_of(task: Task) -> tuple[str, str]:
    error = (task.output or {}).get("error") or {}
    return error.get("type", ""), error.get("message", "")


def across_a_deploy(old: list[list[Any]], new: list[list[Any]]) -> dict[str, Any]:
    """The input of `scripted`: attempt 1 makes the `old` calls and fails, later
    attempts make the `new` ones."""
    return {"calls": {"1": old, "2": new}, "fail_on_attempts": [1]}


OLD_CODE = [
    ["reserve", {"order": "A-1", "sku": "teapot"}],
    ["charge", {"order": "A-1", "cents": 4200}],
]


@pytest.mark.parametrize(
    ("what_changed", "new_code", "message"),
    [
        (
            "a step's name",
            [OLD_CODE[0], ["charge_card", {"order": "A-1", "cents": 4200}]],
            "event 2 does not match the history: "
            'recorded step charge({"cents":4200,"order":"A-1"}),'
            ' new call step charge_card({"cents":4200,"order":"A-1"})',
        ),
        (
            "a step's input",
            [OLD_CODE[0], ["charge", {"order": "A-1", "cents": 4300}]],
            "event 2 does not match the history: "
            'recorded step charge({"cents":4200,"order":"A-1"}),'
            ' new call step charge({"cents":4300,"order":"A-1"})',
        ),
        (
            "the order of the calls",
            [OLD_CODE[1], OLD_CODE[0]],
            "event 1 does not match the history: "
            'recorded step reserve({"order":"A-1","sku":"teapot"}),'
            ' new call step charge({"cents":4200,"order":"A-1"})',
        ),
        (
            "a call removed",
            [OLD_CODE[0]],
            "event 2 does not match the history: "
            'recorded step charge({"cents":4200,"order":"A-1"}),'
            " new call none (the function returned)",
        ),
        (
            "a unicode input",
            [OLD_CODE[0], ["charge", {"order": "A-1", "cents": 4200, "note": "Zoë 🫖"}]],
            "event 2 does not match the history: "
            'recorded step charge({"cents":4200,"order":"A-1"}),'
            ' new call step charge({"cents":4200,"note":"Zoë 🫖","order":"A-1"})',
        ),
    ],
)
def test_a_changed_call_fails_the_task_at_once_with_the_documented_message(
    database: LessonDatabase, what_changed: str, new_code: list[list[Any]], message: str
) -> None:
    task = run(database, "scripted", across_a_deploy(OLD_CODE, new_code), max_retries=5)
    assert task.status == TaskStatus.FAILED, task
    assert task.attempt == 2, f"retried after a non-determinism error ({what_changed})"
    assert error_of(task) == ("NonDeterminismError", message)
    assert [e.name for e in history(database.pool, task.id)] == ["reserve", "charge"]


def test_calls_added_after_the_end_of_the_history_are_new_work_not_a_mismatch(
    database: LessonDatabase,
) -> None:
    """A history is a prefix of what the function does: an attempt that goes further
    than the last one records the rest."""
    new_code = [*OLD_CODE, ["ship", {"order": "A-1"}]]
    task = run(database, "scripted", across_a_deploy(OLD_CODE, new_code))
    assert task.status == TaskStatus.COMPLETED and task.attempt == 2, task
    assert [(e.name, e.attempt) for e in history(database.pool, task.id)] == [
        ("reserve", 1),
        ("charge", 1),
        ("ship", 2),
    ]


def test_an_unchanged_function_is_never_flagged_whatever_order_its_inputs_were_built_in(
    database: LessonDatabase,
) -> None:
    """Keys in another insertion order, a tuple for a list, unicode, a float, an
    integer beyond 64 bits, None: equal as JSON, so the same key; three attempts."""
    task = run(database, "equal_inputs_built_differently", None)
    assert task.status == TaskStatus.COMPLETED and task.attempt == 3, task
    assert [(e.name, e.attempt) for e in history(database.pool, task.id)] == [
        ("order", 1),
        ("amounts", 1),
        ("nothing", 1),
        ("ünïcode name", 1),
    ]


def test_a_step_that_changes_its_input_in_place_replays_without_a_mismatch(
    database: LessonDatabase,
) -> None:
    """The step adds to a list of its input and deletes one of its keys: its event
    holds the input (and the key) of the call as it was made, not what the step left
    of it, so attempt 2, which makes the same call, replays the step."""
    STEP_RUNS["pack_in_place"] = 0
    task = run(database, "pack_then_fail_on_attempt_1", None)
    assert task.status == TaskStatus.COMPLETED and task.attempt == 2, task
    assert task.output == 3
    assert STEP_RUNS["pack_in_place"] == 1
    [event] = history(database.pool, task.id)
    assert event.input == {"items": ["teapot", "cup"], "note": "fragile"}


def test_the_key_is_the_sha256_of_the_canonical_json_of_kind_name_and_input(
    database: LessonDatabase,
) -> None:
    """Computed here from the README's definition, not with the engine's function."""
    step_input = {"sku": "teapot", "note": "Zoë 🫖", "cents": 4200}
    task = run(database, "scripted", {"calls": {"1": [["reserve", step_input]]}})
    [event] = history(database.pool, task.id)
    canonical = json.dumps(
        ["step", "reserve", step_input], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    assert canonical == '["step","reserve",{"cents":4200,"note":"Zoë 🫖","sku":"teapot"}]'
    assert event.key == hashlib.sha256(canonical.encode()).hexdigest()


def test_an_input_without_a_canonical_form_is_refused_before_the_step_runs(
    database: LessonDatabase,
) -> None:
    """`{1: "a", "b": 2}` is JSON, but its keys cannot be sorted, so it has no key: the
    step must be refused before it runs, not after, on every one of its attempts."""
    STEP_RUNS["count_run"] = 0
    task = run(database, "step_with_an_unkeyable_input", None, max_retries=3)
    assert task.status == TaskStatus.FAILED and task.attempt == 1, task
    kind, message = error_of(task)
    assert kind == "InvalidStepData", message
    assert message.startswith("the input of step s has no canonical JSON form"), message
    assert STEP_RUNS["count_run"] == 0
    assert history(database.pool, task.id) == []


def test_a_function_that_catches_the_error_still_fails(database: LessonDatabase) -> None:
    task = run(database, "swallow_the_mismatch", None)
    assert task.status == TaskStatus.FAILED and task.attempt == 2, task
    assert error_of(task) == (
        "NonDeterminismError",
        "event 1 does not match the history: recorded step a(1), new call step b(1)",
    )


def test_an_unchanged_function_replayed_in_another_process_is_not_flagged(
    database: LessonDatabase, tmp_path: Path
) -> None:
    """SIGKILL the worker process in step two; another process, with its own string
    hashing (so its own set order), replays step one and finishes."""

    def worker_process() -> WorkerProcess:
        return WorkerProcess(
            schema=database.schema,
            functions="tests.lesson06.functions",
            poll_interval=POLL_INTERVAL,
            heartbeat_interval=HEARTBEAT_INTERVAL,
            inactivity_threshold=INACTIVITY_THRESHOLD,
        )

    pool = database.pool
    with worker_process() as first, worker_process() as second:
        first.start()
        with pool.connection() as conn:
            task_id = enqueue(
                conn,
                "two_steps_stalling_on_attempt_1",
                {"gate": str(tmp_path / "never")},
                durable=True,
            )
        wait_until(lambda: history(pool, task_id), message="step one was not recorded")
        first.kill()
        second.start()
        task = wait_for_task(pool, task_id, timeout=30)
    assert task.status == TaskStatus.COMPLETED and task.attempt == 2, task
    assert [(e.name, e.attempt) for e in history(pool, task_id)] == [("one", 1), ("two", 2)]
