"""Lesson 11 carries lesson 10's two fixes to external events: a task that reaches
its wait while a push ending it has not committed gets the payload (never None),
and a push retried with its idempotency key is the same event, and ends no
second wait. The interleavings are driven one step at a time, as in lesson 10.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from lessons.common.database import connect
from lessons.lesson11_retries_replays_forks.db.models import Task
from lessons.lesson11_retries_replays_forks.db.queries import Querier
from lessons.lesson11_retries_replays_forks.engine.client import (
    PushedEvent,
    enqueue,
    push_event,
)
from lessons.lesson11_retries_replays_forks.engine.durable import DurableContext, TaskSuspended
from lessons.lesson11_retries_replays_forks.engine.statement_retries import StatementRetries
from lessons.lesson11_retries_replays_forks.engine.transactions import TransactionLimits
from tests.conftest import LessonDatabase
from tests.lesson11.helpers import LESSON
from tests.waiting import wait_until

QUEUE = "waits"
# The limits of a worker whose inactivity threshold is 10 s, for contexts made by hand.
LIMITS = TransactionLimits.for_worker(10)
RETRIES = StatementRetries.for_worker(10)


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON, max_size=16)


def waiting_task(pool: ConnectionPool, worker_id: int, key: str, queue: str = QUEUE) -> Task:
    """A task whose run, by hand, has opened a wait for `key` and suspended."""
    with pool.connection() as conn:
        enqueue(conn, "wait_for_ever", {}, queue=queue, durable=True)
    [task] = claim(pool, worker_id, queue)
    with pytest.raises(TaskSuspended):
        context = DurableContext.load(
            pool, worker_id=worker_id, task=task, limits=LIMITS, retries=RETRIES
        )
        context.wait_for_event(key, timeout=60)
    return task


def claim(pool: ConnectionPool, worker_id: int, queue: str = QUEUE) -> list[Task]:
    with pool.connection() as conn:
        return Querier(conn).claim_tasks(
            worker_id=worker_id,
            queue=queue,
            task_names=[],
            durable_task_names=["wait_for_ever"],
            max_tasks=1,
        )


def register_worker(pool: ConnectionPool) -> int:
    with pool.connection() as conn:
        registered = Querier(conn).register_worker(
            name="test", queue=QUEUE, slots=1, lease_seconds=10
        )
    assert registered is not None
    return registered.id


def running_again_with_its_wait_open(pool: ConnectionPool, key: str) -> tuple[int, Task]:
    """A task that waits for `key`, claimed again (woken for another reason)
    while its wait is still open: the worker's id, and the task."""
    worker_id = register_worker(pool)
    task = waiting_task(pool, worker_id, key)
    with pool.connection() as conn:
        Querier(conn).wake_tasks(ids=[task.id])
    [task] = claim(pool, worker_id)
    return worker_id, task


def blocked_by(pool: ConnectionPool, backend_pid: int) -> bool:
    """Whether some session waits for a lock that the session `backend_pid` holds."""
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
            (backend_pid,),
        ).fetchone()
    return row is not None and row[0] > 0


def read_the_outcome_in_a_thread(
    pool: ConnectionPool, worker_id: int, task: Task, key: str
) -> tuple[threading.Thread, list[Any]]:
    """The task's run reaching its wait, on a thread: what wait_for_event returned."""
    returned: list[Any] = []
    context = DurableContext.load(
        pool, worker_id=worker_id, task=task, limits=LIMITS, retries=RETRIES
    )
    reader = threading.Thread(
        target=lambda: returned.append(context.wait_for_event(key, timeout=60))
    )
    reader.start()
    return reader, returned


def replayed_outcome(pool: ConnectionPool, worker_id: int, task: Task, key: str) -> Any:
    context = DurableContext.load(
        pool, worker_id=worker_id, task=task, limits=LIMITS, retries=RETRIES
    )
    return context.wait_for_event(key, timeout=60)


def test_a_task_that_reaches_its_wait_while_a_push_in_a_long_transaction_ends_it_gets_the_payload(
    database: LessonDatabase,
) -> None:
    pool = database.pool
    worker_id, task = running_again_with_its_wait_open(pool, "k")
    with connect(database.url, schema=database.schema) as caller:
        caller.execute("BEGIN")
        pushed = push_event(caller, "k", {"approved": True})
        reader, returned = read_the_outcome_in_a_thread(pool, worker_id, task, "k")
        wait_until(
            lambda: blocked_by(pool, caller.info.backend_pid),
            message="the task's look at its wait did not wait for the push",
        )
        caller.execute("COMMIT")
        reader.join(timeout=10)
    assert pushed.woke_task_ids == [task.id]
    assert returned == [{"approved": True}]
    assert replayed_outcome(pool, worker_id, task, "k") == {"approved": True}


def test_a_task_that_reaches_its_wait_while_an_autocommit_push_ends_it_gets_the_payload(
    database: LessonDatabase,
) -> None:
    """The push is held between ending the wait and committing: its WakeTasks
    waits for a lock the test holds on the task's row."""
    pool = database.pool
    worker_id, task = running_again_with_its_wait_open(pool, "k")
    with (
        connect(database.url, schema=database.schema) as holder,
        connect(database.url, schema=database.schema) as push_conn,
    ):
        holder.execute("BEGIN")
        holder.execute("SELECT 1 FROM tasks WHERE id = %s FOR SHARE", (task.id,))
        pushed: list[PushedEvent] = []
        pusher = threading.Thread(
            target=lambda: pushed.append(push_event(push_conn, "k", {"approved": True}))
        )
        pusher.start()
        wait_until(
            lambda: blocked_by(pool, holder.info.backend_pid),
            message="the push did not wait for the task's row",
        )
        reader, returned = read_the_outcome_in_a_thread(pool, worker_id, task, "k")
        wait_until(
            lambda: blocked_by(pool, push_conn.info.backend_pid),
            message="the task's look at its wait did not wait for the push",
        )
        holder.execute("COMMIT")
        pusher.join(timeout=10)
        reader.join(timeout=10)
    assert pushed[0].woke_task_ids == [task.id]
    assert returned == [{"approved": True}]
    assert replayed_outcome(pool, worker_id, task, "k") == {"approved": True}


def push_idempotent(pool: ConnectionPool, key: str, payload: Any, name: str) -> PushedEvent:
    with pool.connection() as conn:
        return push_event(conn, key, payload, idempotency_key=name)


def test_a_push_retried_with_its_idempotency_key_is_one_event_and_ends_no_second_wait(
    database: LessonDatabase,
) -> None:
    pool = database.pool
    worker_id = register_worker(pool)
    first = waiting_task(pool, worker_id, "k")
    pushed = push_idempotent(pool, "k", "approved", "delivery-1")
    # On a queue of its own: the push made the first task claimable on QUEUE.
    second = waiting_task(pool, worker_id, "k", queue="waits-2")
    retried = push_idempotent(pool, "k", "approved", "delivery-1")
    assert pushed == PushedEvent(id=pushed.id, woke_task_ids=[first.id], repeated=False)
    assert retried == PushedEvent(id=pushed.id, woke_task_ids=[], repeated=True)
    with pool.connection() as conn:
        queries = Querier(conn)
        waits = {wait.task_id: wait for wait in queries.list_event_waits()}
        [event] = queries.list_external_events()
    assert waits[first.id].external_event_id == pushed.id
    assert waits[second.id].ended_at is None, "the retried push ended the second wait"
    assert (event.idempotency_key, event.pushes) == ("delivery-1", 2)


@pytest.mark.parametrize("first_ends", ["COMMIT", "ROLLBACK"])
def test_a_push_with_the_idempotency_key_of_a_push_not_yet_committed_waits_for_it(
    database: LessonDatabase, first_ends: str
) -> None:
    pool = database.pool
    with (
        connect(database.url, schema=database.schema) as first,
        connect(database.url, schema=database.schema) as second,
    ):
        first.execute("BEGIN")
        first_event = push_event(first, "k", 1, idempotency_key="delivery-1")
        second_result: list[PushedEvent] = []
        pusher = threading.Thread(
            target=lambda: second_result.append(
                push_event(second, "k", 1, idempotency_key="delivery-1")
            )
        )
        pusher.start()
        wait_until(
            lambda: blocked_by(pool, first.info.backend_pid),
            message="the second push did not wait for the first",
        )
        first.execute(first_ends)
        pusher.join(timeout=10)

    with pool.connection() as conn:
        [event] = Querier(conn).list_external_events()
    [second_event] = second_result
    if first_ends == "COMMIT":
        assert second_event == PushedEvent(id=first_event.id, woke_task_ids=[], repeated=True)
        assert (event.id, event.pushes) == (first_event.id, 2)
    else:
        assert not second_event.repeated and second_event.id != first_event.id
        assert (event.id, event.pushes) == (second_event.id, 1)
