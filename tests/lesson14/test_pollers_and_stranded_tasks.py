"""A poller waits only for the suspended tasks its worker can run.

A poller asks how long until the next suspended task of its queue is due
(SecondsUntilNextWakeUp), and sleeps that long. A durable task pinned to
another code version is due, for this worker, never: counted, it would make
the poller claim in a loop and find nothing, thousands of times a second, for
as long as the task waits for its own version's worker (for ever, if that
version is gone). These tests put such a task on the real server and ask the
query what a worker of each version is told.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from lessons.lesson14_changing_code_safely.db.queries import Querier
from lessons.lesson14_changing_code_safely.engine.client import drain_version, enqueue
from tests.conftest import LessonDatabase

LESSON = "lesson14_changing_code_safely"
POLL_INTERVAL = 5.0


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def due_task_pinned_to(database: LessonDatabase, code_version: str) -> int:
    """A durable task of version `code_version`, suspended, its wake-up time come."""
    with database.pool.connection() as conn:
        task_id = enqueue(conn, "process_order", {"order_id": "S-1"}, durable=True)
        conn.execute(
            "UPDATE tasks SET status = 'suspended', attempt = 1, code_version = %s,"
            " started_at = now(), wake_at = now() - interval '1 second' WHERE id = %s",
            (code_version, task_id),
        )
    return task_id


def seconds_until_due(database: LessonDatabase, code_version: str) -> float:
    """What a poller of a worker of `code_version` (with process_order) is told."""
    with database.pool.connection() as conn:
        seconds = Querier(conn).seconds_until_next_wake_up(
            queue="default",
            task_names=[],
            durable_task_names=["process_order"],
            code_version=code_version,
            max_seconds=POLL_INTERVAL,
        )
    assert seconds is not None
    return seconds


def test_a_due_task_of_another_version_leaves_the_poller_to_its_interval(
    database: LessonDatabase,
) -> None:
    due_task_pinned_to(database, "v1")
    assert seconds_until_due(database, "v1") == 0.0, "its own version claims it at once"
    assert seconds_until_due(database, "v2") == POLL_INTERVAL


def test_a_due_delayed_start_is_not_counted_by_a_draining_version(
    database: LessonDatabase,
) -> None:
    """A delayed durable task (suspended at attempt 0, no version yet) is due for
    any version that starts new tasks, and not for one that is draining."""
    with database.pool.connection() as conn:
        # A start time in the past: due at once, on any clock.
        start_at = datetime.now(UTC) - timedelta(minutes=1)
        enqueue(conn, "process_order", {"order_id": "D-1"}, durable=True, run_at=start_at)
        drain_version(conn, "v1")
    assert seconds_until_due(database, "v2") == 0.0
    assert seconds_until_due(database, "v1") == POLL_INTERVAL
