"""Lesson 09, the cost of replaying finished children: none.

A durable function that calls n children one after the other runs n + 1 times
(each child's end wakes it), and each run replays every child before the new
one. Were each replayed wait to suspend the task and look at its child, run k
would write k suspensions, and the whole function n(n + 1)/2. A finished
child is final, so its wait replays from the history the run loaded: the
function suspends once per child, when that child is new.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from psycopg import sql

from lessons.lesson09_durable_sleep.db.models import TaskStatus
from lessons.lesson09_durable_sleep.engine.client import enqueue, wait_for_task
from lessons.lesson09_durable_sleep.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase

LESSON = "lesson09_durable_sleep"
POLL_INTERVAL = 5.0
HEARTBEAT_INTERVAL = 0.1
INACTIVITY_THRESHOLD = 0.6
CHILDREN = 40

# Counts every UPDATE that suspends a task, rolled back or not: nextval() is
# not undone by a rollback, and the suspension a wait undoes (its child had
# finished) is a write all the same.
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


def suspensions(database: LessonDatabase) -> int:
    with database.pool.connection() as conn:
        row = conn.execute(
            sql.SQL("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {}").format(
                sql.Identifier(database.schema, "suspensions")
            )
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_replaying_n_finished_children_suspends_once_per_child(database: LessonDatabase) -> None:
    pool = database.pool
    with pool.connection() as conn:
        conn.execute(COUNT_SUSPENSIONS)
        task_id = enqueue(
            conn, "call_children_in_sequence", {"children": CHILDREN}, queue="q", durable=True
        )
    with WorkerProcess(
        schema=database.schema,
        queues=["q"],
        functions="tests.lesson09.functions",
        slots=2,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
    ) as worker:
        worker.start()
        completed = wait_for_task(pool, task_id, timeout=120)

    assert completed.status == TaskStatus.COMPLETED, completed
    assert completed.output == [{"n": n} for n in range(CHILDREN)]
    # One per child (call spawns it and suspends in one transaction, never undone);
    # replaying each finished child again at every run would make it 40 * 41 / 2 = 820.
    assert suspensions(database) == CHILDREN
