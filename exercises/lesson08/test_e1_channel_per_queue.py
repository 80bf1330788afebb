"""A notification channel per queue.

Every worker hears of every enqueue on `<schema>.task_queued`, and drops those of
other queues. Give each queue a channel of its own, `<schema>.task_queued.<queue>`,
that the triggers notify and a worker LISTENs to for its own queue. The check asserts
that an enqueue on one queue notifies that queue's channel and not another's, and that
a worker, with a fallback poll of a minute, claims at once when its queue's channel
alone is notified.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from psycopg import sql

from lessons.common.database import connect
from lessons.lesson08_listen_notify.db.models import TaskStatus
from lessons.lesson08_listen_notify.engine.client import enqueue, wait_for_task
from lessons.lesson08_listen_notify.engine.worker import Worker
from tests.conftest import LessonDatabase

LESSON = "lesson08_listen_notify"
END_MARK = "(end of the check's notifications)"
# Long enough that only a notification can start a task within PROMPTLY.
FALLBACK_POLL = 60.0
PROMPTLY = 5.0


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def channel(database: LessonDatabase, queue: str) -> str:
    return f"{database.schema}.task_queued.{queue}"


def channels_notified_by(database: LessonDatabase, enqueue_on: str, listen_to: list[str]) -> Any:
    """The channels among `listen_to` that an enqueue on queue `enqueue_on` notifies.

    A listener receives notifications in commit order, whatever their channel: once
    our own end mark, sent after the enqueue committed, arrives, all is in."""
    heard: set[str] = set()
    with connect(database.url) as listener:
        for name in listen_to:
            listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(name)))
        with database.pool.connection() as conn:
            enqueue(conn, "noop", {}, queue=enqueue_on)
            conn.execute("SELECT pg_notify(%s, %s)", (listen_to[0], END_MARK))
        for notification in listener.notifies(timeout=10):
            if notification.payload == END_MARK:
                return heard
            heard.add(notification.channel)
    raise TimeoutError("the end mark never arrived")


def test_an_enqueue_notifies_its_own_queue_channel_only(database: LessonDatabase) -> None:
    mine, other = channel(database, "mine"), channel(database, "other")
    heard = channels_notified_by(database, "mine", [other, mine])
    assert mine in heard, (
        f"an enqueue on queue mine did not notify {mine}: see exercise 1 in lesson 08's README"
    )
    assert other not in heard, f"an enqueue on queue mine notified {other} too"


def test_a_worker_wakes_up_on_its_queue_channel(database: LessonDatabase) -> None:
    with Worker(
        database.pool,
        {"noop": lambda input: input},
        queue="mine",
        slots=1,
        poll_interval=FALLBACK_POLL,
        heartbeat_interval=0.1,
        inactivity_threshold=0.6,
    ):
        # Enqueue behind the triggers' back, then notify the queue's channel by hand:
        # only a worker that listens there can start the task before its next poll.
        with database.pool.connection() as conn, conn.transaction():
            conn.execute("ALTER TABLE tasks DISABLE TRIGGER USER")
            task_id = enqueue(conn, "noop", {}, queue="mine")
            conn.execute("ALTER TABLE tasks ENABLE TRIGGER USER")
        with database.pool.connection() as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (channel(database, "mine"), "mine"))
        try:
            task = wait_for_task(database.pool, task_id, timeout=PROMPTLY)
        except TimeoutError:
            pytest.fail(
                f"the worker of queue mine did not wake up on {channel(database, 'mine')} "
                "(see exercise 1 in lesson 08's README)",
                pytrace=False,
            )
        assert task.status == TaskStatus.COMPLETED, task.output
