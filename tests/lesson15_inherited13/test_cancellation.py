"""Lesson 13's cancellation, with real worker processes and the real server.

A durable order cancelled between its charge and its email refunds once and sends
nothing; a parent's cancellation reaches its queued, running and suspended
children; a cancelled plain attempt cannot complete, and learns of its
cancellation at once (by notification) or soon (by its heartbeat); cancelling is
immediate for a task that never ran, and idempotent; cancel_in_progress now
cancels a running task; a durable function that catches Cancelled still ends
cancelled; and a cancelled task can be replayed.

A task is held *running* by `hold` (tests/lesson15_inherited13/functions_cancel.py): it waits
for its attempt's cancellation flag, a gate file, or a bound. Every run of a
step or task is a row of `executions`, on the database's clock.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from lessons.lesson15_operating_at_scale.db.models import (
    AtLimit,
    EventKind,
    Task,
    TaskEvent,
    TaskStatus,
)
from lessons.lesson15_operating_at_scale.db.queries import Querier
from lessons.lesson15_operating_at_scale.engine.client import (
    cancel,
    enqueue,
    set_concurrency_limit,
    wait_for_task,
)
from lessons.lesson15_operating_at_scale.engine.shared import FINISHED_STATUSES
from lessons.lesson15_operating_at_scale.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.lesson15_inherited13.functions_cancel import UNSERVED_QUEUE, arrival_file
from tests.recording import create_executions_table, open_gate
from tests.waiting import wait_until

LESSON = "lesson15_operating_at_scale"
FUNCTIONS_MODULE = "tests.lesson15_inherited13.functions_cancel"
TOOL = f"lessons.{LESSON}.tools.history_tool"
QUEUE = "shop"

# How long a worker of these tests beats, and its lease (its inactivity threshold).
HEARTBEAT_INTERVAL = 0.1
INACTIVITY_THRESHOLD = 1.0

# The bound on how long a running attempt's flag may take to be raised after its
# cancellation: generous, for a busy machine; the measured times are printed.
FLAG_BOUND_SECONDS = 5.0


# --- What the tests share (the crash tests too) ---


def shop_database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    """The lesson's tables, and `executions`, where the task functions say what ran."""
    created = lesson_database(LESSON, max_size=4)
    with created.pool.connection() as conn:
        create_executions_table(conn)
    return created


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return shop_database(lesson_database)


def worker_process(
    database: LessonDatabase,
    *,
    slots: int = 4,
    heartbeat_interval: float = HEARTBEAT_INTERVAL,
    inactivity_threshold: float = INACTIVITY_THRESHOLD,
    listen: bool = True,
    environment: dict[str, str] | None = None,
) -> WorkerProcess:
    """A worker process of the shop's queue, logging verbosely (its log says which
    results were rejected, and which attempts were lost)."""
    return WorkerProcess(
        schema=database.schema,
        queues=[QUEUE],
        functions=FUNCTIONS_MODULE,
        slots=slots,
        poll_interval=0.05,
        heartbeat_interval=heartbeat_interval,
        inactivity_threshold=inactivity_threshold,
        listen=listen,
        verbose=True,
        environment=environment,
    )


def submit(pool: ConnectionPool, task_name: str, input: Any, **options: Any) -> int:
    options.setdefault("queue", QUEUE)
    with pool.connection() as conn:
        return enqueue(conn, task_name, input, **options)


def cancel_task(pool: ConnectionPool, task_id: int, by: str, reason: str) -> TaskStatus:
    with pool.connection() as conn:
        return cancel(conn, task_id, cancelled_by=by, reason=reason)


def get_task(pool: ConnectionPool, task_id: int) -> Task:
    with pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    assert task is not None, f"there is no task {task_id}"
    return task


def output_of(task: Task) -> dict[str, Any]:
    """A finished task's output, which for a cancelled task is a JSON object."""
    assert isinstance(task.output, dict), task.output
    return task.output


def children_of(pool: ConnectionPool, parent_id: int) -> list[Task]:
    with pool.connection() as conn:
        return [task for task in Querier(conn).list_tasks() if task.parent_id == parent_id]


def history_of(pool: ConnectionPool, task_id: int) -> list[TaskEvent]:
    with pool.connection() as conn:
        return Querier(conn).list_task_events(task_id=task_id)


def calls(history: list[TaskEvent]) -> list[tuple[str, str]]:
    """A history as (kind, name) pairs: what a reader checks first."""
    return [(str(event.kind), event.name) for event in history]


def runs(pool: ConnectionPool, event: str, task_id: int | None = None) -> int:
    """How many times a task function (or step) said `event` (of `task_id`, if given)."""
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM executions WHERE event = %s AND (%s::bigint IS NULL OR key = %s)",
            (event, task_id, task_id),
        ).fetchone()
    assert row is not None
    count: int = row[0]
    return count


def wait_status(pool: ConnectionPool, task_id: int, *statuses: TaskStatus) -> Task:
    def in_status() -> Task | None:
        task = get_task(pool, task_id)
        return task if task.status in statuses else None

    return wait_until(
        in_status,
        message=lambda: f"task {task_id} is {get_task(pool, task_id).status}, not {statuses}",
    )


def wait_held(gate: Path, task_id: int) -> None:
    """Wait until `hold` runs for task `task_id` (in the task, or in one of its steps)."""
    wait_until(
        lambda: arrival_file(str(gate), task_id).exists(),
        message=f"task {task_id} never reached its hold",
    )


def wait_for_log(process: WorkerProcess, text: str) -> None:
    wait_until(lambda: text in process.log(), message=lambda: f"no {text!r} in\n{process.log()}")


def shop_effects(pool: ConnectionPool, order_id: str) -> dict[str, Any]:
    """What the order did to the shop: its charges, refunds, emails and reservation."""
    with pool.connection() as conn:
        queries = Querier(conn)
        charges = [c for c in queries.list_charges() if c.order_id == order_id]
        charge_ids = {charge.id for charge in charges}
        refunds = [r for r in queries.list_refunds() if r.charge_id in charge_ids]
        emails = [e for e in queries.list_emails() if e.order_id == order_id]
        reservations = [r for r in queries.list_reservations() if r.order_id == order_id]
    return {"charges": charges, "refunds": refunds, "emails": emails, "reservations": reservations}


def assert_compensated_once(pool: ConnectionPool, order_id: str, order_task_id: int) -> None:
    """The order was charged once and refunded once, by one refund child; it sent no
    email and spawned no email child; its stock was released; and no child of it is
    left unfinished."""
    effects = shop_effects(pool, order_id)
    assert len(effects["charges"]) == 1, effects
    assert len(effects["refunds"]) == 1, effects
    assert effects["emails"] == [], effects
    [reservation] = effects["reservations"]
    assert reservation.released_at is not None, reservation
    children = children_of(pool, order_task_id)
    names = sorted(child.task_name for child in children)
    assert names == ["charge_payment", "refund_payment"], names
    [refund_child] = [child for child in children if child.task_name == "refund_payment"]
    assert effects["refunds"][0].task_id == refund_child.id
    unfinished = [(c.id, c.status) for c in children if c.status not in FINISHED_STATUSES]
    assert unfinished == []


def order_input(order_id: str, gate: Path, *, hold: bool = True) -> dict[str, Any]:
    return {"order_id": order_id, "hold": hold, "gate": str(gate)}


# --- 1. An order cancelled between its charge and its email ---


def test_an_order_cancelled_between_its_charge_and_its_email_refunds_once_and_sends_none(
    database: LessonDatabase, tmp_path: Path
) -> None:
    """The order has reserved and charged, and runs its hold step when it is cancelled.
    cancel returns `running` (a durable task that has run unwinds itself); a second
    cancel, by someone else, changes nothing. The step ends on the cancellation flag,
    and is recorded; the email's spawn meets Cancelled instead; the compensation
    refunds once and releases the stock. The history says where the cancellation
    was met, who asked and why; no child is left running."""
    pool = database.pool
    gate = tmp_path / "gate"
    with worker_process(database) as worker:
        worker.start()
        order_id = submit(pool, "order", order_input("C-1", gate), durable=True)
        wait_held(gate, order_id)
        assert get_task(pool, order_id).status == TaskStatus.RUNNING
        assert len(shop_effects(pool, "C-1")["charges"]) == 1, "charged before the hold"

        status = cancel_task(pool, order_id, "support desk", "the customer changed their mind")
        again = cancel_task(pool, order_id, "someone else", "a second click")
        task = wait_for_task(pool, order_id)
        assert worker.stop() == 0, worker.log()
        log = worker.log()

    assert status == TaskStatus.RUNNING
    assert again in (TaskStatus.RUNNING, TaskStatus.SUSPENDED, TaskStatus.CANCELLED)
    assert task.status == TaskStatus.CANCELLED, (task.output, log)
    assert (task.cancelled_by, task.cancel_reason) == (
        "support desk",
        "the customer changed their mind",
    )
    assert output_of(task)["error"]["type"] == "Cancelled"
    assert "support desk" in output_of(task)["error"]["message"]
    history = history_of(pool, order_id)
    assert calls(history) == [
        ("step", "reserve_stock"),
        ("child", "charge_payment"),
        ("step", "hold"),
        ("cancellation", "support desk"),
        ("child", "refund_payment"),
        ("step", "release_stock"),
    ]
    assert history[2].output == {"released_by": "cancellation"}
    assert history[3].input == {
        "cancelled_by": "support desk",
        "reason": "the customer changed their mind",
    }
    assert {event.attempt for event in history} == {1}, "one attempt did it all"
    assert runs(pool, "hold began", order_id) == 1
    assert_compensated_once(pool, "C-1", order_id)


# --- 3. A parent's cancellation reaches its children ---


def test_cancelling_a_parent_cancels_its_queued_running_and_suspended_children(
    database: LessonDatabase, tmp_path: Path
) -> None:
    """A durable parent has five children: two durable ones that ran a step and are
    suspended (a sleep, a wait for an event), a plain one running, a plain one and a
    durable one queued on a queue no worker serves. Cancelling the parent cancels the
    queued children and the running plain one at once (cancel returns); the durable
    suspended ones are woken, meet Cancelled where they wait, and end cancelled. Every
    child keeps who cancelled it, with a reason naming the parent; the running one's
    late result is rejected; the parent ends cancelled too."""
    pool = database.pool
    gate = tmp_path / "gate"
    with worker_process(database, slots=6) as worker:
        worker.start()
        parent_id = submit(pool, "family", {"gate": str(gate), "event": "never"}, durable=True)

        def family_in_place() -> dict[str, Task] | None:
            children = {
                f"{c.task_name} {c.input.get('n')}": c for c in children_of(pool, parent_id)
            }
            wanted = {
                "sleep_long 1": TaskStatus.SUSPENDED,
                "wait_long 2": TaskStatus.SUSPENDED,
                "hold 3": TaskStatus.RUNNING,
                "work 4": TaskStatus.QUEUED,
                "sleep_long 5": TaskStatus.QUEUED,
            }
            placed = {name: child.status for name, child in children.items()} == wanted
            parent_waits = get_task(pool, parent_id).status == TaskStatus.SUSPENDED
            return children if placed and parent_waits else None

        children = wait_until(family_in_place, message=worker.log)
        running = children["hold 3"]
        wait_held(gate, running.id)

        status = cancel_task(pool, parent_id, "operator", "the order was withdrawn")
        at_once = {name: get_task(pool, child.id) for name, child in children.items()}
        parent = wait_for_task(pool, parent_id)
        finished = {name: wait_for_task(pool, child.id) for name, child in children.items()}
        wait_for_log(worker, f"task {running.id} (hold) attempt 1: result rejected")
        assert worker.stop() == 0, worker.log()

    assert status == TaskStatus.SUSPENDED, "the parent has run: it unwinds itself"
    for name in ("hold 3", "work 4", "sleep_long 5"):
        assert at_once[name].status == TaskStatus.CANCELLED, (name, at_once[name])
    for name in ("sleep_long 1", "wait_long 2"):
        assert at_once[name].cancel_requested_at is not None, name
    reason = f"its parent task {parent_id} was cancelled"
    for name, child in finished.items():
        assert (child.status, child.cancelled_by, child.cancel_reason) == (
            TaskStatus.CANCELLED,
            "operator",
            reason,
        ), name
        assert output_of(child)["error"]["type"] == "Cancelled", (name, child.output)
    for name, waits, step in (
        ("sleep_long 1", "sleep", "sleeper 1"),
        ("wait_long 2", "wait", "waiter 2"),
    ):
        history = history_of(pool, finished[name].id)
        assert [str(event.kind) for event in history] == ["step", waits, "cancellation"]
        assert history[-1].input == {"cancelled_by": "operator", "reason": reason}
        assert runs(pool, f"step {step}") == 1, "the step ran once, and was replayed"
    assert runs(pool, "work ran") == 0
    assert history_of(pool, finished["sleep_long 5"].id) == []
    assert finished["hold 3"].output == at_once["hold 3"].output, "the late result lost"
    assert (parent.status, parent.cancelled_by) == (TaskStatus.CANCELLED, "operator")
    assert calls(history_of(pool, parent_id))[-1] == ("cancellation", "operator")


# --- 4. A cancelled attempt cannot complete ---


@pytest.mark.parametrize(
    ("listen", "heartbeat_interval", "raised_by"),
    [
        (True, 1.0, "its cancellation flag is raised"),
        (False, 0.2, "is no longer this worker's: raising its cancellation flag"),
    ],
    ids=["notification", "heartbeat"],
)
def test_a_cancelled_plain_attempt_learns_it_promptly_and_its_result_is_rejected(
    database: LessonDatabase,
    tmp_path: Path,
    listen: bool,
    heartbeat_interval: float,
    raised_by: str,
) -> None:
    """A plain task is running when it is cancelled: cancel returns `cancelled`, and
    the task is, with the Cancelled error document, at once. Its attempt's flag is
    raised within FLAG_BOUND_SECONDS of the cancellation (on the database's clock):
    by the task_cancelled notification, or, with the worker not listening, by its
    heartbeat, which finds the attempt no longer its own. The function then returns;
    its result is rejected, and the task stays cancelled as it was."""
    pool = database.pool
    gate = tmp_path / "gate"
    with worker_process(
        database,
        listen=listen,
        heartbeat_interval=heartbeat_interval,
        inactivity_threshold=5 * heartbeat_interval,
    ) as worker:
        worker.start()
        task_id = submit(pool, "hold", {"gate": str(gate)})
        wait_held(gate, task_id)

        status = cancel_task(pool, task_id, "operator", "no longer needed")
        cancelled = get_task(pool, task_id)
        wait_until(lambda: runs(pool, "hold returned", task_id) == 1, message=worker.log)
        wait_for_log(worker, f"task {task_id} (hold) attempt 1: result rejected")
        final = get_task(pool, task_id)
        with pool.connection() as conn:
            row = conn.execute(
                "SELECT recorded_at FROM executions WHERE key = %s AND event = 'flag raised'",
                (task_id,),
            ).fetchone()
        assert worker.stop() == 0, worker.log()
        log = worker.log()

    assert status == TaskStatus.CANCELLED
    assert cancelled.status == TaskStatus.CANCELLED
    assert cancelled.output == {
        "error": {"type": "Cancelled", "message": "cancelled by operator: no longer needed"}
    }
    assert row is not None, "the flag was never raised: the hold ran out its bound"
    assert cancelled.cancel_requested_at is not None
    flag_seconds = (row[0] - cancelled.cancel_requested_at) / timedelta(seconds=1)
    how = "notification" if listen else "heartbeat"
    print(f"flag raised {flag_seconds:.3f} s after the cancellation ({how})")
    assert 0 <= flag_seconds < FLAG_BOUND_SECONDS
    assert raised_by in log, log
    assert final == cancelled, "the late result changed nothing"


# --- 5. Cancelling what never ran, or has finished ---


def test_cancel_is_immediate_for_a_queued_task_and_changes_nothing_that_has_finished(
    database: LessonDatabase, tmp_path: Path
) -> None:
    """A task that never started (plain, or durable) is cancelled as cancel returns.
    Cancelling it again is cancelling once: who cancelled it first is kept. A
    completed or failed task comes back as it is, unchanged. An unknown task is a
    LookupError; a cancellation that does not say who asked, or why, a ValueError
    that changes nothing."""
    pool = database.pool
    plain = submit(pool, "work", {"n": 1}, queue=UNSERVED_QUEUE)
    durable = submit(pool, "order", order_input("Q-1", tmp_path / "gate"), durable=True)

    for task_id in (plain, durable):
        assert cancel_task(pool, task_id, "desk", "not wanted") == TaskStatus.CANCELLED
        first = get_task(pool, task_id)
        assert (first.status, first.cancelled_by, first.cancel_reason) == (
            TaskStatus.CANCELLED,
            "desk",
            "not wanted",
        )
        assert first.output == {
            "error": {"type": "Cancelled", "message": "cancelled by desk: not wanted"}
        }
        assert cancel_task(pool, task_id, "someone else", "again") == TaskStatus.CANCELLED
        assert get_task(pool, task_id) == first

    with worker_process(database) as worker:
        worker.start()
        completed = wait_for_task(pool, submit(pool, "work", {"n": 2}))
        failed = wait_for_task(pool, submit(pool, "fail_for_good", {"n": 3}))
        assert worker.stop() == 0, worker.log()
    assert (completed.status, failed.status) == (TaskStatus.COMPLETED, TaskStatus.FAILED)
    for finished in (completed, failed):
        assert cancel_task(pool, finished.id, "desk", "too late") == finished.status
        assert get_task(pool, finished.id) == finished

    with pytest.raises(LookupError, match="there is no task 999999"):
        cancel_task(pool, 999_999, "desk", "nothing")
    queued = submit(pool, "work", {"n": 4}, queue=UNSERVED_QUEUE)
    before = get_task(pool, queued)
    for by, reason in (("", "why"), ("desk", "")):
        with pytest.raises(ValueError, match="says who asked for it and why"):
            cancel_task(pool, queued, by, reason)
    assert get_task(pool, queued) == before


# --- 6. cancel_in_progress cancels a running task ---


def test_cancel_in_progress_cancels_the_keys_running_plain_task_and_the_new_one_runs(
    database: LessonDatabase, tmp_path: Path
) -> None:
    """Limit 1 per key, cancel_in_progress. The key's older task is running when a
    newer one is enqueued: the enqueue cancels it (cancelled by 'concurrency limit',
    superseded), its slot is free at once, and the newer task runs and completes.
    The older one's function returns when its flag is raised; its result is
    rejected. The key's count is back to 0."""
    pool = database.pool
    gate = tmp_path / "gate"
    with pool.connection() as conn:
        set_concurrency_limit(conn, QUEUE, 1, at_limit=AtLimit.CANCEL_IN_PROGRESS)
    with worker_process(database) as worker:
        worker.start()
        older = submit(pool, "hold", {"gate": str(gate)}, concurrency_key="tenant-1")
        wait_held(gate, older)
        newer = submit(pool, "work", {"n": 2}, concurrency_key="tenant-1")
        superseded = get_task(pool, older)
        done = wait_for_task(pool, newer)
        wait_for_log(worker, f"task {older} (hold) attempt 1: result rejected")
        assert worker.stop() == 0, worker.log()

    assert superseded.status == TaskStatus.CANCELLED
    assert (superseded.cancelled_by, superseded.cancel_reason) == (
        "concurrency limit",
        "superseded by a newer task of key tenant-1",
    )
    assert done.status == TaskStatus.COMPLETED, done.output
    assert runs(pool, "work ran", newer) == 1
    assert get_task(pool, older) == superseded, "the late result changed nothing"
    assert runs(pool, "hold returned", older) == 1
    with pool.connection() as conn:
        row = conn.execute("SELECT running FROM concurrency_keys WHERE key = 'tenant-1'").fetchone()
    assert row == (0,)


# --- 7. Catching Cancelled does not complete a task ---


def test_a_function_that_catches_cancelled_ends_cancelled_and_except_exception_cannot_swallow_it(
    database: LessonDatabase, tmp_path: Path
) -> None:
    """One durable function catches Cancelled, compensates (a step) and returns a
    value: its task ends cancelled, the value in output["returned"]. Another wraps
    its work in `except Exception`: Cancelled, a BaseException, goes through it, and
    its task ends cancelled too, with nothing returned. Neither runs the step after
    its hold."""
    pool = database.pool
    gate = tmp_path / "gate"
    with worker_process(database) as worker:
        worker.start()
        catching = submit(pool, "compensate_and_return", {"gate": str(gate)}, durable=True)
        swallowing = submit(
            pool, "swallow_with_except_exception", {"gate": str(gate)}, durable=True
        )
        for task_id in (catching, swallowing):
            wait_held(gate, task_id)
            cancel_task(pool, task_id, "operator", "stop")
        caught = wait_for_task(pool, catching)
        swallowed = wait_for_task(pool, swallowing)
        assert worker.stop() == 0, worker.log()

    assert caught.status == TaskStatus.CANCELLED, caught.output
    assert output_of(caught)["error"]["type"] == "Cancelled"
    assert output_of(caught)["returned"] == {"compensated": True, "cancelled_by": "operator"}
    assert calls(history_of(pool, catching)) == [
        ("step", "hold"),
        ("cancellation", "operator"),
        ("step", "undo"),
    ]
    assert swallowed.status == TaskStatus.CANCELLED, swallowed.output
    assert output_of(swallowed)["error"]["type"] == "Cancelled"
    assert "returned" not in output_of(swallowed)
    assert calls(history_of(pool, swallowing)) == [("step", "hold"), ("cancellation", "operator")]
    assert runs(pool, "step after") == 0
    assert runs(pool, "step undo", catching) == 1


# --- 8. A cancelled task can be replayed ---


def test_a_cancelled_durable_task_replayed_runs_from_scratch_uncancelled(
    database: LessonDatabase, tmp_path: Path
) -> None:
    """A durable task cancelled (and compensated) is replayed with `history_tool
    replay`: its history is deleted, its cancellation cleared, and it runs from
    scratch (its hold runs again, released by the gate this time) and completes."""
    pool = database.pool
    gate = tmp_path / "gate"
    with worker_process(database) as worker:
        worker.start()
        task_id = submit(pool, "compensate_and_return", {"gate": str(gate)}, durable=True)
        wait_held(gate, task_id)
        cancel_task(pool, task_id, "operator", "stop")
        assert wait_for_task(pool, task_id).status == TaskStatus.CANCELLED
        open_gate(gate)
        replayed = subprocess.run(
            [sys.executable, "-m", TOOL, "--schema", database.schema, "replay", str(task_id)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "DATABASE_URL": database.url},
        )
        assert replayed.returncode == 0, replayed.stderr
        task = wait_for_task(pool, task_id)
        assert worker.stop() == 0, worker.log()

    assert f"task {task_id} (compensate_and_return) is queued to run from scratch" in (
        replayed.stdout
    )
    assert task.status == TaskStatus.COMPLETED, task.output
    assert task.output == {"completed": True, "hold": "gate"}
    assert (task.cancel_requested_at, task.cancelled_by, task.cancel_reason) == (None, None, None)
    assert task.attempts_before_replay == 1
    history = history_of(pool, task_id)
    assert calls(history) == [("step", "hold"), ("step", "after")]
    assert EventKind.CANCELLATION not in {event.kind for event in history}
    assert (runs(pool, "hold began", task_id), runs(pool, "step undo", task_id)) == (2, 1)
    assert runs(pool, "step after", task_id) == 1
