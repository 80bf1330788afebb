"""A client's wait woken by a notification, not by its poll.

`client.wait_for_task` reads the task every `poll_interval` until it has finished.
Make a task's end notify `<schema>.task_finished` (payload: the task's id), and
`wait_for_task` LISTEN on it before its first look, so that it looks again the
moment the task ends; `poll_interval` is only its fallback. The check holds a task
running, waits for it with a fallback poll of a minute, lets it finish once the wait
has looked, and asserts that the wait returns within a few seconds.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from lessons.lesson08_listen_notify.db.models import Task, TaskStatus
from lessons.lesson08_listen_notify.db.queries import Querier
from lessons.lesson08_listen_notify.engine.client import enqueue, wait_for_task
from lessons.lesson08_listen_notify.engine.worker import Worker
from tests.conftest import LessonDatabase
from tests.waiting import wait_until

LESSON = "lesson08_listen_notify"
# Long enough that only a notification can end the wait within PROMPTLY.
FALLBACK_POLL = 60.0
PROMPTLY = 5.0

# Set by the check to let the held task finish.
RELEASE = threading.Event()


def held(input: Any) -> Any:
    """A task that runs until the check releases it (a minute at most)."""
    RELEASE.wait(timeout=60)
    return {"released": RELEASE.is_set()}


class WatchedPool(ConnectionPool):
    """A pool that says when a connection it lent has come back: the wait has looked."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.returned_once = threading.Event()

    @contextlib.contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection[Any]]:
        with super().connection(timeout) as conn:
            yield conn
        self.returned_once.set()


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def is_running(database: LessonDatabase, task_id: int) -> bool:
    with database.pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    return task is not None and task.status == TaskStatus.RUNNING


def test_a_wait_returns_when_the_task_ends_not_at_its_next_poll(
    database: LessonDatabase,
) -> None:
    RELEASE.clear()
    waited: list[Task | BaseException] = []
    with database.pool.connection() as conn:
        task_id = enqueue(conn, "held", None)
    with (
        WatchedPool(
            database.pool.conninfo, kwargs=database.pool.kwargs, min_size=1, max_size=2
        ) as client_pool,
        Worker(
            database.pool,
            {"held": held},
            slots=1,
            poll_interval=0.05,
            heartbeat_interval=0.1,
            inactivity_threshold=0.6,
        ),
    ):
        wait_until(lambda: is_running(database, task_id), message="the task never started")

        def wait() -> None:
            try:
                waited.append(
                    wait_for_task(client_pool, task_id, timeout=90, poll_interval=FALLBACK_POLL)
                )
            except BaseException as error:
                waited.append(error)

        # A daemon: a wait that only polls would sleep a minute past the check's end.
        waiter = threading.Thread(target=wait, name="wait_for_task", daemon=True)
        waiter.start()
        # Let the task finish once the wait has looked (a wait that reads the task on
        # a connection of its own instead is given a few seconds to look first).
        client_pool.returned_once.wait(timeout=PROMPTLY)
        released_at = time.monotonic()
        RELEASE.set()
        waiter.join(timeout=PROMPTLY)
        waited_for = time.monotonic() - released_at
        if waiter.is_alive():
            pytest.fail(
                f"wait_for_task had not returned {waited_for:.1f} s after the task was "
                f"let finish, with poll_interval={FALLBACK_POLL:.0f}: it should wake when the "
                "task's end is announced, not at its next poll (see exercise 2 in lesson "
                "08's README)",
                pytrace=False,
            )
    [outcome] = waited
    if isinstance(outcome, BaseException):
        raise outcome
    assert outcome.id == task_id and outcome.status == TaskStatus.COMPLETED, outcome
    assert outcome.output == {"released": True}
