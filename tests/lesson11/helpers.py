"""What lesson 11's tests share: workers in this process, and reading the tables."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from psycopg_pool import ConnectionPool

from lessons.lesson11_retries_replays_forks.db.models import Task, TaskEvent
from lessons.lesson11_retries_replays_forks.db.queries import Querier
from lessons.lesson11_retries_replays_forks.demo.tasks import ORDERS_QUEUE
from lessons.lesson11_retries_replays_forks.engine.client import enqueue, push_event, wait_for_task
from lessons.lesson11_retries_replays_forks.engine.worker import Worker
from tests.conftest import LessonDatabase
from tests.lesson11.functions import DURABLE_FUNCTIONS, FUNCTIONS
from tests.waiting import wait_until

LESSON = "lesson11_retries_replays_forks"
PARENTS_QUEUE = "parents"
# Lesson 08's fallback: forks and replays must wake the workers by
# notification, not wait for a poll.
POLL_INTERVAL = 5.0


@contextmanager
def workers(database: LessonDatabase) -> Iterator[None]:
    """A worker in this process for the tests' queue and the orders', two slots each."""
    with ExitStack() as stack:
        for queue in (PARENTS_QUEUE, ORDERS_QUEUE):
            stack.enter_context(
                Worker(
                    database.pool,
                    FUNCTIONS,
                    durable_functions=DURABLE_FUNCTIONS,
                    queue=queue,
                    slots=2,
                    poll_interval=POLL_INTERVAL,
                    heartbeat_interval=0.1,
                    inactivity_threshold=1.0,
                )
            )
        yield


def enqueue_durable(
    database: LessonDatabase,
    task_name: str,
    input: Any,
    *,
    queue: str = PARENTS_QUEUE,
    max_retries: int = 3,
) -> int:
    with database.pool.connection() as conn:
        return enqueue(conn, task_name, input, queue=queue, durable=True, max_retries=max_retries)


def run_until_finished(database: LessonDatabase, task_id: int) -> Task:
    with workers(database):
        return wait_for_task(database.pool, task_id)


def push_once_waiting(database: LessonDatabase, task_id: int, key: str, payload: Any) -> None:
    """Push the event `key` once the task waits for it: an event only ends the
    waits open when it is pushed (lesson 10)."""

    def waiting() -> bool:
        with database.pool.connection() as conn:
            waits = Querier(conn).list_event_waits()
        return any(w.task_id == task_id and w.key == key and w.ended_at is None for w in waits)

    wait_until(waiting, message=f"task {task_id} never waited for {key}")
    with database.pool.connection() as conn:
        push_event(conn, key, payload)


def get_task(pool: ConnectionPool, task_id: int) -> Task:
    with pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    assert task is not None, f"there is no task {task_id}"
    return task


def history(pool: ConnectionPool, task_id: int) -> list[TaskEvent]:
    with pool.connection() as conn:
        return Querier(conn).list_task_events(task_id=task_id)


def all_tasks(pool: ConnectionPool) -> list[Task]:
    with pool.connection() as conn:
        return Querier(conn).list_tasks()
