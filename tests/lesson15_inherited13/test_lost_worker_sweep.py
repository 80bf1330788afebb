"""The lost-worker sweep judges others only while this worker stays in touch.

The sweeper reads its worker's `healthy_since` before the statement runs. If
the heartbeat fails while the statement runs (it waited out an outage for a
pooled connection, or stalled in a network partition), the other workers may
not have had a lease's time to renew: the batch must roll back. No process can
be stopped at that exact instant, so these tests give the sweeper the two
readings of its heartbeat a worker would see, and run it on the real server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import pytest

from lessons.lesson15_operating_at_scale.db.models import Task, TaskStatus
from lessons.lesson15_operating_at_scale.db.queries import Querier
from lessons.lesson15_operating_at_scale.engine.client import enqueue
from lessons.lesson15_operating_at_scale.engine.sweeper import Sweeper
from lessons.lesson15_operating_at_scale.engine.transactions import TransactionLimits
from tests.conftest import LessonDatabase

LESSON = "lesson15_operating_at_scale"


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def task_of_a_worker_whose_lease_expired(database: LessonDatabase) -> int:
    """A task running on attempt 1 on a worker whose lease expired an hour ago."""
    with database.pool.connection() as conn:
        queries = Querier(conn)
        worker = queries.register_worker(name="frozen", queue="default", slots=1, lease_seconds=1)
        assert worker is not None
        task_id = enqueue(conn, "send_confirmation_email", {"order_id": "A-1"}, max_retries=0)
        claimed = queries.claim_tasks(
            worker_id=worker.id,
            queue="default",
            durable_task_names=[],
            task_names=["send_confirmation_email"],
            max_tasks=1,
            max_keys_visited=10,
        )
        assert [task.id for task in claimed] == [task_id]
        conn.execute(
            "UPDATE workers SET lease_expires_at = now() - interval '1 hour' WHERE id = %s",
            (worker.id,),
        )
    return task_id


def sweeper_of_a_live_worker(
    database: LessonDatabase, readings: Iterator[datetime | None]
) -> Sweeper:
    with database.pool.connection() as conn:
        worker = Querier(conn).register_worker(
            name="sweeping", queue="default", slots=1, lease_seconds=1
        )
    assert worker is not None
    return Sweeper(
        database.pool,
        worker_id=worker.id,
        interval=60,
        healthy_since=lambda: next(readings),
        limits=TransactionLimits.for_worker(1.0),
    )


def get_task(database: LessonDatabase, task_id: int) -> Task:
    with database.pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    assert task is not None
    return task


def test_a_sweeper_in_touch_throughout_fails_the_task_of_a_worker_whose_lease_expired(
    database: LessonDatabase,
) -> None:
    task_id = task_of_a_worker_whose_lease_expired(database)
    long_ago = datetime.now().astimezone() - timedelta(hours=2)
    sweeper_of_a_live_worker(database, iter([long_ago] * 3)).sweep()

    task = get_task(database, task_id)
    assert task.status == TaskStatus.FAILED
    assert task.output is not None
    assert task.output["error"]["type"] == "WorkerLost"


@pytest.mark.parametrize(
    "after_the_statement",
    [None, datetime.now().astimezone()],
    ids=["the heartbeat failed", "the heartbeat began a new run"],
)
def test_a_sweeper_whose_heartbeat_failed_during_the_statement_rolls_back_its_judgement(
    database: LessonDatabase, after_the_statement: datetime | None
) -> None:
    task_id = task_of_a_worker_whose_lease_expired(database)
    long_ago = datetime.now().astimezone() - timedelta(hours=2)
    sweeper_of_a_live_worker(database, iter([long_ago, after_the_statement])).sweep()

    task = get_task(database, task_id)
    assert (task.status, task.attempt) == (TaskStatus.RUNNING, 1)
