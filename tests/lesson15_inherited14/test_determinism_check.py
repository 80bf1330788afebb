"""Lesson 14's determinism check (`history_tool check`, engine/determinism_check.py), with
the real server and real worker processes.

The deploy story of the lesson, end to end: twenty orders that a version 1 worker
charged (in USD) wait for their approval; the check of the fix as first written
lists all twenty as broken at event 1, with both calls and the key that changed,
and exits 1; the check of the fix behind a patch marker passes; moved to version 2,
the twenty complete on the old path (no marker, USD) while new orders take the new
one (a marker, EUR).

The check only reads: replayed against new code that would run a step, spawn a
child, sleep, wait or record a patch marker at the end of the history, or make a
new call in the middle of it, it runs nothing, writes nothing, and leaves the
task's row as it was (the same code, run by a worker, does write: the test can
tell). And its options: `--version`, `--ran-since`, `--all`, an unknown module, a
task whose function the new code lacks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from lessons.lesson15_operating_at_scale.db.models import EventKind, Task, TaskEvent, TaskStatus
from lessons.lesson15_operating_at_scale.db.queries import Querier
from lessons.lesson15_operating_at_scale.demo.tasks import approval_event_key
from lessons.lesson15_operating_at_scale.engine.client import (
    enqueue,
    move_to_version,
    push_event,
    wait_for_task,
)
from lessons.lesson15_operating_at_scale.engine.determinism_check import check_task
from lessons.lesson15_operating_at_scale.engine.durable import DurableFunction
from lessons.lesson15_operating_at_scale.tools import history_tool
from lessons.lesson15_operating_at_scale.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.lesson15_inherited14 import functions_check_v2
from tests.lesson15_inherited14.functions_check import go_key
from tests.recording import create_executions_table
from tests.waiting import wait_until

LESSON = "lesson15_operating_at_scale"
PACKAGE = f"lessons.{LESSON}"
DEMO = f"{PACKAGE}.demo"
TOOL = f"{PACKAGE}.tools.history_tool"
CHECK_FUNCTIONS = "tests.lesson15_inherited14.functions_check"
CHECK_FUNCTIONS_V2 = "tests.lesson15_inherited14.functions_check_v2"

ORDERS_IN_FLIGHT = 20
NEW_ORDERS = 5

# --- What the lesson's tests share (test_patches.py too) ---


def shop_database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    """The lesson's tables, and `executions`, where the tests' functions say what ran."""
    created = lesson_database(LESSON, max_size=4)
    with created.pool.connection() as conn:
        create_executions_table(conn)
    return created


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return shop_database(lesson_database)


def worker_process(
    database: LessonDatabase,
    functions: str,
    code_version: str,
    *,
    environment: dict[str, str] | None = None,
) -> WorkerProcess:
    """A worker process of the default queue, of a declared code version, with a 1 s lease."""
    return WorkerProcess(
        schema=database.schema,
        functions=functions,
        slots=8,
        poll_interval=0.05,
        heartbeat_interval=0.1,
        inactivity_threshold=1.0,
        verbose=True,
        environment=environment,
        code_version=code_version,
    )


def submit(pool: ConnectionPool, task_name: str, input: Any, **options: Any) -> int:
    with pool.connection() as conn:
        return enqueue(conn, task_name, input, durable=True, **options)


def get_task(pool: ConnectionPool, task_id: int) -> Task:
    with pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    assert task is not None, f"there is no task {task_id}"
    return task


def output_of(task: Task) -> dict[str, Any]:
    """A finished task's output, a JSON object for every function of these tests."""
    assert isinstance(task.output, dict), task.output
    return task.output


def history_of(pool: ConnectionPool, task_id: int) -> list[TaskEvent]:
    with pool.connection() as conn:
        return Querier(conn).list_task_events(task_id=task_id)


def calls(history: list[TaskEvent]) -> list[tuple[str, str]]:
    """A history as (kind, name) pairs: what a reader checks first."""
    return [(str(event.kind), event.name) for event in history]


def suspended_at(pool: ConnectionPool, task_id: int, events: int) -> bool:
    """Whether the task is suspended with `events` events, the last one a wait."""
    history = history_of(pool, task_id)
    return (
        get_task(pool, task_id).status == TaskStatus.SUSPENDED
        and len(history) == events
        and history[-1].kind == EventKind.WAIT
    )


def wait_suspended_at(pool: ConnectionPool, task_ids: Iterable[int], events: int) -> None:
    ids = list(task_ids)
    wait_until(
        lambda: all(suspended_at(pool, task_id, events) for task_id in ids),
        timeout=60,
        message=lambda: (
            "not all suspended at their wait: "
            + str([(i, get_task(pool, i).status, calls(history_of(pool, i))) for i in ids])
        ),
    )


def push(pool: ConnectionPool, key: str, payload: Any) -> None:
    with pool.connection() as conn:
        push_event(conn, key, payload)


def everything(pool: ConnectionPool) -> dict[str, list[tuple[Any, ...]]]:
    """Every row a check could write, or a step or child it ran: the tasks (each
    column), their events, waits, the shop's effects, and the tests' `executions`."""
    tables = {
        "tasks": "id",
        "task_events": "task_id, event_number",
        "event_waits": "task_id, event_number",
        "charges": "id",
        "emails": "order_id",
        "executions": "seq",
    }
    with pool.connection() as conn:
        return {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
            for table, order in tables.items()
        }


def run_tool(database: LessonDatabase, *arguments: str) -> subprocess.CompletedProcess[str]:
    """The history tool, as an operator (or a CI job) runs it."""
    return subprocess.run(
        [sys.executable, "-m", TOOL, f"--schema={database.schema}", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DATABASE_URL": database.url},
        check=False,
    )


def run_tool_here(
    database: LessonDatabase, capsys: pytest.CaptureFixture[str], *arguments: str
) -> tuple[int, list[str], str]:
    """`history_tool.main` in this process (faster): exit status, stdout lines, stderr."""
    capsys.readouterr()
    status = history_tool.main([f"--schema={database.schema}", *arguments])
    printed = capsys.readouterr()
    return status, printed.out.splitlines(), printed.err


# --- The deploy story ---


def order(order_id: str) -> dict[str, Any]:
    """A customer in the euro zone: version 1 charges them in dollars."""
    return {"order_id": order_id, "amount_cents": 4900, "currency": "EUR"}


def approve(pool: ConnectionPool, order_ids: Iterable[str]) -> None:
    for order_id in order_ids:
        push(pool, approval_event_key(order_id), {"approved_by": "ops"})


def charges_by_order(pool: ConnectionPool) -> dict[str, list[str]]:
    """The currency of each charge, by order: one charge per order, or a bug."""
    charges: dict[str, list[str]] = {}
    with pool.connection() as conn:
        for charge in Querier(conn).list_charges():
            charges.setdefault(charge.order_id, []).append(charge.currency)
    return charges


def breaking_lines(task_id: int, order_id: str) -> list[str]:
    """What the check prints for an order charged by version 1, against the unsafe fix."""
    return [
        f"task {task_id} process_order (suspended, version v1): breaks at event 1",
        f'  recorded: child charge_payment({{"amount_cents":4900,"order_id":"{order_id}"}})',
        "  new call: child charge_payment("
        f'{{"amount_cents":4900,"currency":"EUR","order_id":"{order_id}"}})',
        "  input changes:",
        '    currency: added "EUR"',
    ]


def test_the_check_lists_every_order_the_unsafe_fix_breaks_and_the_patched_fix_completes_them(
    database: LessonDatabase,
) -> None:
    """20 orders charged by a v1 worker wait for their approval. `check` of
    tasks_v2_unsafe lists each of them at event 1 with the recorded call, the new
    call and `currency: added "EUR"`, and exits 1; `check` of tasks_v2_patched
    passes. Neither writes anything. Moved to v2 and approved, the 20 complete on
    the v2 worker on the old path (no marker, charged in USD); new orders on v2
    record the marker at event 1 and are charged in EUR. Each order is charged and
    emailed once."""
    pool = database.pool
    old_orders = [f"A-{n:02}" for n in range(1, ORDERS_IN_FLIGHT + 1)]
    new_orders = [f"B-{n:02}" for n in range(1, NEW_ORDERS + 1)]
    with ExitStack() as stack:
        v1 = stack.enter_context(worker_process(database, f"{DEMO}.tasks", "v1"))
        v2 = stack.enter_context(worker_process(database, f"{DEMO}.tasks_v2_patched", "v2"))
        v1.start()
        old_ids = {o: submit(pool, "process_order", order(o)) for o in old_orders}
        wait_suspended_at(pool, old_ids.values(), events=2)
        before = everything(pool)

        unsafe = run_tool(database, "check", f"--functions={DEMO}.tasks_v2_unsafe")
        assert unsafe.returncode == 1, unsafe.stdout + unsafe.stderr
        expected = [
            f"checked {ORDERS_IN_FLIGHT} durable task(s) against {DEMO}.tasks_v2_unsafe: "
            f"{ORDERS_IN_FLIGHT} would break, 0 replay"
        ]
        for order_id, task_id in sorted(old_ids.items(), key=lambda item: item[1]):
            expected += breaking_lines(task_id, order_id)
        assert unsafe.stdout.splitlines() == expected, unsafe.stdout
        assert unsafe.stderr == ""

        patched = run_tool(database, "check", f"--functions={DEMO}.tasks_v2_patched")
        assert (patched.returncode, patched.stdout.splitlines()) == (
            0,
            [
                f"checked {ORDERS_IN_FLIGHT} durable task(s) against {DEMO}.tasks_v2_patched: "
                f"0 would break, {ORDERS_IN_FLIGHT} replay"
            ],
        ), patched.stdout + patched.stderr
        assert everything(pool) == before, "the checks wrote nothing, ran nothing"

        # The deploy: the v1 worker stops, its orders move to v2, a v2 worker starts.
        assert v1.stop() == 0, v1.log()
        moved = run_tool(database, "move-version", "--from=v1", "--to=v2")
        assert moved.stdout.splitlines() == [
            f"moved {ORDERS_IN_FLIGHT} unfinished task(s) from version v1 to v2"
        ], moved.stdout + moved.stderr
        v2.start()
        new_ids = {o: submit(pool, "process_order", order(o)) for o in new_orders}
        # A new order's history: the marker, the charge, the wait.
        wait_suspended_at(pool, new_ids.values(), events=3)
        approve(pool, [*old_orders, *new_orders])
        done = {o: wait_for_task(pool, i, timeout=60) for o, i in {**old_ids, **new_ids}.items()}
        log = v2.log()

    failed = {o: task.output for o, task in done.items() if task.status != TaskStatus.COMPLETED}
    assert failed == {}, log
    assert all(done[o].worker_id == v2.id for o in old_orders), "completed by the v2 worker"
    assert all(output_of(done[o])["currency"] == "USD" for o in old_orders)
    assert all(output_of(done[o])["currency"] == "EUR" for o in new_orders)
    for order_id in old_orders:
        assert calls(history_of(pool, old_ids[order_id])) == [
            ("child", "charge_payment"),
            ("wait", approval_event_key(order_id)),
            ("child", "send_confirmation_email"),
        ], "the old path: no marker"
    for order_id in new_orders:
        assert calls(history_of(pool, new_ids[order_id])) == [
            ("patch", "charge-in-currency"),
            ("child", "charge_payment"),
            ("wait", approval_event_key(order_id)),
            ("child", "send_confirmation_email"),
        ], "the new path: its marker at event 1"
    assert charges_by_order(pool) == {
        **{o: ["USD"] for o in old_orders},
        **{o: ["EUR"] for o in new_orders},
    }
    with pool.connection() as conn:
        emailed = sorted(email.order_id for email in Querier(conn).list_emails())
    assert emailed == sorted([*old_orders, *new_orders])


# --- The check only reads ---


def flow_waiting_for_nobody(database: LessonDatabase, effects_file: Path, key: str) -> int:
    """A `flow` task whose history a v1 worker recorded (its step, its wait), the
    wait since ended by its event, and no worker running: the new code would go on
    live right after the recorded history. Returns its id."""
    pool = database.pool
    with worker_process(database, CHECK_FUNCTIONS, "v1") as v1:
        v1.start()
        task_id = submit(pool, "flow", {"key": key, "file": str(effects_file)})
        wait_suspended_at(pool, [task_id], events=2)
        assert v1.stop() == 0, v1.log()
    push(pool, go_key(key), {"go": True})
    return task_id


REPLAYS_TO_THE_END = (
    "replays up to where it would go on live: event 3: the history ends; the new code goes on live"
)


def new_versions(effects_file: Path) -> list[tuple[DurableFunction, bool, str]]:
    """Each new version of `flow`, whether it breaks the history, and the detail."""
    wait_call = 'wait go:K({"timeout":3600.0})'
    mismatch_at_2 = f"event 2 does not match the history: recorded {wait_call}, new call"
    return [
        (functions_check_v2.flow, False, REPLAYS_TO_THE_END),
        (functions_check_v2.flow_child_at_end, False, REPLAYS_TO_THE_END),
        (functions_check_v2.flow_patch_at_end, False, REPLAYS_TO_THE_END),
        (functions_check_v2.flow_sleep_at_end, False, REPLAYS_TO_THE_END),
        (functions_check_v2.flow_wait_at_end, False, REPLAYS_TO_THE_END),
        (
            functions_check_v2.flow_step_in_the_middle,
            True,
            f'{mismatch_at_2} step append_line({{"file":"{effects_file}"}})',
        ),
        (
            functions_check_v2.flow_child_in_the_middle,
            True,
            f'{mismatch_at_2} child effect_child({{"key":"K"}})',
        ),
        (
            functions_check_v2.flow_first_step_changed,
            True,
            'event 1 does not match the history: recorded step first({"name":"first"}), '
            'new call step first({"extra":true,"name":"first"})\n'
            "  the same call with another input:\n"
            "    extra: added true",
        ),
    ]


def test_the_check_runs_no_step_spawns_no_child_and_writes_nothing_whatever_the_new_code_would_do(
    database: LessonDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A history ends where the new code would go on live (a step that appends to a
    file, a child, a patch marker, a sleep, a wait), or the new code makes a new
    call in its middle. The check says where each stops, or why it breaks, and
    afterwards: no line in the file, no new task, the same task_events, waits,
    executions, and the task's row unchanged in every column. Then the same new
    code, deployed, does write (the file line, the child): what the test looks for
    is what a run leaves."""
    pool = database.pool
    effects_file = tmp_path / "effects.txt"
    task_id = flow_waiting_for_nobody(database, effects_file, "K")
    before = everything(pool)
    task_before = get_task(pool, task_id)

    for function, breaks, detail in new_versions(effects_file):
        result = check_task(pool, {"flow": function}, get_task(pool, task_id))
        assert (result.breaks, result.detail) == (breaks, detail), function.__name__
        assert (result.mismatch is not None) == breaks
        assert result.old_paths_taken == frozenset()
    status, lines, _ = run_tool_here(
        database, capsys, "check", f"--functions={CHECK_FUNCTIONS_V2}", "--all"
    )
    assert (status, lines) == (
        0,
        [
            f"checked 1 durable task(s) against {CHECK_FUNCTIONS_V2}: 0 would break, 1 replay",
            f"task {task_id} flow (suspended, version v1): {REPLAYS_TO_THE_END}",
        ],
    )
    assert not effects_file.exists(), "no step ran"
    assert everything(pool) == before, "no task, event, wait or execution was written"
    assert get_task(pool, task_id) == task_before
    assert (task_before.status, task_before.attempt) == (TaskStatus.SUSPENDED, 1)

    # Deployed, the same code runs the step and the child, once.
    with pool.connection() as conn:
        move_to_version(conn, from_version="v1", to_version="v2")
    with worker_process(database, CHECK_FUNCTIONS_V2, "v2") as v2:
        v2.start()
        task = wait_for_task(pool, task_id, timeout=30)
        assert v2.stop() == 0, v2.log()
    assert task.status == TaskStatus.COMPLETED, task.output
    assert effects_file.read_text() == "appended\n"
    with pool.connection() as conn:
        ran = [row[0] for row in conn.execute("SELECT event FROM executions ORDER BY seq")]
    assert ran == ["step first", "step append_line", "effect_child ran"]
    assert calls(history_of(pool, task_id)) == [
        ("step", "first"),
        ("wait", go_key("K")),
        ("step", "append_line"),
        ("child", "effect_child"),
    ]


# --- The check's options ---


def database_now(pool: ConnectionPool) -> str:
    with pool.connection() as conn:
        row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return str(row[0].isoformat())


def test_check_options_filter_by_version_add_finished_tasks_list_replays_refuse_bad_modules(
    database: LessonDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tasks of two versions: a v1 `flow` and `legacy` waiting, a v1 `quick` that
    finished, and a v9 `flow` waiting. Against functions_check_v2 (no `legacy`):
    the plain check lists only the breaking `legacy` (exit 1); `--all` lists the
    replays too; `--version` checks one version's tasks only; `--ran-since` adds
    the finished task that ran since then, and only then; a module that cannot be
    imported, or has no DURABLE_FUNCTIONS, is a one-line error and exit 2."""
    pool = database.pool
    effects = str(tmp_path / "effects.txt")
    with worker_process(database, CHECK_FUNCTIONS, "v1") as v1:
        v1.start()
        before_quick = database_now(pool)
        quick_id = submit(pool, "quick", {"key": "Q"})
        assert wait_for_task(pool, quick_id, timeout=30).status == TaskStatus.COMPLETED
        after_quick = database_now(pool)
        flow_id = submit(pool, "flow", {"key": "F", "file": effects})
        legacy_id = submit(pool, "legacy", {"key": "L"})
        wait_suspended_at(pool, [flow_id], events=2)
        wait_suspended_at(pool, [legacy_id], events=1)
        assert v1.stop() == 0, v1.log()
    with worker_process(database, CHECK_FUNCTIONS, "v9") as v9:
        v9.start()
        other_id = submit(pool, "flow", {"key": "G", "file": effects})
        wait_suspended_at(pool, [other_id], events=2)
        assert v9.stop() == 0, v9.log()
    before = everything(pool)

    def check(*options: str) -> tuple[int, list[str], str]:
        return run_tool_here(
            database, capsys, "check", f"--functions={CHECK_FUNCTIONS_V2}", *options
        )

    def heading(checked: int, broken: int) -> str:
        return (
            f"checked {checked} durable task(s) against {CHECK_FUNCTIONS_V2}: "
            f"{broken} would break, {checked - broken} replay"
        )

    legacy_breaks = (
        f"task {legacy_id} legacy (suspended, version v1): breaks: "
        "the new code has no durable function legacy"
    )

    def waits(task_id: int, version: str, key: str) -> str:
        return (
            f"task {task_id} flow (suspended, version {version}): replays up to where it "
            f"would go on live: event 2: waits for event {go_key(key)}"
        )

    assert check() == (1, [heading(3, 1), legacy_breaks], "")
    assert check("--all") == (
        1,
        [heading(3, 1), waits(flow_id, "v1", "F"), legacy_breaks, waits(other_id, "v9", "G")],
        "",
    )
    assert check("--version=v9", "--all") == (0, [heading(1, 0), waits(other_id, "v9", "G")], "")
    assert check("--version=v1") == (1, [heading(2, 1), legacy_breaks], "")
    assert check("--version=v2") == (0, [heading(0, 0)], "")
    quick_replays = (
        f"task {quick_id} quick (completed, version v1): returns: its whole history replays"
    )
    assert check(f"--ran-since={before_quick}", "--all") == (
        1,
        [
            heading(4, 1),
            quick_replays,
            waits(flow_id, "v1", "F"),
            legacy_breaks,
            waits(other_id, "v9", "G"),
        ],
        "",
    )
    assert check(f"--ran-since={after_quick}")[1][0] == heading(3, 1), "it ran before then"
    assert check(f"--ran-since={before_quick}", "--version=v9")[1] == [heading(1, 0)]

    status, lines, error = run_tool_here(
        database, capsys, "check", "--functions=tests.lesson15_inherited14.no_such_module"
    )
    assert (status, lines) == (2, [])
    assert error.startswith("error: cannot import tests.lesson15_inherited14.no_such_module: ")
    assert error.count("\n") == 1, error
    status, lines, error = run_tool_here(database, capsys, "patches", "--functions=tests.lesson15_inherited14")
    assert (status, lines, error) == (
        2,
        [],
        "error: module tests.lesson15_inherited14 has no DURABLE_FUNCTIONS mapping\n",
    )
    # As a subprocess too: the status a CI job sees.
    unknown = run_tool(database, "check", "--functions=tests.lesson15_inherited14.no_such_module")
    assert (unknown.returncode, unknown.stdout) == (2, "")
    assert len(unknown.stderr.splitlines()) == 1, unknown.stderr
    assert everything(pool) == before
