"""Lesson 14's patch markers (`ctx.patched`, `ctx.deprecate_patch`), and the
non-determinism error at run time, with the real server and real worker processes.

A new task records a marker and takes the new path; its worker SIGKILLed right
after the marker, the next attempt finds the marker and takes the new path again,
with one marker in the history. A history written before the patch takes the old
path and records nothing; one that ends before the patch point takes the new path
when it resumes on the new code. `deprecate_patch` skips a marker and records
none. A marker of another patch id is not this patch's: the old path runs into it.
And a replay that makes the same call with another input fails its task with the
diff of the inputs in its error message.

The versions of the durable function are in tests/lesson15_inherited14/functions_patches.py;
every step that runs says so in `executions`, with its task and attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from psycopg_pool import ConnectionPool

from lessons.lesson15_operating_at_scale.db.models import EventKind, TaskStatus
from lessons.lesson15_operating_at_scale.db.queries import Querier
from lessons.lesson15_operating_at_scale.demo.tasks import approval_event_key
from lessons.lesson15_operating_at_scale.engine.client import move_to_version, wait_for_task
from lessons.lesson15_operating_at_scale.engine.determinism_check import check_task
from lessons.lesson15_operating_at_scale.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.lesson15_inherited14.functions_patches import (
    CHARGE_NEW,
    CODE_VARIABLE,
    first_key,
    second_key,
    staged_renamed,
)
from tests.lesson15_inherited14.test_determinism_check import (
    DEMO,
    calls,
    get_task,
    history_of,
    order,
    output_of,
    push,
    shop_database,
    submit,
    wait_suspended_at,
    worker_process,
)
from tests.waiting import wait_until

PATCH_FUNCTIONS = "tests.lesson15_inherited14.functions_patches"


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return shop_database(lesson_database)


def staged_worker(database: LessonDatabase, code: str) -> WorkerProcess:
    """A worker process running version `code` of `staged` (v1, v2, v3, renamed),
    as code version `code`."""
    return worker_process(database, PATCH_FUNCTIONS, code, environment={CODE_VARIABLE: code})


def move(pool: ConnectionPool, from_version: str, to_version: str) -> list[int]:
    with pool.connection() as conn:
        return move_to_version(conn, from_version=from_version, to_version=to_version)


def step_runs(pool: ConnectionPool, task_id: int) -> list[tuple[str, int]]:
    """What ran for the task: each step's event in `executions`, with its attempt."""
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT event, attempt FROM executions WHERE key = %s ORDER BY seq", (task_id,)
        ).fetchall()
    return [(event, attempt) for event, attempt in rows]


def staged_calls(key: str, *middle: tuple[str, str]) -> list[tuple[str, str]]:
    """A `staged` history: the first wait, `middle`, the second wait."""
    return [("wait", first_key(key)), *middle, ("wait", second_key(key))]


OLD_PATH = (("step", "charge_old"),)
NEW_PATH = (("patch", CHARGE_NEW), ("step", "charge_new"))


def test_a_marker_recorded_before_a_sigkill_sends_the_next_attempt_down_the_new_path_once(
    database: LessonDatabase, tmp_path: Path
) -> None:
    """A new task records its marker, then holds in the new path's step; its worker is
    SIGKILLed there. The next attempt, on another worker, replays the marker: it runs
    the new path's step again (attempt 2) and never the old one, and the history holds
    exactly one marker, the first attempt's."""
    pool = database.pool
    gate = tmp_path / "gate"
    with staged_worker(database, "v2") as first, staged_worker(database, "v2") as second:
        first.start()
        task_id = submit(pool, "patch_then_hold", {"gate": str(gate)})
        wait_until(
            lambda: step_runs(pool, task_id) == [("step new_path began", 1)],
            message=lambda: f"{step_runs(pool, task_id)}\n{first.log()}",
        )
        assert calls(history_of(pool, task_id)) == [("patch", "hold-patch")]
        first.kill()
        gate.touch()
        second.start()
        task = wait_for_task(pool, task_id, timeout=30)
        log = second.log()
    assert (task.status, task.output, task.attempt) == (
        TaskStatus.COMPLETED,
        {"path": "new_path"},
        2,
    ), log
    assert task.worker_id == second.id
    history = history_of(pool, task_id)
    assert [(str(e.kind), e.name, e.attempt) for e in history] == [
        ("patch", "hold-patch", 1),
        ("step", "new_path", 2),
    ]
    assert step_runs(pool, task_id) == [("step new_path began", 1), ("step new_path began", 2)]


def test_a_history_written_before_the_patch_takes_the_old_path_and_one_ending_before_it_the_new(
    database: LessonDatabase,
) -> None:
    """Version 1 charges X (old charge) and leaves Y waiting before its charge. Moved
    to version 2 (the new charge behind a patch): X replays the old path, and its
    history is exactly what version 1 wrote, no marker; Y reaches the patch point
    with no history there, records the marker and takes the new path; so does Z,
    new on version 2. Each charge step ran once."""
    pool = database.pool
    with staged_worker(database, "v1") as v1, staged_worker(database, "v2") as v2:
        v1.start()
        charged_id = submit(pool, "staged", {"key": "X"})
        waiting_id = submit(pool, "staged", {"key": "Y"})
        wait_suspended_at(pool, [charged_id, waiting_id], events=1)
        push(pool, first_key("X"), {})
        wait_suspended_at(pool, [charged_id], events=3)
        assert v1.stop() == 0, v1.log()
        written_by_v1 = history_of(pool, charged_id)

        assert move(pool, "v1", "v2") == [charged_id, waiting_id]
        v2.start()
        new_id = submit(pool, "staged", {"key": "Z"})
        wait_suspended_at(pool, [new_id], events=1)
        push(pool, first_key("Y"), {})
        push(pool, first_key("Z"), {})
        wait_suspended_at(pool, [waiting_id, new_id], events=4)
        for key in "XYZ":
            push(pool, second_key(key), {})
        done = {
            task_id: wait_for_task(pool, task_id) for task_id in (charged_id, waiting_id, new_id)
        }
        log = v2.log()

    assert {task.status for task in done.values()} == {TaskStatus.COMPLETED}, log
    assert {task.worker_id for task in done.values()} == {v2.id}
    assert done[charged_id].output == {"charged_by": "charge_old"}
    assert history_of(pool, charged_id) == written_by_v1, "the old path recorded nothing"
    assert calls(written_by_v1) == staged_calls("X", *OLD_PATH)
    assert step_runs(pool, charged_id) == [("step charge_old", 1)]
    for task_id, key in ((waiting_id, "Y"), (new_id, "Z")):
        assert done[task_id].output == {"charged_by": "charge_new"}
        assert calls(history_of(pool, task_id)) == staged_calls(key, *NEW_PATH)
        assert step_runs(pool, task_id) == [("step charge_new", 1)]


def test_deprecate_patch_skips_a_histories_marker_and_records_none_for_a_new_task(
    database: LessonDatabase,
) -> None:
    """M took the new path on version 2 (its marker at event 2). Moved to version 3,
    where `deprecate_patch` stands in for the `if`, M replays past its marker and
    completes with its history unchanged, the charge step run once; N, new on
    version 3, records no marker."""
    pool = database.pool
    with staged_worker(database, "v2") as v2, staged_worker(database, "v3") as v3:
        v2.start()
        marked_id = submit(pool, "staged", {"key": "M"})
        wait_suspended_at(pool, [marked_id], events=1)
        push(pool, first_key("M"), {})
        wait_suspended_at(pool, [marked_id], events=4)
        assert v2.stop() == 0, v2.log()
        written_by_v2 = history_of(pool, marked_id)

        assert move(pool, "v2", "v3") == [marked_id]
        v3.start()
        new_id = submit(pool, "staged", {"key": "N"})
        wait_suspended_at(pool, [new_id], events=1)
        push(pool, first_key("N"), {})
        wait_suspended_at(pool, [new_id], events=3)
        push(pool, second_key("M"), {})
        push(pool, second_key("N"), {})
        marked = wait_for_task(pool, marked_id)
        new = wait_for_task(pool, new_id)
        log = v3.log()

    assert (marked.status, marked.output) == (TaskStatus.COMPLETED, {"charged_by": "charge_new"})
    assert (new.status, new.output) == (TaskStatus.COMPLETED, {"charged_by": "charge_new"}), log
    assert calls(written_by_v2) == staged_calls("M", *NEW_PATH)
    assert history_of(pool, marked_id) == written_by_v2, "the marker skipped, nothing recorded"
    assert step_runs(pool, marked_id) == [("step charge_new", 1)]
    assert calls(history_of(pool, new_id)) == staged_calls("N", ("step", "charge_new"))
    assert step_runs(pool, new_id) == [("step charge_new", 1)]


def test_a_marker_of_another_patch_id_is_not_this_patchs_and_the_old_path_breaks_on_it(
    database: LessonDatabase,
) -> None:
    """R holds the marker of `charge-new` at event 2. Code that asks for
    `charge-new-renamed` there is told False (the check reports that old path
    taken) and its old path's charge meets the marker: at run time the task fails
    with a NonDeterminismError at event 2, runs no charge, and records nothing, no
    marker of the new id either."""
    pool = database.pool
    with staged_worker(database, "v2") as v2, staged_worker(database, "renamed") as renamed:
        v2.start()
        task_id = submit(pool, "staged", {"key": "R"})
        wait_suspended_at(pool, [task_id], events=1)
        push(pool, first_key("R"), {})
        wait_suspended_at(pool, [task_id], events=4)
        assert v2.stop() == 0, v2.log()
        written_by_v2 = history_of(pool, task_id)

        checked = check_task(pool, {"staged": staged_renamed}, get_task(pool, task_id))
        mismatch = (
            "event 2 does not match the history: recorded patch charge-new({}), "
            'new call step charge_old({"path":"charge_old"})'
        )
        assert (checked.breaks, checked.detail) == (True, mismatch)
        assert checked.old_paths_taken == frozenset({"charge-new-renamed"})

        move(pool, "v2", "renamed")
        renamed.start()
        push(pool, second_key("R"), {})
        task = wait_for_task(pool, task_id)
        log = renamed.log()

    assert task.status == TaskStatus.FAILED, log
    assert task.output == {"error": {"type": "NonDeterminismError", "message": mismatch}}
    assert history_of(pool, task_id) == written_by_v2
    assert step_runs(pool, task_id) == [("step charge_new", 1)], "no charge ran on renamed"


def test_a_replay_that_makes_the_same_call_with_another_input_fails_the_task_with_the_changed_key(
    database: LessonDatabase,
) -> None:
    """An order charged by version 1 (no currency) waits for its approval; moved,
    unchecked, to the unsafe fix and approved, its replay makes the charge with a
    currency. The worker fails the task at once (no retry, though it has three), and
    its error message names the event, both calls, and `currency: added "EUR"`; the
    history is as version 1 left it, one charge, no email."""
    pool = database.pool
    with (
        worker_process(database, f"{DEMO}.tasks", "v1") as v1,
        worker_process(database, f"{DEMO}.tasks_v2_unsafe", "v2") as v2,
    ):
        v1.start()
        task_id = submit(pool, "process_order", order("A-1"), max_retries=3)
        wait_suspended_at(pool, [task_id], events=2)
        assert v1.stop() == 0, v1.log()
        written_by_v1 = history_of(pool, task_id)

        move(pool, "v1", "v2")
        v2.start()
        push(pool, approval_event_key("A-1"), {"approved_by": "ops"})
        task = wait_for_task(pool, task_id)
        log = v2.log()

    assert (task.status, task.attempt, task.worker_id) == (TaskStatus.FAILED, 1, v2.id), log
    error = output_of(task)["error"]
    assert error["type"] == "NonDeterminismError"
    assert error["message"].splitlines() == [
        'event 1 does not match the history: recorded child charge_payment({"amount_cents":4900,'
        '"order_id":"A-1"}), new call child charge_payment({"amount_cents":4900,'
        '"currency":"EUR","order_id":"A-1"})',
        "  the same call with another input:",
        '    currency: added "EUR"',
    ]
    assert history_of(pool, task_id) == written_by_v1
    assert [str(event.kind) for event in written_by_v1] == [EventKind.CHILD, EventKind.WAIT]
    with pool.connection() as conn:
        queries = Querier(conn)
        assert [(c.order_id, c.currency) for c in queries.list_charges()] == [("A-1", "USD")]
        assert queries.list_emails() == []
