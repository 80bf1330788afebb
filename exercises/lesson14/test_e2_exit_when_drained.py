"""A worker that leaves when its version is drained and done: `--exit-when-drained`.

After a deploy, the old version's workers must run until the last task pinned
to them finishes, and no longer: an operator watches `history_tool versions`
and stops them by hand. Add `exit_when_drained` to Worker (False by default)
and `--exit-when-drained` to worker_process: once the worker's version is
draining and no unfinished durable task is pinned to it, the worker stops
gracefully on its own, and the process exits 0. The check holds two orders of
version v1 at a wait on a v1 worker process, starts a v2 worker process, both
with `--exit-when-drained`, and drains v1: the v1 worker still runs a whole
lease after the drain, finishes each order when it is let go, the first while
the second still waits, and then exits by itself, with status 0 and its row
marked stopped; the v2 worker, whose version is not draining and which has had
no task all that time, keeps running, and runs the next order.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from collections.abc import Callable
from contextlib import ExitStack

import pytest

from exercises import expect
from exercises.lesson14.orders_v1 import go_key
from lessons.lesson14_changing_code_safely.db.models import EventKind, Task, TaskStatus
from lessons.lesson14_changing_code_safely.db.queries import Querier
from lessons.lesson14_changing_code_safely.engine.client import (
    drain_version,
    enqueue,
    push_event,
)
from lessons.lesson14_changing_code_safely.engine.worker import Worker
from lessons.lesson14_changing_code_safely.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.waiting import wait_until

LESSON = "lesson14_changing_code_safely"
WORKER_PROCESS = f"lessons.{LESSON}.tools.worker_process"
ORDERS = "exercises.lesson14"


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def worker_process(database: LessonDatabase, code_version: str, module: str) -> WorkerProcess:
    process = WorkerProcess(
        schema=database.schema,
        functions=f"{ORDERS}.{module}",
        slots=2,
        poll_interval=0.1,
        heartbeat_interval=0.1,
        inactivity_threshold=1.0,
        code_version=code_version,
    )
    process.arguments.append("--exit-when-drained")
    return process


def exit_code(process: WorkerProcess) -> int | None:
    """The process's exit code if it has exited, else None (it runs)."""
    try:
        return process.wait(timeout=0)
    except subprocess.TimeoutExpired:
        return None


def get_task(database: LessonDatabase, task_id: int) -> Task:
    with database.pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    assert task is not None, f"task {task_id} vanished"
    return task


def place_order(database: LessonDatabase, order_id: str) -> int:
    with database.pool.connection() as conn:
        return enqueue(
            conn,
            "settle",
            {"order_id": order_id, "pay_by": "invoice", "amount_cents": 4900, "currency": "EUR"},
            durable=True,
        )


def waiting_on(database: LessonDatabase, task_id: int, worker: WorkerProcess) -> bool:
    """Whether the task waits for its go-ahead, pinned to the worker's version."""
    task = get_task(database, task_id)
    with database.pool.connection() as conn:
        events = Querier(conn).list_task_events(task_id=task_id)
    return (
        task.status == TaskStatus.SUSPENDED
        and task.code_version == worker.code_version
        and any(event.kind == EventKind.WAIT for event in events)
    )


def let_go(database: LessonDatabase, order_id: str) -> None:
    with database.pool.connection() as conn:
        push_event(conn, go_key(order_id), {"approved_by": "the check"})


def completed_by(
    database: LessonDatabase, task_id: int, worker: WorkerProcess, *, what: str
) -> Task:
    """Wait until the task has completed, and require that `worker` ran its end."""

    def state() -> str:
        code = exit_code(worker)
        gone = "" if code is None else f"; the {worker.code_version} worker exited ({code})"
        return f"{what} is {get_task(database, task_id).status}{gone}"

    def completed() -> Task | None:
        task = get_task(database, task_id)
        return task if task.status == TaskStatus.COMPLETED else None

    task = wait_until(completed, message=lambda: f"{state()}\n{worker.log()[-3000:]}")
    expect(
        task.worker_id in worker.ids,
        f"{what} completed on worker {task.worker_id}, not on the "
        f"{worker.code_version} worker {worker.ids}",
    )
    return task


def stopped_at_recorded(database: LessonDatabase, worker: WorkerProcess) -> bool:
    with database.pool.connection() as conn:
        row = conn.execute(
            "SELECT bool_and(stopped_at IS NOT NULL) FROM workers WHERE id = ANY(%s)",
            (worker.ids,),
        ).fetchone()
    return bool(row and row[0])


def beat_a_lease_after_the_drain(database: LessonDatabase, worker: WorkerProcess) -> bool:
    """Whether the worker has renewed its lease a whole lease after its version was drained."""
    with database.pool.connection() as conn:
        row = conn.execute(
            "SELECT bool_and(w.last_heartbeat_at > d.draining_since"
            " + make_interval(secs => w.lease_seconds))"
            " FROM workers AS w JOIN draining_versions AS d USING (code_version)"
            " WHERE w.id = ANY(%s)",
            (worker.ids,),
        ).fetchone()
    return bool(row and row[0])


def test_a_drained_worker_leaves_once_its_tasks_are_done_and_no_sooner(
    database: LessonDatabase,
) -> None:
    expect(
        "exit_when_drained" in inspect.signature(Worker).parameters,
        "lesson 14's Worker has no `exit_when_drained` parameter yet: see exercise 2 in its README",
    )
    usage = subprocess.run(
        [sys.executable, "-m", WORKER_PROCESS, "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    expect(
        "--exit-when-drained" in usage.stdout,
        "lesson 14's worker_process has no `--exit-when-drained` option yet: "
        "see exercise 2 in its README",
    )
    with ExitStack() as stack:
        v1 = stack.enter_context(worker_process(database, "v1", "orders_v1"))
        v2 = stack.enter_context(worker_process(database, "v2", "orders_v2_patched"))
        v1.start()
        first, second = place_order(database, "A-1"), place_order(database, "A-2")
        wait_until(
            lambda: waiting_on(database, first, v1) and waiting_on(database, second, v1),
            message=lambda: f"the two orders never came to wait on v1\n{v1.log()[-3000:]}",
        )
        v2.start()
        with database.pool.connection() as conn:
            drain_version(conn, "v1")

        # A worker that would leave too soon has a whole lease to do it in.
        wait_until(
            lambda: beat_a_lease_after_the_drain(database, v1) or exit_code(v1) is not None,
            message=lambda: f"the v1 worker stopped beating after the drain\n{v1.log()[-3000:]}",
        )
        expect(
            exit_code(v1) is None,
            f"the v1 worker exited ({exit_code(v1)}) once v1 was drained, although two tasks "
            f"pinned to v1 were unfinished\n{v1.log()[-3000:]}",
        )
        let_go(database, "A-1")
        completed_by(database, first, v1, what="the first v1 order, let go after the drain")
        expect(
            exit_code(v1) is None,
            f"the v1 worker exited ({exit_code(v1)}) while a task pinned to v1 was unfinished",
        )
        let_go(database, "A-2")
        completed_by(database, second, v1, what="the second v1 order, let go after the first")
        try:
            code = v1.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(
                "v1 is draining and no unfinished task is pinned to it, but its worker "
                f"still runs 30 s later:\n{v1.log()[-3000:]}",
                pytrace=False,
            )
        expect(
            code == 0 and stopped_at_recorded(database, v1),
            f"the drained v1 worker should stop gracefully (exit status 0, its row marked "
            f"stopped); it exited {code}, stopped recorded: {stopped_at_recorded(database, v1)}"
            f"\n{v1.log()[-3000:]}",
        )

        # v2 has had no task since it started, and v1 has been drained all that time.
        expect(
            exit_code(v2) is None,
            f"the v2 worker, whose version is not draining, exited ({exit_code(v2)})"
            f"\n{v2.log()[-3000:]}",
        )
        on_v2 = place_order(database, "B-1")
        wait_until(
            lambda: waiting_on(database, on_v2, v2),
            message=lambda: (
                f"an order placed once v1 was gone did not come to wait on v2 (v2 exit "
                f"code: {exit_code(v2)}): a worker whose version is not draining must keep "
                f"running\n{v2.log()[-3000:]}"
            ),
        )
        let_go(database, "B-1")
        completed_by(database, on_v2, v2, what="the v2 order")
        expect(v2.stop() == 0, f"the v2 worker did not stop cleanly:\n{v2.log()[-3000:]}")
