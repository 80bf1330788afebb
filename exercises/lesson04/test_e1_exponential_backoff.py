"""Exponential backoff between retries.

A retry that starts at once hits a service that is down again at once, and a
thousand failing tasks retried at once are a thousand more calls to it. `enqueue()`
gains `retry_backoff` (seconds, default 0: retry at once, as now): the n-th retry of a
task may not start before `retry_backoff * 2 ** (n - 1)` seconds after the attempt
before it failed (0.5, 1, 2, ... s; capped at an hour). The check runs a task that
always fails, with `retry_backoff=0.5` and three retries, and measures on the
database's clock the time between the starts of its four attempts: at least 0.5,
1 and 2 s, the first of them under 2 s (the delays grow, they are not one long
wait), and the task fails after its fourth attempt.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from itertools import pairwise
from typing import Any

from exercises import expect
from lessons.lesson04_queue_improvements.db.models import TaskStatus
from lessons.lesson04_queue_improvements.engine import client
from lessons.lesson04_queue_improvements.engine.attempts import current_task
from lessons.lesson04_queue_improvements.engine.worker import Worker
from tests.conftest import LessonDatabase
from tests.recording import create_executions_table, record

LESSON = "lesson04_queue_improvements"
BACKOFF = 0.5
RETRIES = 3


def always_fails(input: dict[str, Any]) -> None:
    record(input["schema"], 1, "started", attempt=current_task().attempt)
    raise ConnectionError("the service is still down")


def test_the_time_between_attempts_doubles(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    expect(
        "retry_backoff" in inspect.signature(client.enqueue).parameters,
        "lesson04's enqueue() has no `retry_backoff` parameter yet: see exercise 1 in its README",
    )
    database = lesson_database(LESSON)
    with database.pool.connection() as conn:
        create_executions_table(conn)
        # Untyped: the shipped enqueue() has no retry_backoff, a solved one has.
        enqueue: Callable[..., int] = client.enqueue
        task_id = enqueue(
            conn,
            "always_fails",
            {"schema": database.schema},
            max_retries=RETRIES,
            retry_backoff=BACKOFF,
        )
    with Worker(database.pool, {"always_fails": always_fails}, poll_interval=0.02):
        # Waits for about 0.5 + 1 + 2 s of backoff; the deadline allows a slow machine.
        task = client.wait_for_task(database.pool, task_id, timeout=30)
    expect(
        task.status == TaskStatus.FAILED and task.attempt == RETRIES + 1,
        f"the task should fail after {RETRIES + 1} attempts; it is {task.status} after "
        f"{task.attempt}",
    )
    with database.pool.connection() as conn:
        starts = conn.execute(
            "SELECT attempt, recorded_at FROM executions WHERE event = 'started' ORDER BY seq"
        ).fetchall()
    expect(
        [attempt for attempt, _ in starts] == list(range(1, RETRIES + 2)),
        f"each attempt should start once, in order: {[attempt for attempt, _ in starts]}",
    )
    gaps = [(later - earlier).total_seconds() for (_, earlier), (_, later) in pairwise(starts)]
    shown = ", ".join(f"{gap:.2f} s" for gap in gaps)
    for retry, gap in enumerate(gaps, start=1):
        delay = BACKOFF * 2 ** (retry - 1)
        expect(
            gap >= delay,
            f"retry {retry} started {gap:.2f} s after the attempt before it, not after "
            f"{delay} s or more (the gaps: {shown})",
        )
    expect(
        gaps[0] < BACKOFF * 4,
        f"the first retry waited {gaps[0]:.2f} s: the delays should start at {BACKOFF} s "
        f"and double (the gaps: {shown})",
    )
