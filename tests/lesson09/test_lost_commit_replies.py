"""Lesson 09: a durable transaction whose commit reply is lost (the connection died
after the server committed) is resolved, not repeated, and not charged.

Played in this process: a transaction of the durable context commits, then
raises the error a dead connection raises, so that each operation meets an
ambiguous commit (spawn_child, call's spawn-and-suspend, sleep's first
suspension, wait_for_child's suspend-then-look). The retry must find what the
commit wrote: the child through its event (call's suspension too, committed with
it), wait_for_child's suspension through the task's row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from lessons.lesson09_durable_sleep.db.models import TaskStatus
from lessons.lesson09_durable_sleep.db.queries import Querier
from lessons.lesson09_durable_sleep.engine import durable
from lessons.lesson09_durable_sleep.engine.client import enqueue, wait_for_task
from lessons.lesson09_durable_sleep.engine.transactions import bounded_transaction
from lessons.lesson09_durable_sleep.engine.worker import Worker
from tests.conftest import LessonDatabase
from tests.lesson09.functions import CHILDREN_QUEUE, DURABLE_FUNCTIONS, FUNCTIONS
from tests.waiting import wait_until

LESSON = "lesson09_durable_sleep"
QUEUE = "parents"


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON, max_size=16)


@pytest.fixture
def lost_replies(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The first three durable transactions commit, then lose their reply. The
    list names the transactions that lost their reply."""
    lost: list[str] = []
    calls = [0]

    @contextmanager
    def commit_then_lose_the_reply(*args: Any, **kwargs: Any) -> Iterator[Any]:
        calls[0] += 1
        with bounded_transaction(*args, **kwargs) as transaction:
            yield transaction
        if calls[0] <= 3:
            lost.append(f"transaction {calls[0]}")
            raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(durable, "bounded_transaction", commit_then_lose_the_reply)
    return lost


def worker(database: LessonDatabase, queue: str) -> Worker:
    return Worker(
        database.pool,
        FUNCTIONS,
        durable_functions=DURABLE_FUNCTIONS,
        queue=queue,
        slots=2,
        poll_interval=0.05,
        heartbeat_interval=0.1,
        inactivity_threshold=2.0,
    )


@contextmanager
def workers(database: LessonDatabase) -> Iterator[None]:
    with ExitStack() as stack:
        for queue in (QUEUE, CHILDREN_QUEUE):
            stack.enter_context(worker(database, queue))
        yield


def test_lost_commit_replies_of_spawn_sleep_and_wait_are_resolved_not_repeated(
    database: LessonDatabase, lost_replies: list[str]
) -> None:
    pool = database.pool
    with pool.connection() as conn:
        task_id = enqueue(
            conn,
            "spawn_sleep_then_wait",
            {"n": 7, "seconds": 1},
            queue=QUEUE,
            durable=True,
            max_retries=0,
        )
    with workers(database):
        task = wait_for_task(pool, task_id, timeout=30)
    assert (task.status, task.attempt, task.output) == (TaskStatus.COMPLETED, 1, {"n": 7}), task
    # The spawn and the sleep; the wait then finds its child finished in the
    # history it loaded, and needs no transaction at all.
    assert lost_replies == ["transaction 1", "transaction 2"]
    with pool.connection() as conn:
        queries = Querier(conn)
        children = [row for row in queries.list_tasks() if row.parent_id == task_id]
        events = queries.list_task_events(task_id=task_id)
    assert len(children) == 1, children
    assert [(event.event_number, event.kind, event.attempt) for event in events] == [
        (1, "child", 1),
        (2, "sleep", 1),
        (3, "step", 1),
    ]
    assert events[0].child_task_id == children[0].id


# A function whose suspension to wait for a child meets a lost commit reply, and
# the transactions that lose theirs: call's one (the spawn, the event and the
# suspension), or spawn_child's and then wait_for_child's suspend-then-look.
SUSPENDING_WAITS = [
    ("call_on_the_children_queue", ["transaction 1"]),
    ("spawn_then_wait_on_the_children_queue", ["transaction 1", "transaction 2"]),
]


@pytest.mark.parametrize(
    ("task_name", "lost"), SUSPENDING_WAITS, ids=[name for name, _ in SUSPENDING_WAITS]
)
def test_a_lost_commit_reply_of_a_wait_that_suspended_is_resolved_not_repeated(
    database: LessonDatabase, lost_replies: list[str], task_name: str, lost: list[str]
) -> None:
    """No worker serves the children's queue yet, so the wait meets a child that
    has not finished: the transaction that suspends the task commits and loses the
    reply. call's retry finds its event (the spawn and the suspension committed
    together); wait_for_child's finds the task suspended, at this attempt, by this
    worker. Either stops there instead of spawning or suspending again; the
    child's end wakes the task, and it completes on attempt 1 with one child."""
    pool = database.pool
    with pool.connection() as conn:
        task_id = enqueue(
            conn,
            task_name,
            {"n": 3},
            queue=QUEUE,
            durable=True,
            max_retries=0,
        )
    with worker(database, QUEUE) as parents:
        wait_until(
            # The run has ended (its retry found the suspension), not only suspended.
            lambda: (
                lost_replies == lost
                and get_status(pool, task_id) == TaskStatus.SUSPENDED
                and parents.slots_in_use == 0
            ),
            message=lambda: f"{lost_replies}, {get_status(pool, task_id)}",
        )
        with worker(database, CHILDREN_QUEUE):
            task = wait_for_task(pool, task_id, timeout=30)
    assert (task.status, task.attempt, task.output) == (TaskStatus.COMPLETED, 1, {"n": 3}), task
    assert lost_replies == lost
    # Suspending again would have been refused (the task was suspended already),
    # and the run would have stopped as one that lost its ownership.
    assert parents.attempts_lost == 0
    with pool.connection() as conn:
        children = [row for row in Querier(conn).list_tasks() if row.parent_id == task_id]
    assert len(children) == 1, children


def get_status(pool: ConnectionPool, task_id: int) -> TaskStatus | None:
    with pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    return task.status if task is not None else None


def test_a_lost_commit_reply_of_a_call_whose_child_ran_since_is_resolved_by_its_event(
    database: LessonDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """call's one transaction commits, and its reply is lost; before the retry looks,
    the child runs, and its end wakes the task, which another slot runs to the end.
    The task is not suspended any more, but the event names the child: the retry
    stops there. (Judged by the task's row, it would take the commit for lost and
    spawn again, which the fence refuses: a run that lost its attempt.) One child,
    the task completed on attempt 1, no attempt lost."""
    pool = database.pool
    with pool.connection() as conn:
        task_id = enqueue(
            conn, "call_on_the_children_queue", {"n": 5}, queue=QUEUE, durable=True, max_retries=0
        )
    lost: list[str] = []

    @contextmanager
    def commit_then_lose_the_reply_once_completed(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with bounded_transaction(*args, **kwargs) as transaction:
            yield transaction
        if not lost:
            lost.append("the call's transaction")
            wait_until(
                lambda: get_status(pool, task_id) == TaskStatus.COMPLETED,
                message="the child never woke the task, or its next run never completed it",
            )
            raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(durable, "bounded_transaction", commit_then_lose_the_reply_once_completed)
    with worker(database, QUEUE) as parents, worker(database, CHILDREN_QUEUE):
        task = wait_for_task(pool, task_id, timeout=30)
        # The run that lost the reply has resolved it, and ended.
        wait_until(lambda: parents.slots_in_use == 0, message="the first run never ended")
    assert (task.status, task.attempt, task.output) == (TaskStatus.COMPLETED, 1, {"n": 5}), task
    assert lost == ["the call's transaction"]
    assert parents.attempts_lost == 0
    with pool.connection() as conn:
        children = [row for row in Querier(conn).list_tasks() if row.parent_id == task_id]
        assert Querier(conn).get_task(id=task_id) == task, "the first run changed nothing"
    assert len(children) == 1, children
