"""Lesson 05 through connection blips: the durable context's statements are tried
again, so a blip neither runs a recorded step again nor costs a retry.

A real worker process connects through a TCP proxy (tests/database_proxy.py);
the test cuts every connection through it while the worker is about to record a
step, for about two seconds, well within the worker's inactivity threshold (so
no worker looks dead, and the lease is never at stake).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lessons.lesson05_durable_event_log.db.models import TaskStatus
from lessons.lesson05_durable_event_log.db.queries import Querier
from lessons.lesson05_durable_event_log.engine.client import enqueue, wait_for_task
from lessons.lesson05_durable_event_log.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.database_proxy import DatabaseProxy
from tests.recording import open_gate
from tests.waiting import wait_until

LESSON = "lesson05_durable_event_log"
FUNCTIONS_MODULE = "tests.lesson05.functions"
# Long enough that a blip of two seconds and the retries after it fit well inside.
INACTIVITY_THRESHOLD = 10.0
BLIP_SECONDS = 2.0
# Longer than the statement retries' window (half the threshold), shorter than a lease.
OUTAGE_SECONDS = 6.5


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


@pytest.fixture
def proxy(database_url: str) -> Iterator[DatabaseProxy]:
    with DatabaseProxy(database_url) as running:
        yield running


FINISHED = (TaskStatus.COMPLETED, TaskStatus.FAILED)


def get_status(database: LessonDatabase, task_id: int) -> TaskStatus | None:
    with database.pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    return task.status if task else None


def runs_of(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def worker_through(proxy: DatabaseProxy, database: LessonDatabase) -> WorkerProcess:
    return WorkerProcess(
        schema=database.schema,
        functions=FUNCTIONS_MODULE,
        slots=1,
        poll_interval=0.05,
        heartbeat_interval=0.5,
        inactivity_threshold=INACTIVITY_THRESHOLD,
        verbose=True,
        environment={"DATABASE_URL": proxy.url},
    )


def enqueue_four_steps(database: LessonDatabase, runs: Path, gate: Path) -> int:
    with database.pool.connection() as conn:
        return enqueue(
            conn,
            "four_steps_through_a_blip",
            {"runs": str(runs), "gate": str(gate)},
            durable=True,
            max_retries=0,
        )


def test_a_blip_while_a_step_is_recorded_costs_neither_a_rerun_nor_a_retry(
    database: LessonDatabase, tmp_path: Path, proxy: DatabaseProxy
) -> None:
    """Four steps, `max_retries=0`: the connections are cut while step two returns
    (its event is being written), for two seconds. The task completes on attempt 1,
    every step run exactly once."""
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    task_id = enqueue_four_steps(database, runs, gate)
    with worker_through(proxy, database) as worker:
        worker.start()
        wait_until(lambda: runs_of(runs) == ["one", "two"], timeout=30, message=worker.log)
        proxy.cut()
        open_gate(gate)  # step two returns now, and its event meets the cut
        time.sleep(BLIP_SECONDS)  # the blip itself, not a wait for work
        proxy.restore()
        task = wait_for_task(database.pool, task_id, timeout=60)
        log = worker.log()
    assert task.status == TaskStatus.COMPLETED and task.attempt == 1, (task, log)
    assert task.output == ["one", "two", "three", "four"]
    assert runs_of(runs) == ["one", "two", "three", "four"]
    assert "again in" in log  # the cut was met, and ridden out


def test_an_outage_longer_than_the_retries_costs_the_task_no_retry(
    database: LessonDatabase, tmp_path: Path, proxy: DatabaseProxy
) -> None:
    """The same flow, the connections cut for longer than the statement retries
    last: step two's event cannot be written, and the attempt ends. The
    infrastructure ended it, not the task: it goes back to the queue without
    counting against `max_retries=0`, and attempt 2 replays step one, runs step
    two again (its output was never recorded) and completes."""
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    task_id = enqueue_four_steps(database, runs, gate)
    with worker_through(proxy, database) as worker:
        worker.start()
        wait_until(lambda: runs_of(runs) == ["one", "two"], timeout=30, message=worker.log)
        proxy.cut()
        open_gate(gate)
        time.sleep(OUTAGE_SECONDS)  # the outage itself, not a wait for work
        proxy.restore()
        task = wait_for_task(database.pool, task_id, timeout=60)
        log = worker.log()
    assert task.status == TaskStatus.COMPLETED and task.attempt == 2, (task, log)
    assert task.infrastructure_attempts == 1, task
    assert runs_of(runs) == ["one", "two", "two", "three", "four"]
    assert "DatabaseUnreachable" in log or "unreachable" in log


def test_repeated_blips_through_a_whole_flow_cost_neither_a_rerun_nor_a_retry(
    database: LessonDatabase, tmp_path: Path, proxy: DatabaseProxy
) -> None:
    """Four steps of 0.4 s each, `max_retries=0`, the connections cut for 0.5 s
    every 0.8 s from the start of step one until the task has finished: every
    step's event, and the history read, meet cuts. The task completes on attempt
    1, every step run exactly once."""
    runs = tmp_path / "runs"
    with database.pool.connection() as conn:
        task_id = enqueue(
            conn,
            "four_steps_through_a_blip",
            {"runs": str(runs), "pause": 0.4},
            durable=True,
            max_retries=0,
        )
    with worker_through(proxy, database) as worker:
        worker.start()
        wait_until(lambda: runs_of(runs) == ["one"], timeout=30, message=worker.log)
        blips = 0
        while get_status(database, task_id) not in FINISHED and blips < 30:
            proxy.cut()
            time.sleep(0.5)  # a blip, not a wait for work
            proxy.restore()
            blips += 1
            time.sleep(0.3)
        task = wait_for_task(database.pool, task_id, timeout=60)
        log = worker.log()
    assert blips >= 2, blips
    assert task.status == TaskStatus.COMPLETED and task.attempt == 1, (task, log)
    assert task.infrastructure_attempts == 0
    assert runs_of(runs) == ["one", "two", "three", "four"]
