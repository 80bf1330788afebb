"""A new crash point, `run_step:before_record`.

Add the crash point `run_step:before_record`: a step has run, its event is not yet
written. The check kills a worker process there (COURSE_CRASH_AT) and asserts what
the crash table should then say: the worker died by SIGKILL with the step run once
and nothing in the history; the next worker runs the step again (a step is at least
once, which is why effects belong in child tasks with idempotency keys) and completes
the task on attempt 2.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from lessons.lesson07_durable_tasks.db.models import Task, TaskStatus
from lessons.lesson07_durable_tasks.db.queries import Querier
from lessons.lesson07_durable_tasks.engine.client import enqueue, wait_for_task
from lessons.lesson07_durable_tasks.engine.crash_points import CRASH_AT
from lessons.lesson07_durable_tasks.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.waiting import wait_until

LESSON = "lesson07_durable_tasks"
POINT = "run_step:before_record"


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def worker_process(database: LessonDatabase, environment: dict[str, str]) -> WorkerProcess:
    return WorkerProcess(
        schema=database.schema,
        functions="exercises.lesson07.functions",
        poll_interval=0.02,
        heartbeat_interval=0.1,
        inactivity_threshold=0.6,
        verbose=True,
        environment=environment,
    )


def get_task(database: LessonDatabase, task_id: int) -> Task:
    with database.pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    assert task is not None
    return task


def exit_code(worker: WorkerProcess) -> int | None:
    try:
        return worker.wait(timeout=0.01)
    except subprocess.TimeoutExpired:
        return None


def runs_of(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_worker_killed_between_a_step_and_its_event_runs_the_step_again(
    database: LessonDatabase, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    with (
        worker_process(database, {CRASH_AT: POINT}) as first,
        worker_process(database, {}) as second,
    ):
        first.start()
        with database.pool.connection() as conn:
            task_id = enqueue(conn, "label_one_order", {"runs": str(runs)}, durable=True)
        wait_until(
            lambda: (
                exit_code(first) is not None
                or get_task(database, task_id).status == TaskStatus.COMPLETED
            ),
            message="the worker neither died nor completed the task",
        )
        if exit_code(first) is None:
            pytest.fail(
                f"the worker completed the task instead of dying at {POINT}: lesson 07 has "
                "no such crash point yet: see exercise 1 in its README",
                pytrace=False,
            )
        assert exit_code(first) == -9, f"the worker exited with {exit_code(first)}, not SIGKILL"
        assert runs_of(runs) == 1, "the worker should die after the step ran, once"
        with database.pool.connection() as conn:
            events = Querier(conn).list_task_events(task_id=task_id)
        assert events == [], "the worker should die before the step's event was written"
        second.start()
        task = wait_for_task(database.pool, task_id, timeout=30)
    assert task.status == TaskStatus.COMPLETED and task.attempt == 2, (
        f"task {task.id}: {task.status} on attempt {task.attempt}: {task.output}"
    )
    assert runs_of(runs) == 2, "the next attempt should have run the step again"
