"""Lesson 12: what a queue does with a task enqueued while its key is full.

cancel_newest fails the new task at once, even when eight producers enqueue at
the same moment; cancel_in_progress fails the key's older queued tasks and lets
its running ones finish; wait, the default, runs them all, one after another.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from psycopg_pool import ConnectionPool

from lessons.common.database import connect
from lessons.lesson12_flow_control.db.models import AtLimit, Task, TaskStatus
from lessons.lesson12_flow_control.engine.client import (
    enqueue,
    set_concurrency_limit,
    wait_for_task,
)
from tests.conftest import LessonDatabase
from tests.lesson12.functions_rates import (
    install_transitions_audit,
    most_holding_at_once,
    transitions_of,
)
from tests.lesson12.local_workers import get_task, local_worker
from tests.recording import open_gate
from tests.waiting import wait_until

LESSON = "lesson12_flow_control"
QUEUE = "deploys"
KEY = "tenant-a"


def error_type(task: Task) -> Any:
    return (task.output or {}).get("error", {}).get("type")


def enqueue_keyed(pool: ConnectionPool, task_name: str, input: Any, key: str = KEY) -> int:
    with pool.connection() as conn:
        return enqueue(conn, task_name, input, queue=QUEUE, concurrency_key=key)


def wait_running(pool: ConnectionPool, task_id: int) -> None:
    wait_until(
        lambda: get_task(pool, task_id).status == TaskStatus.RUNNING,
        message=f"task {task_id} never ran",
    )


def test_cancel_newest_fails_a_task_of_a_full_key_at_once_with_a_readable_reason(
    lesson_database: Callable[..., LessonDatabase], tmp_path: Path
) -> None:
    """Limit 1, one task of the key running: a new task of the key comes back
    failed, ConcurrencyLimitReached, never started, with a message naming its key;
    a task of another key is queued as usual."""
    database = lesson_database(LESSON)
    with database.pool.connection() as conn:
        set_concurrency_limit(conn, QUEUE, 1, at_limit=AtLimit.CANCEL_NEWEST)
    with local_worker(database.pool, queue=QUEUE):
        running = enqueue_keyed(database.pool, "hold_at_gate", {"gate": str(tmp_path / "gate")})
        wait_running(database.pool, running)
        rejected = get_task(database.pool, enqueue_keyed(database.pool, "work", {"n": 1}))
        other_key = enqueue_keyed(database.pool, "work", {"n": 2}, key="tenant-b")
        open_gate(tmp_path / "gate")
        assert wait_for_task(database.pool, running).status == TaskStatus.COMPLETED
        assert wait_for_task(database.pool, other_key).status == TaskStatus.COMPLETED
    assert rejected.status == TaskStatus.FAILED
    assert (rejected.attempt, rejected.started_at) == (0, None)
    assert error_type(rejected) == "ConcurrencyLimitReached"
    assert KEY in rejected.output["error"]["message"]  # type: ignore[index]


def test_cancel_newest_admits_exactly_one_of_eight_producers_enqueueing_at_once(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    """Eight threads, each on its own connection, enqueue a task of the same key at
    the same moment, limit 1, nothing running and no worker: the key's lock makes
    them take turns, so exactly one is queued and seven fail."""
    database = lesson_database(LESSON)
    with database.pool.connection() as conn:
        set_concurrency_limit(conn, QUEUE, 1, at_limit=AtLimit.CANCEL_NEWEST)
    producers = 8
    start_together = threading.Barrier(producers)
    task_ids: list[int] = []
    errors: list[BaseException] = []

    def produce(n: int) -> None:
        try:
            with connect(database.url, schema=database.schema) as conn:
                start_together.wait(timeout=30)
                task_ids.append(enqueue(conn, "work", {"n": n}, queue=QUEUE, concurrency_key=KEY))
        except BaseException as error:  # reported by the test's thread, below
            errors.append(error)

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(producers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    tasks = [get_task(database.pool, task_id) for task_id in task_ids]
    queued = [task for task in tasks if task.status == TaskStatus.QUEUED]
    failed = [task for task in tasks if task.status == TaskStatus.FAILED]
    assert (len(queued), len(failed)) == (1, producers - 1)
    assert {error_type(task) for task in failed} == {"ConcurrencyLimitReached"}


def test_cancel_in_progress_fails_older_queued_tasks_and_lets_running_ones_finish(
    lesson_database: Callable[..., LessonDatabase], tmp_path: Path
) -> None:
    """Limit 2, two tasks of the key running, five enqueued after them: the three
    oldest queued fail Superseded, the newest two stay queued and then run.

    The two running tasks are not stopped: they finish normally, once let go.
    Stopping a task halfway is cancellation, lesson 13's."""
    database = lesson_database(LESSON)
    install_transitions_audit(database.pool)
    with database.pool.connection() as conn:
        set_concurrency_limit(conn, QUEUE, 2, at_limit=AtLimit.CANCEL_IN_PROGRESS)
    gate = str(tmp_path / "gate")
    with local_worker(database.pool, queue=QUEUE):
        running = [enqueue_keyed(database.pool, "hold_at_gate", {"gate": gate}) for _ in "ab"]
        for task_id in running:
            wait_running(database.pool, task_id)
        later = [enqueue_keyed(database.pool, "work", {"n": n}) for n in range(5)]
        before_the_gate = [get_task(database.pool, task_id) for task_id in later]
        open_gate(gate)
        finished = [wait_for_task(database.pool, task_id) for task_id in running + later]
    assert [task.status for task in before_the_gate] == ["failed"] * 3 + ["queued"] * 2
    assert {error_type(task) for task in before_the_gate[:3]} == {"Superseded"}
    assert [task.status for task in finished] == ["completed"] * 2 + ["failed"] * 3 + [
        "completed"
    ] * 2
    for task_id in running:  # ran once, to the end, never failed or requeued
        statuses = [new for _, _, new in transitions_of(database.pool, task_id)]
        assert statuses == ["queued", "running", "completed"]
    assert most_holding_at_once(database.pool, KEY, {"running"}) == 2


def test_wait_lets_every_task_of_a_full_key_run_one_after_another(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    """The default strategy: six tasks of one key, limit 1, a worker with four slots:
    all complete, never two at once."""
    database = lesson_database(LESSON)
    install_transitions_audit(database.pool)
    with database.pool.connection() as conn:
        limit = set_concurrency_limit(conn, QUEUE, 1)
    assert limit.at_limit == AtLimit.WAIT
    task_ids = [enqueue_keyed(database.pool, "work", {"n": n, "seconds": 0.05}) for n in range(6)]
    with local_worker(database.pool, queue=QUEUE, slots=4):
        statuses = [wait_for_task(database.pool, task_id).status for task_id in task_ids]
    assert statuses == [TaskStatus.COMPLETED] * 6
    assert most_holding_at_once(database.pool, KEY, {"running"}) == 1
