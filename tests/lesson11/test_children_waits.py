"""Lesson 11, waits for children as lesson 09 left them: replaying finished
children costs no suspension, and a wait with a timeout records its deadline and
its timeout once, so that a fork after the wait replays the same timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from lessons.lesson11_retries_replays_forks.db.models import EventKind, Task, TaskStatus
from lessons.lesson11_retries_replays_forks.db.queries import Querier
from lessons.lesson11_retries_replays_forks.engine.client import wait_for_task
from lessons.lesson11_retries_replays_forks.engine.reruns import fork
from lessons.lesson11_retries_replays_forks.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.lesson11.functions import UNSERVED_QUEUE
from tests.lesson11.helpers import LESSON, PARENTS_QUEUE, POLL_INTERVAL, enqueue_durable, history

CHILDREN = 40

# Counts every UPDATE that suspends a task, rolled back or not (nextval() is not
# undone by a rollback).
COUNT_SUSPENSIONS = """
CREATE SEQUENCE suspensions;
CREATE FUNCTION count_suspension() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM nextval('suspensions');
    RETURN NEW;
END $$;
CREATE TRIGGER count_suspensions AFTER UPDATE OF status ON tasks
FOR EACH ROW WHEN (NEW.status = 'suspended') EXECUTE FUNCTION count_suspension();
"""


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


@contextmanager
def worker(database: LessonDatabase, queues: list[str]) -> Iterator[None]:
    with WorkerProcess(
        schema=database.schema,
        queues=queues,
        functions="tests.lesson11.functions",
        slots=2,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=0.1,
        inactivity_threshold=1.0,
    ) as process:
        process.start()
        yield


def run(database: LessonDatabase, task_id: int, queues: list[str]) -> Task:
    with worker(database, queues):
        return wait_for_task(database.pool, task_id, timeout=120)


def test_replaying_n_finished_children_suspends_once_per_child(database: LessonDatabase) -> None:
    with database.pool.connection() as conn:
        conn.execute(COUNT_SUSPENSIONS)
    task_id = enqueue_durable(database, "call_children_in_sequence", {"children": CHILDREN})
    completed = run(database, task_id, [PARENTS_QUEUE])

    assert completed.status == TaskStatus.COMPLETED, completed
    assert completed.output == [{"n": n} for n in range(CHILDREN)]
    with database.pool.connection() as conn:
        row = conn.execute("SELECT last_value FROM suspensions").fetchone()
    # One per new child at most; n(n + 1)/2 = 820 when each replayed wait suspends.
    assert row is not None and row[0] <= CHILDREN


def test_a_timed_out_wait_replays_its_timeout_in_a_fork_after_the_child_finished(
    database: LessonDatabase,
) -> None:
    input = {"n": 1, "queue": UNSERVED_QUEUE, "timeout": 1.0}
    task_id = enqueue_durable(database, "call_with_a_timeout", input)
    original = run(database, task_id, [PARENTS_QUEUE])
    assert original.status == TaskStatus.COMPLETED, original
    assert original.output == {"output": "timed out"}
    child, wait, _ = history(database.pool, task_id)
    assert wait.kind == EventKind.CHILD_WAIT and wait.output == {"timed_out": True}

    # The child runs at last, and finishes: the recorded timeout stands.
    assert child.child_task_id is not None
    finished_child = run(database, child.child_task_id, [UNSERVED_QUEUE])
    assert finished_child.status == TaskStatus.COMPLETED
    with database.pool.connection() as conn:
        forked = fork(conn, task_id, at_event=3)
    fork_done = run(database, forked.id, [PARENTS_QUEUE])

    assert fork_done.status == TaskStatus.COMPLETED, fork_done
    assert fork_done.output == {"output": "timed out"}
    with database.pool.connection() as conn:
        assert Querier(conn).get_task(id=child.child_task_id) == finished_child
