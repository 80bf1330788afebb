"""A poller waits only for the suspended tasks its worker has a function for (lessons 09-13).

An idle poller sleeps until the next suspended task of its queue is due
(SecondsUntilNextWakeUp), or its poll interval. A due task whose function the
worker does not have (a rolling deploy, a rollback, a worker that serves a
few of a queue's task names) is one its claims can never take: counted as
due, it tells the poller "0 s", and the poller claims in a loop, finding
nothing, for as long as no worker with the function comes. Each lesson's query
is asked, on the real server, what a worker with and without the function is
told. (Lesson 14 asks can_run_here, which also weighs code versions: see
tests/lesson14/test_versions_polling.py.)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import pytest

from tests.conftest import LessonDatabase

LESSONS_WITH_SUSPENSIONS = [
    "lesson09_durable_sleep",
    "lesson10_durable_events",
    "lesson11_retries_replays_forks",
    "lesson12_flow_control",
    "lesson13_cancellation_and_schedules",
]
POLL_INTERVAL = 5.0


@pytest.mark.parametrize("lesson", LESSONS_WITH_SUSPENSIONS)
def test_a_due_task_without_a_function_here_leaves_the_poller_to_its_interval(
    lesson_database: Callable[..., LessonDatabase], lesson: str
) -> None:
    database = lesson_database(lesson)
    client = importlib.import_module(f"lessons.{lesson}.engine.client")
    queries = importlib.import_module(f"lessons.{lesson}.db.queries")
    with database.pool.connection() as conn:
        task_id = client.enqueue(conn, "nightly_report", {"day": "2026-12-02"}, durable=True)
        # As a sleep whose time has come leaves it.
        conn.execute(
            "UPDATE tasks SET status = 'suspended', attempt = 1, started_at = now(),"
            " wake_at = now() - interval '1 second' WHERE id = %s",
            (task_id,),
        )

        def told(durable_task_names: list[str]) -> float:
            seconds: float | None = queries.Querier(conn).seconds_until_next_wake_up(
                queue="default",
                task_names=["nightly_report"],  # a plain function of that name is not it
                durable_task_names=durable_task_names,
                max_seconds=POLL_INTERVAL,
            )
            assert seconds is not None
            return seconds

        assert told(["nightly_report"]) == 0.0, "a worker that has the function claims now"
        assert told(["process_order"]) == POLL_INTERVAL
