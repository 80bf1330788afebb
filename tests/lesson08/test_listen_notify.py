"""Lesson 08: workers and waiting parents wake on notifications, and polling covers
what notifications miss.

Workers run with a very long poll interval wherever the claim is that a
notification, not a poll, did something: a task that starts within seconds, or
a parent that resumes within seconds, cannot have been woken by a poll.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from lessons.common.database import connect
from lessons.lesson08_listen_notify.db.models import Task, TaskStatus
from lessons.lesson08_listen_notify.db.queries import NotificationChannelsRow, Querier
from lessons.lesson08_listen_notify.demo.tasks import (
    DURABLE_FUNCTIONS,
    FUNCTIONS,
    ORDER_STEPS_QUEUE,
    ORDERS_QUEUE,
)
from lessons.lesson08_listen_notify.engine.client import enqueue, wait_for_task
from lessons.lesson08_listen_notify.engine.worker import Worker, listener_name
from lessons.lesson08_listen_notify.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.waiting import wait_until

LESSON = "lesson08_listen_notify"
# Far longer than any test: a task that starts promptly was not found by a poll.
VERY_LONG_POLL = 60.0
# What "promptly" means here: generous for a busy machine, tiny next to VERY_LONG_POLL.
PROMPTLY = 5.0


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def channels(pool: ConnectionPool) -> NotificationChannelsRow:
    with pool.connection() as conn:
        row = Querier(conn).notification_channels()
    assert row is not None
    return row


END_MARK = "(end of test notifications)"


@dataclass
class ChannelListener:
    """A connection of the test's own that LISTENs on one channel."""

    conn: psycopg.Connection[Any]
    channel: str
    pool: ConnectionPool

    def heard(self) -> list[str]:
        """Every payload sent on the channel since the last call, in order.

        "Nothing was sent" cannot be proven by waiting a while. Instead we send
        a mark of our own and read until it arrives: a listener receives
        notifications in the order their transactions committed, so whatever
        was committed before the mark arrives before it.
        """
        with self.pool.connection() as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (self.channel, END_MARK))
        payloads: list[str] = []
        for notification in self.conn.notifies(timeout=10):
            if notification.payload == END_MARK:
                return payloads
            payloads.append(notification.payload)
        raise TimeoutError("the end mark never arrived")


@contextmanager
def listening(database: LessonDatabase, channel: str) -> Iterator[ChannelListener]:
    with connect(database.url) as conn:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        yield ChannelListener(conn, channel, database.pool)


@pytest.fixture
def queued(database: LessonDatabase) -> Iterator[ChannelListener]:
    """Listens on the schema's task_queued channel."""
    with listening(database, channels(database.pool).task_queued) as listener:
        yield listener


@pytest.fixture
def finished(database: LessonDatabase) -> Iterator[ChannelListener]:
    """Listens on the schema's child_finished channel."""
    with listening(database, channels(database.pool).child_finished) as listener:
        yield listener


def started_after_commit(pool: ConnectionPool, task_id: int, committed_at: float) -> float:
    """Seconds from the commit of the task's enqueue to the first line of its function."""
    task = wait_for_task(pool, task_id, timeout=30)
    assert task.status == TaskStatus.COMPLETED, task
    assert task.output is not None
    return float(task.output["started_at"]) - committed_at


def enqueue_and_time(pool: ConnectionPool, queue: str) -> float:
    with pool.connection() as conn:
        task_id = enqueue(conn, "note_start", {}, queue=queue)
    return started_after_commit(pool, task_id, time.time())


def listener_pid(url: str, schema: str, worker_id: int) -> int | None:
    with connect(url) as conn:
        row = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
            (listener_name(schema, worker_id),),
        ).fetchone()
    return int(row[0]) if row else None


def terminate(url: str, backend_pid: int) -> None:
    with connect(url) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (backend_pid,))


def get_task(pool: ConnectionPool, task_id: int) -> Task:
    with pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    assert task is not None
    return task


# --- The notifications themselves ---------------------------------------------------


def test_a_transaction_notifies_once_per_queue_however_many_tasks_it_enqueues(
    database: LessonDatabase, queued: ChannelListener
) -> None:
    with database.pool.connection() as conn, conn.transaction():
        for number in range(50):
            enqueue(conn, "note_start", {"number": number}, queue="alpha")
        conn.execute(
            "INSERT INTO tasks (queue, task_name, display_name, input)"
            " SELECT q, 'note_start', 'note_start', '{}' FROM unnest(%s::text[]) AS q,"
            " generate_series(1, 20)",
            (["alpha", "beta"],),
        )
    assert sorted(queued.heard()) == ["alpha", "beta"]


def test_nothing_is_notified_when_the_enqueue_rolls_back(
    database: LessonDatabase, queued: ChannelListener
) -> None:
    with (
        database.pool.connection() as conn,
        pytest.raises(ZeroDivisionError),
        conn.transaction(),
    ):
        enqueue(conn, "note_start", {}, queue="alpha")
        raise ZeroDivisionError
    assert queued.heard() == []


def test_claims_and_results_are_silent_and_a_retry_notifies(
    database: LessonDatabase, queued: ChannelListener
) -> None:
    with database.pool.connection() as conn:
        task_id = enqueue(conn, "flaky_task", {"succeed_on_attempt": 2}, queue="alpha")
        assert queued.heard() == ["alpha"]
        queries = Querier(conn)
        worker = queries.register_worker(name="test", queue="alpha", slots=1, lease_seconds=10)
        assert worker is not None
        [claimed] = queries.claim_tasks(
            worker_id=worker.id,
            queue="alpha",
            task_names=["flaky_task"],
            durable_task_names=[],
            max_tasks=1,
        )
        assert queued.heard() == []  # a claim queues nothing

        def finish(succeeded: bool) -> None:
            queries.finish_attempts(
                worker_id=worker.id,
                ids=[task_id],
                attempts=[claimed.attempt],
                succeeded=[succeeded],
                retryable=[True],
                infrastructure=[False],
                outputs=["{}"],
            )

        finish(succeeded=False)  # retryable, retries left: back on the queue
        assert get_task(database.pool, task_id).status == TaskStatus.QUEUED
        assert queued.heard() == ["alpha"]
        [claimed] = queries.claim_tasks(
            worker_id=worker.id,
            queue="alpha",
            task_names=["flaky_task"],
            durable_task_names=[],
            max_tasks=1,
        )
        finish(succeeded=True)
        assert queued.heard() == []  # completing queues nothing


def test_each_schema_has_channels_of_its_own(
    lesson_database: Callable[..., LessonDatabase],
    database: LessonDatabase,
    queued: ChannelListener,
) -> None:
    other = lesson_database(LESSON)
    assert channels(other.pool) != channels(database.pool)
    with other.pool.connection() as conn:
        enqueue(conn, "note_start", {}, queue="alpha")
    assert queued.heard() == []


# --- Workers ----------------------------------------------------------------------


def test_with_a_very_long_poll_interval_new_tasks_still_start_promptly(
    database: LessonDatabase,
) -> None:
    with WorkerProcess(
        schema=database.schema, queues=["prompt"], slots=2, poll_interval=VERY_LONG_POLL
    ) as worker:
        worker.start()  # returns once the worker listens
        delays = []
        for _ in range(10):
            delays.append(enqueue_and_time(database.pool, "prompt"))
        assert worker.stop() == 0
    assert max(delays) < PROMPTLY, delays


def test_a_retry_wakes_the_worker_too(database: LessonDatabase) -> None:
    with WorkerProcess(
        schema=database.schema, queues=["retry"], poll_interval=VERY_LONG_POLL
    ) as worker:
        worker.start()
        with database.pool.connection() as conn:
            task_id = enqueue(conn, "flaky_task", {"succeed_on_attempt": 2}, queue="retry")
        started = time.monotonic()
        task = wait_for_task(database.pool, task_id, timeout=30)
        assert worker.stop() == 0
    assert task.status == TaskStatus.COMPLETED and task.attempt == 2
    assert time.monotonic() - started < PROMPTLY


def test_a_worker_whose_listener_is_killed_reconnects_and_loses_no_task(
    database: LessonDatabase,
) -> None:
    url, schema, pool = database.url, database.schema, database.pool
    with WorkerProcess(
        schema=schema, queues=["reconnect"], slots=4, poll_interval=VERY_LONG_POLL
    ) as worker:
        worker.start()
        first = wait_until(lambda: listener_pid(url, schema, worker.id))
        terminate(url, first)
        # Enqueued while the listener is gone or going: nobody hears about these.
        with pool.connection() as conn:
            during_gap = [enqueue(conn, "note_start", {}, queue="reconnect") for _ in range(10)]
        killed_at = time.monotonic()
        second = wait_until(
            lambda: (pid := listener_pid(url, schema, worker.id)) != first and pid,
            message="the listener did not come back",
        )
        tasks = [wait_for_task(pool, task_id, timeout=30) for task_id in during_gap]
        # The reconnected listener woke the poller: no 60 s poll was needed.
        assert time.monotonic() - killed_at < PROMPTLY
        assert [task.status for task in tasks] == [TaskStatus.COMPLETED] * len(tasks)
        # And notifications work again.
        assert enqueue_and_time(pool, "reconnect") < PROMPTLY
        assert worker.stop() == 0
        assert "lost its connection" in worker.log()
    assert second != first


def test_polling_covers_the_gap_while_the_listener_cannot_reconnect(
    database: LessonDatabase,
) -> None:
    url, pool = database.url, database.pool
    worker = Worker(
        pool,
        FUNCTIONS,
        queue="gap",
        slots=2,
        poll_interval=0.2,
        # The listener stays away for the whole test: polling alone must run the tasks.
        reconnect_interval=VERY_LONG_POLL,
    )
    with worker:
        first = worker.listener_backend_pid
        assert first is not None
        terminate(url, first)
        wait_until(lambda: worker.listener_backend_pid is None, message="the listener lived on")
        with pool.connection() as conn:
            during_gap = [enqueue(conn, "note_start", {}, queue="gap") for _ in range(5)]
        tasks = [wait_for_task(pool, task_id, timeout=10) for task_id in during_gap]
        assert worker.listener_backend_pid is None  # still away: polling ran them
        stopping = time.monotonic()
    # Stopping does not wait for the listener's long reconnect interval.
    assert time.monotonic() - stopping < PROMPTLY
    assert [task.status for task in tasks] == [TaskStatus.COMPLETED] * len(tasks)


# --- Parents waiting for their children -----------------------------------------------

ORDER = {
    "order_id": "T-1",
    "card": "4242-4242-4242-4242",
    "amount_cents": 4200,
    "email": "ada@example.com",
}


def tasks_named(pool: ConnectionPool, task_name: str) -> list[Task]:
    with pool.connection() as conn:
        return [task for task in Querier(conn).list_tasks() if task.task_name == task_name]


def test_a_finished_child_notifies_its_parent_and_nothing_else_does(
    database: LessonDatabase, finished: ChannelListener
) -> None:
    with database.pool.connection() as conn:
        queries = Querier(conn)
        parent_id = enqueue(conn, "process_order", ORDER, queue="parents", durable=True)
        child = queries.create_task(
            queue="children",
            task_name="note_start",
            display_name="note_start",
            input_={},
            priority=0,
            max_retries=1,
            execution_timeout_seconds=None,
            schedule_timeout_seconds=None,
            durable=False,
            parent_id=parent_id,
        )
        assert child is not None
        enqueue(conn, "note_start", {}, queue="children")  # a task with no parent
        worker = queries.register_worker(name="test", queue="children", slots=2, lease_seconds=10)
        assert worker is not None

        def run_both(succeeded: bool) -> None:
            claimed = queries.claim_tasks(
                worker_id=worker.id,
                queue="children",
                task_names=["note_start"],
                durable_task_names=[],
                max_tasks=2,
            )
            assert len(claimed) == 2
            queries.finish_attempts(
                worker_id=worker.id,
                ids=[task.id for task in claimed],
                attempts=[task.attempt for task in claimed],
                succeeded=[succeeded] * 2,
                retryable=[True] * 2,
                infrastructure=[False] * 2,
                outputs=["{}"] * 2,
            )

        run_both(succeeded=False)  # both back on the queue: nothing finished
        assert finished.heard() == []
        run_both(succeeded=True)
        assert finished.heard() == [str(parent_id)]  # the child's parent, once


def test_a_finished_child_wakes_its_parent_without_waiting_for_the_poll_interval(
    database: LessonDatabase,
) -> None:
    with WorkerProcess(
        schema=database.schema,
        queues=[ORDERS_QUEUE, ORDER_STEPS_QUEUE],
        slots=2,
        poll_interval=VERY_LONG_POLL,
    ) as worker:
        worker.start()
        with database.pool.connection() as conn:
            task_id = enqueue(conn, "process_order", ORDER, queue=ORDERS_QUEUE, durable=True)
        # The parent waits twice, for its charge and then for its email: each
        # time only a notification can wake it before the 60 s poll.
        task = wait_for_task(database.pool, task_id, timeout=PROMPTLY)
        assert worker.stop() == 0
    assert task.status == TaskStatus.COMPLETED, task
    assert task.output is not None and task.output["status"] == "confirmed"


def test_a_parent_whose_listener_missed_its_child_finishing_resumes_when_it_reconnects(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    database = lesson_database(LESSON, max_size=16)
    url, pool = database.url, database.pool
    # Polls far apart (but not so far that a failing test takes forever to stop).
    poll_interval = 2 * PROMPTLY
    parents = Worker(
        pool,
        FUNCTIONS,
        durable_functions=DURABLE_FUNCTIONS,
        queue=ORDERS_QUEUE,
        slots=1,
        poll_interval=poll_interval,
        reconnect_interval=2.0,
    )
    children = Worker(pool, FUNCTIONS, queue=ORDER_STEPS_QUEUE, poll_interval=poll_interval)
    parents.start()
    try:
        with pool.connection() as conn:
            task_id = enqueue(conn, "process_order", ORDER, queue=ORDERS_QUEUE, durable=True)
        # The parent spawns its charge and waits; nobody serves children yet.
        [charge] = wait_until(lambda: tasks_named(pool, "charge_payment"))
        listener = parents.listener_backend_pid
        assert listener is not None
        terminate(url, listener)
        wait_until(lambda: parents.listener_backend_pid is None, message="the listener lived on")
        children.start()
        wait_until(lambda: get_task(pool, charge.id).status == TaskStatus.COMPLETED)
        # The charge finished while the parent's worker was not listening.
        assert parents.listener_backend_pid is None
        task = wait_for_task(pool, task_id, timeout=PROMPTLY)
    finally:
        # Parents first: a parent still waiting needs its children to finish.
        parents.stop()
        children.stop()
    assert task.status == TaskStatus.COMPLETED, task
    assert task.output is not None and task.output["status"] == "confirmed"
