"""Lesson 10, a worker frozen inside wait_for_event's transaction must not keep its task.

The task's worker freezes itself (SIGSTOP, COURSE_FREEZE_AT) with the wait's
transaction open: the wait event and its row in event_waits written, the task's
row locked by the suspension, not yet committed. The sweeps pass over a locked
row (SKIP LOCKED), so without the transaction limits (engine/transactions.py)
the task would never be reassigned. With them the server ends the frozen
session within half its inactivity threshold, and a healthy worker takes the
task over once its lease expires (timed on the database's clock from the
earliest moment the sweeper's rule allows it: tests/takeovers.py). The wait
the frozen attempt opened was never committed, so the new attempt opens its
own, and the event pushed then ends it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from psycopg_pool import ConnectionPool

from lessons.lesson10_durable_events.db.models import Task, TaskStatus
from lessons.lesson10_durable_events.db.queries import Querier
from lessons.lesson10_durable_events.demo.tasks import ORDERS_QUEUE
from lessons.lesson10_durable_events.engine.client import enqueue, push_event, wait_for_task
from lessons.lesson10_durable_events.engine.crash_points import FREEZE_AT
from lessons.lesson10_durable_events.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.takeovers import assert_taken_back_in_time, is_frozen, record_takeovers
from tests.waiting import wait_until

LESSON = "lesson10_durable_events"
HEARTBEAT_INTERVAL = 0.2
INACTIVITY_THRESHOLD = 2.0


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def worker_process(
    database: LessonDatabase, environment: dict[str, str] | None = None
) -> WorkerProcess:
    return WorkerProcess(
        schema=database.schema,
        queues=[ORDERS_QUEUE],
        functions="tests.lesson10.functions",
        slots=2,
        poll_interval=0.1,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
        verbose=True,
        environment=environment,
    )


def get_task(pool: ConnectionPool, task_id: int) -> Task:
    with pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    assert task is not None
    return task


def test_a_worker_frozen_inside_wait_for_event_loses_its_task_within_two_thresholds(
    database: LessonDatabase,
) -> None:
    pool = database.pool
    record_takeovers(pool, database.schema)
    frozen = worker_process(database, environment={FREEZE_AT: "wait_for_event:before_commit"})
    healthy = worker_process(database)
    with frozen, healthy:
        frozen.start()
        with pool.connection() as conn:
            task_id = enqueue(
                conn,
                "wait_for_key",
                {"key": "parcel:1", "timeout": 60},
                queue=ORDERS_QUEUE,
                durable=True,
            )
        wait_until(lambda: is_frozen(frozen.pid), message=frozen.log)
        healthy.start()

        assert_taken_back_in_time(
            pool, database.schema, task_id, frozen, healthy, threshold=INACTIVITY_THRESHOLD
        )

        def waiting() -> bool:
            with pool.connection() as conn:
                waits = Querier(conn).list_event_waits()
            return any(wait.task_id == task_id and wait.ended_at is None for wait in waits)

        wait_until(waiting, message="the new attempt never opened its wait")
        with pool.connection() as conn:
            push_event(conn, "parcel:1", {"delivered": True})
        task = wait_for_task(pool, task_id, timeout=20)
        assert (task.status, task.output, task.attempt) == (
            TaskStatus.COMPLETED,
            {"payload": {"delivered": True}},
            2,
        ), healthy.log()
        with pool.connection() as conn:
            waits = [wait for wait in Querier(conn).list_event_waits() if wait.task_id == task_id]
        assert len(waits) == 1, "the frozen attempt's wait was never committed"
        assert healthy.stop() == 0, healthy.log()
