"""Each step records how long it took.

A history that says what each step returned but not how long it took cannot answer
"why was this order slow?". Add a column `duration_seconds` to `task_events`: the
seconds the step's function ran, measured by the context around the call (a replayed
step keeps the duration of the run that recorded it). The check runs a durable task
whose steps are instant, one second long, and instant again: the long step's
duration must be 1 s or more (and no longer than the whole task), the instant ones'
under a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from exercises import expect
from lessons.lesson05_durable_event_log.db.models import TaskStatus
from lessons.lesson05_durable_event_log.engine.client import enqueue, wait_for_task
from lessons.lesson05_durable_event_log.engine.durable import DurableContext
from lessons.lesson05_durable_event_log.engine.worker import Worker
from tests.conftest import LessonDatabase

LESSON = "lesson05_durable_event_log"
LONG_STEP_SECONDS = 1.0


def instant(input: dict[str, Any]) -> dict[str, Any]:
    return {}


def one_second(input: dict[str, Any]) -> dict[str, Any]:
    time.sleep(LONG_STEP_SECONDS)
    return {}


def three_steps(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    ctx.run_step("instant_before", instant, {})
    ctx.run_step("one_second", one_second, {})
    ctx.run_step("instant_after", instant, {})
    return {}


def test_each_event_holds_its_steps_duration(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    database = lesson_database(LESSON)
    with database.pool.connection() as conn:
        column = conn.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = %s"
            " AND table_name = 'task_events' AND column_name = 'duration_seconds'",
            (database.schema,),
        ).fetchone()
    expect(
        column is not None,
        "lesson05's task_events has no `duration_seconds` column yet: see exercise 1 in its README",
    )
    started = time.monotonic()
    with database.pool.connection() as conn:
        task_id = enqueue(conn, "three_steps", {}, durable=True)
    with Worker(database.pool, durable_functions={"three_steps": three_steps}, poll_interval=0.02):
        task = wait_for_task(database.pool, task_id, timeout=30)
    whole_task = time.monotonic() - started
    expect(task.status == TaskStatus.COMPLETED, f"the task did not complete: {task.output}")
    with database.pool.connection() as conn:
        rows = conn.execute(
            "SELECT name, duration_seconds FROM task_events WHERE task_id = %s",
            (task_id,),
        ).fetchall()
    expect(
        len(rows) == 3 and all(duration is not None for _, duration in rows),
        f"every step's event should hold its duration: {rows}",
    )
    durations: dict[str, float] = {name: float(duration) for name, duration in rows}
    long_step = durations["one_second"]
    expect(
        LONG_STEP_SECONDS <= long_step <= whole_task,
        f"the one-second step's duration is {long_step} s: not between {LONG_STEP_SECONDS} "
        f"s and the whole task's {whole_task:.2f} s",
    )
    for name in ("instant_before", "instant_after"):
        expect(
            0 <= durations[name] < LONG_STEP_SECONDS,
            f"the instant step {name} took {durations[name]} s, by its event: the "
            "duration should be the step's own, not the time since the attempt started",
        )
