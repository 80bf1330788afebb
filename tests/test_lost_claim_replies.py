"""A claim whose answer is lost (claims.py, lessons 04-16): its tasks run again, on a
live worker, and lose none of their retries.

A claim commits on the server and answers over the network. When the answer is
lost, the database says the tasks run on this worker, and this worker never
heard of them; it is alive, so no sweep takes them back. Its heartbeat must find
them (owned, never received) and give them back to the queue.

Two ways in, each on the real server with a real worker: the poller's claim
commits and then raises the error a dead connection raises (the poller's own
path), and a task is marked running for the worker behind its back (the state a
lost answer leaves, whatever the path). Every task has max_retries=0: had the
lost claim cost an attempt, it would fail.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

import psycopg
import pytest

from tests.conftest import LESSONS_DIRECTORY, LessonDatabase

# Every lesson from 04 on, whose workers hold leases: any added later is covered too.
LESSONS_WITH_LEASES = sorted(
    path.name
    for path in LESSONS_DIRECTORY.glob("lesson[0-9][0-9]_*")
    if path.name >= "lesson04"  # two-digit numbers: names sort as their lessons do
)

QUEUE = "lost-claims"


def echo(value: Any) -> Any:
    return value


@pytest.fixture(params=LESSONS_WITH_LEASES)
def lesson(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def engine(lesson: str, module: str) -> ModuleType:
    return importlib.import_module(f"lessons.{lesson}.engine.{module}")


@pytest.fixture
def database(lesson: str, lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(lesson)


def live_worker(lesson: str, database: LessonDatabase) -> Any:
    """A worker with a short lease: it beats every 0.1 s, and stays alive throughout."""
    return engine(lesson, "worker").Worker(
        database.pool,
        {"echo": echo},
        queue=QUEUE,
        slots=2,
        poll_interval=0.02,
        heartbeat_interval=0.1,
        inactivity_threshold=2.0,
    )


def attempts_charged(lesson: str, task: Any) -> int:
    """The attempts that count against max_retries (lesson 05 on: not the infrastructure's)."""
    return int(task.attempt - getattr(task, "infrastructure_attempts", 0))


def test_a_claim_that_committed_and_lost_its_answer_gives_its_task_back(
    lesson: str, database: LessonDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    poller = engine(lesson, "poller")
    lost: list[int] = []

    class FirstClaimLosesItsAnswer(poller.Querier):  # type: ignore[name-defined,misc]
        def claim_tasks(self, **arguments: Any) -> Any:
            tasks = super().claim_tasks(**arguments)
            if tasks and not lost:
                if not self._conn.autocommit:
                    self._conn.commit()
                lost.extend(task.id for task in tasks)
                raise psycopg.OperationalError("server closed the connection unexpectedly")
            return tasks

    # Before the worker starts: its first claim must already be the patched one.
    monkeypatch.setattr(poller, "Querier", FirstClaimLosesItsAnswer)
    client = engine(lesson, "client")
    with live_worker(lesson, database):
        with database.pool.connection() as conn:
            task_id = client.enqueue(conn, "echo", {"n": 1}, queue=QUEUE, max_retries=0)
        task = client.wait_for_task(database.pool, task_id, timeout=15)
    assert lost == [task_id]
    assert task.status == "completed", task
    assert task.output == {"n": 1}
    assert attempts_charged(lesson, task) == 1, task


def test_a_task_owned_by_a_live_worker_that_never_received_it_runs_again(
    lesson: str, database: LessonDatabase
) -> None:
    client = engine(lesson, "client")
    with live_worker(lesson, database) as worker:
        task_id = mark_running_behind_the_workers_back(client, database, worker.id)
        task = client.wait_for_task(database.pool, task_id, timeout=15)
    assert task.status == "completed", task
    assert task.output == {"n": 2}
    assert attempts_charged(lesson, task) == 1, task


def mark_running_behind_the_workers_back(
    client: ModuleType, database: LessonDatabase, worker_id: int
) -> int:
    with database.pool.connection() as conn, conn.transaction():
        task_id = client.enqueue(conn, "echo", {"n": 2}, queue=QUEUE, max_retries=0)
        # What the claim's UPDATE leaves; in the enqueue's own transaction, so
        # that the worker's poller never sees the task queued.
        conn.execute(
            "UPDATE tasks SET status = 'running', attempt = attempt + 1, worker_id = %s,"
            " started_at = now(), schedule_deadline = NULL WHERE id = %s",
            (worker_id, task_id),
        )
    return int(task_id)
