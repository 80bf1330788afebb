"""An overlap policy for schedules: `set_schedule(..., overlap="skip")`.

A backup scheduled every hour that once takes ninety minutes must not start a
second backup beside the first. Add an `overlap` parameter to set_schedule:
"allow" (the default, what the engine does now) fires every tick; "skip" skips a
tick while the task of the schedule's last fired tick has not finished, and
records it (what Temporal's Schedules call the overlap policy), instead of
enqueueing a second run. The check runs three schedules of every second, whose
task takes 2.5 s, on a worker of its own with slots to spare: with "skip", no
task of the schedule is enqueued while another of its tasks is unfinished (by the
check's own audit of every enqueue), no two run at once, the first tick fires,
and of at least 7 consecutive ticks, each recorded once, 2 or more are skipped
(recorded with no task) and 2 or more fired; with "allow", and with no `overlap`
given, every tick fires, and runs overlap.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta
from itertools import pairwise
from typing import Any

import pytest

from exercises import expect
from lessons.lesson13_cancellation_and_schedules.db.models import ScheduleTick, TickOutcome
from lessons.lesson13_cancellation_and_schedules.db.queries import Querier
from lessons.lesson13_cancellation_and_schedules.engine import client
from lessons.lesson13_cancellation_and_schedules.engine.worker import Worker
from tests.conftest import LessonDatabase
from tests.waiting import wait_until

LESSON = "lesson13_cancellation_and_schedules"
RUN_SECONDS = 2.5
TICKS = 7
ONE_AT_A_TIME = "one_at_a_time"
OVERLAPPING = "overlapping"
BY_DEFAULT = "by_default"
FIRED = (TickOutcome.FIRED, TickOutcome.FIRED_LATE)

# The check's audit: at every enqueue of a schedule's task, how many of that
# schedule's tasks were unfinished, the new one included (1: no overlap). An
# AFTER trigger sees its own statement's rows, and the newest committed state
# of the others: a task that the scheduler saw finished is finished here too.
AUDIT_SQL = """
CREATE TABLE overlap_audit (
    task_id bigint PRIMARY KEY,
    schedule text NOT NULL,
    unfinished integer NOT NULL
);

CREATE FUNCTION audit_overlap() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO overlap_audit (task_id, schedule, unfinished)
    SELECT new_task.id, new_task.input ->> 'schedule', (
        SELECT count(*) FROM tasks AS other
        WHERE other.input ->> 'schedule' = new_task.input ->> 'schedule'
          AND other.status NOT IN ('completed', 'failed', 'cancelled')
    )
    FROM inserted AS new_task
    WHERE new_task.input ? 'schedule';
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_inserted_audit_overlap
    AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT
    EXECUTE FUNCTION audit_overlap();
"""

# Runs of each schedule's task in progress now, and the most there ever were at
# once (the worker runs in this process).
running: dict[str, int] = defaultdict(int)
peak_running: dict[str, int] = defaultdict(int)
running_lock = threading.Lock()


def take_a_while(input: dict[str, Any]) -> dict[str, Any]:
    """A scheduled run that takes longer than its schedule's interval."""
    schedule = input["schedule"]
    with running_lock:
        running[schedule] += 1
        peak_running[schedule] = max(peak_running[schedule], running[schedule])
    try:
        time.sleep(RUN_SECONDS)  # the run's work: longer than a tick
    finally:
        with running_lock:
            running[schedule] -= 1
    return {"tick_at": input["tick_at"]}


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    running.clear()
    peak_running.clear()
    created = lesson_database(LESSON, max_size=12)
    with created.pool.connection() as conn:
        conn.execute(AUDIT_SQL)
    return created


def ticks_of(database: LessonDatabase, schedule: str) -> list[ScheduleTick]:
    with database.pool.connection() as conn:
        return Querier(conn).list_schedule_ticks(schedule=schedule)


def most_unfinished_at_an_enqueue(database: LessonDatabase) -> dict[str, int]:
    with database.pool.connection() as conn:
        rows = conn.execute(
            "SELECT schedule, max(unfinished) FROM overlap_audit GROUP BY schedule"
        ).fetchall()
    return {schedule: most for schedule, most in rows}


def describe(ticks: list[ScheduleTick]) -> str:
    return ", ".join(f"{tick.tick_at:%H:%M:%S} {tick.outcome}" for tick in ticks)


def test_a_schedule_that_skips_overlaps_runs_one_task_at_a_time(
    database: LessonDatabase,
) -> None:
    expect(
        "overlap" in inspect.signature(client.set_schedule).parameters,
        "lesson 13's set_schedule() has no `overlap` parameter yet: see exercise 2 in its README",
    )
    # Called through a plain callable: the parameter is the exercise's.
    set_schedule: Callable[..., Any] = client.set_schedule
    worker = Worker(
        database.pool,
        {"take_a_while": take_a_while},
        # Room for every overlapping run: no tick waits for a slot.
        slots=8,
        poll_interval=0.05,
        # The scheduler looks at the schedules at least once per heartbeat interval.
        heartbeat_interval=0.1,
        inactivity_threshold=1.0,
    )
    with worker:
        with database.pool.connection() as conn:
            set_schedule(conn, ONE_AT_A_TIME, "take_a_while", {}, every=1.0, overlap="skip")
            set_schedule(conn, OVERLAPPING, "take_a_while", {}, every=1.0, overlap="allow")
            set_schedule(conn, BY_DEFAULT, "take_a_while", {}, every=1.0)
        wait_until(
            lambda: len(ticks_of(database, ONE_AT_A_TIME)) >= TICKS,
            timeout=30,
            message=lambda: (
                f"the schedule of every second recorded only "
                f"{len(ticks_of(database, ONE_AT_A_TIME))} ticks: "
                f"{describe(ticks_of(database, ONE_AT_A_TIME))}"
            ),
        )
    unfinished = most_unfinished_at_an_enqueue(database)

    ticks = ticks_of(database, ONE_AT_A_TIME)
    gaps = {later.tick_at - earlier.tick_at for earlier, later in pairwise(ticks)}
    assert gaps == {timedelta(seconds=1)}, (
        f"the ticks of a schedule of every second are not one second apart: {describe(ticks)}"
    )
    fired = [tick for tick in ticks if tick.outcome in FIRED]
    skipped = [tick for tick in ticks if tick.outcome not in FIRED]
    expect(
        all(tick.task_id is None for tick in skipped) and all(tick.task_id for tick in fired),
        f"a skipped tick should be recorded with no task, a fired one with its task: "
        f"{[(tick.outcome, tick.task_id) for tick in ticks]}",
    )
    expect(
        unfinished.get(ONE_AT_A_TIME) == 1 and peak_running[ONE_AT_A_TIME] == 1,
        f"with overlap='skip', a tick enqueued a task while {unfinished.get(ONE_AT_A_TIME, 0) - 1} "
        f"other(s) of the schedule were unfinished, and {peak_running[ONE_AT_A_TIME]} ran at "
        f"once; ticks: {describe(ticks)}",
    )
    expect(
        ticks[0].outcome in FIRED and len(skipped) >= 2 and len(fired) >= 2,
        f"with overlap='skip' and a task of {RUN_SECONDS} s, a schedule of every second "
        f"should fire its first tick, skip (and record) the ticks that come while its task "
        f"runs, and fire again once it has finished; its ticks: {describe(ticks)}",
    )

    for schedule, said in ((OVERLAPPING, "overlap='allow'"), (BY_DEFAULT, "no overlap given")):
        others = ticks_of(database, schedule)
        expect(
            len(others) >= TICKS - 1 and all(tick.outcome in FIRED for tick in others),
            f"with {said}, every tick should fire: {describe(others)}",
        )
        expect(
            unfinished.get(schedule, 0) >= 2 and peak_running[schedule] >= 2,
            f"with {said}, a task of {RUN_SECONDS} s every second should overlap the next: "
            f"at most {unfinished.get(schedule, 0)} unfinished at an enqueue, "
            f"{peak_running[schedule]} running at once",
        )
