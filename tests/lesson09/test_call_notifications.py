"""Lesson 09, `call`'s child is announced to nobody: the transaction that
suspends the parent creates the child without a notification, and the worker
that ran the parent claims it, woken in its own process. Every other insert
still notifies its queue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from lessons.common.database import connect
from lessons.lesson09_durable_sleep.db.models import Task, TaskStatus
from lessons.lesson09_durable_sleep.db.queries import Querier
from lessons.lesson09_durable_sleep.engine.client import enqueue, wait_for_task
from lessons.lesson09_durable_sleep.engine.worker import Worker
from tests.conftest import LessonDatabase
from tests.lesson09.functions import DURABLE_FUNCTIONS, FUNCTIONS

LESSON = "lesson09_durable_sleep"
QUEUE = "shared"
# Far longer than the test's deadlines: a child nobody wakes a poller for
# would wait this long, and the test would fail.
POLL_INTERVAL = 60.0
SENTINEL = "sentinel: nothing after this"


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


class Announcements:
    """A session that LISTENs on the schema's task_queued channel."""

    def __init__(self, database: LessonDatabase) -> None:
        self._database = database
        self._conn = connect(database.url, schema=database.schema)
        channels = Querier(self._conn).notification_channels()
        assert channels is not None
        self.channel = channels.task_queued
        self._conn.execute(
            psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(self.channel))
        )

    def since_last(self) -> list[str]:
        """The queues announced since the last call, in order: everything up to a
        sentinel notification sent now (delivered after whatever committed before it)."""
        with connect(self._database.url) as other:
            other.execute("SELECT pg_notify(%s, %s)", (self.channel, SENTINEL))
        queues: list[str] = []
        for notification in self._conn.notifies(timeout=10):
            if notification.payload == SENTINEL:
                return queues
            queues.append(notification.payload)
        raise AssertionError(f"the sentinel never came; heard {queues}")

    def close(self) -> None:
        self._conn.close()


@contextmanager
def announcements(database: LessonDatabase) -> Iterator[Announcements]:
    listening = Announcements(database)
    try:
        yield listening
    finally:
        listening.close()


def test_calls_child_is_announced_to_nobody_and_claimed_by_the_worker_that_spawned_it(
    database: LessonDatabase,
) -> None:
    """One parent on a worker with free slots: after its claim (not full) the
    poller waits for a hint or its next poll, a minute away. Only the wake-up
    the worker gives itself can start the child within the deadline."""
    pool = database.pool
    with (
        announcements(database) as heard,
        Worker(
            pool,
            FUNCTIONS,
            durable_functions=DURABLE_FUNCTIONS,
            queue=QUEUE,
            slots=4,
            poll_interval=POLL_INTERVAL,
            heartbeat_interval=0.1,
            inactivity_threshold=0.6,
        ),
    ):
        with pool.connection() as conn:
            parent_id = enqueue(conn, "call_a_child", {"n": 7}, queue=QUEUE, durable=True)
        parent = wait_for_task(pool, parent_id, timeout=10)
        assert (parent.status, parent.output) == (TaskStatus.COMPLETED, {"n": 7})
        # The enqueue and the parent's wake-up; nothing for the child.
        assert heard.since_last() == [QUEUE, QUEUE]
    with pool.connection() as conn:
        (child,) = [t for t in Querier(conn).list_tasks() if t.parent_id == parent_id]
    assert child.status == TaskStatus.COMPLETED
    assert child.worker_id == parent.worker_id


def insert_task(
    conn: psycopg.Connection[Any], *, queue: str = QUEUE, parent_id: int | None = None
) -> Task:
    task = Querier(conn).create_task(
        queue=queue,
        task_name="echo",
        display_name="echo",
        input_=psycopg.types.json.Jsonb({}),
        priority=0,
        max_retries=0,
        execution_timeout_seconds=None,
        schedule_timeout_seconds=None,
        durable=parent_id is None,
        parent_id=parent_id,
    )
    assert task is not None
    return task


def running_parent(conn: psycopg.Connection[Any]) -> Task:
    """A durable task running on worker 1 (no worker row is needed: no foreign key)."""
    parent = insert_task(conn)
    conn.execute(
        "UPDATE tasks SET status = 'running', attempt = 1, worker_id = 1, started_at = now() "
        "WHERE id = %s",
        (parent.id,),
    )
    return parent


def suspend(conn: psycopg.Connection[Any], parent: Task) -> None:
    suspended = Querier(conn).suspend_task(id=parent.id, attempt=1, worker_id=1, wake_at=None)
    assert suspended is not None


def test_only_a_child_whose_parent_this_transaction_suspended_on_its_queue_is_not_announced(
    database: LessonDatabase,
) -> None:
    with announcements(database) as heard, connect(database.url, schema=database.schema) as conn:
        parent = running_parent(conn)
        assert heard.since_last() == [QUEUE], "a client's enqueue"

        with conn.transaction():
            suspend(conn, parent)
            insert_task(conn, parent_id=parent.id)
        assert heard.since_last() == [], "call's child: its worker claims it"

        parent = running_parent(conn)
        heard.since_last()
        insert_task(conn, parent_id=parent.id)
        assert heard.since_last() == [QUEUE], "spawn_child: the parent goes on running"

        with conn.transaction():
            suspend(conn, parent)
            insert_task(conn, queue="elsewhere", parent_id=parent.id)
        assert heard.since_last() == ["elsewhere"], "a child on another queue"

        insert_task(conn, parent_id=parent.id)
        assert heard.since_last() == [QUEUE], "a parent suspended by an earlier transaction"

        parent = running_parent(conn)
        heard.since_last()
        with conn.transaction():
            suspend(conn, parent)
            conn.execute(
                "INSERT INTO tasks (queue, task_name, display_name, input, parent_id) "
                "VALUES (%(queue)s, 'echo', 'echo', '{}', %(parent)s), "
                "(%(queue)s, 'echo', 'echo', '{}', NULL)",
                {"queue": QUEUE, "parent": parent.id},
            )
        assert heard.since_last() == [QUEUE], "one statement, a child and a task of nobody's"
