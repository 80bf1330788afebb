"""Lesson 13: schedules (`client.set_schedule`, engine/schedules.py, engine/scheduler.py).

First the arithmetic, with no process: cron expressions read in a time zone
across a change of daylight saving time, the next tick and the last one, what a
firing does with due and missed ticks under each catch-up policy (also when more
are due than one firing takes), the refusals of set_schedule, and a redefinition
that starts a schedule afresh.

Then the real thing: four worker processes fire three schedules of every second
(one per catch-up policy) for sixty ticks, through a worker SIGKILLed at a tick,
an outage of every worker for five ticks or more, and a worker killed by its
crash point inside a firing: every tick has exactly one row saying what became
of it, and each fired tick exactly one task.
"""

from __future__ import annotations

import dataclasses
import re
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from psycopg_pool import ConnectionPool

from lessons.lesson15_operating_at_scale.db.models import (
    CatchUp,
    Schedule,
    ScheduleTick,
    TaskStatus,
    TickOutcome,
)
from lessons.lesson15_operating_at_scale.db.queries import Querier
from lessons.lesson15_operating_at_scale.engine.client import set_schedule
from lessons.lesson15_operating_at_scale.engine.crash_points import CRASH_AT
from lessons.lesson15_operating_at_scale.engine.scheduler import (
    Scheduler,
    tick_idempotency_key,
)
from lessons.lesson15_operating_at_scale.engine.schedules import (
    MAX_TICKS_PER_FIRING,
    ScheduleRule,
    plan_firing,
)
from lessons.lesson15_operating_at_scale.engine.transactions import TransactionLimits
from lessons.lesson15_operating_at_scale.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.recording import create_executions_table
from tests.waiting import wait_until

LESSON = "lesson15_operating_at_scale"
FUNCTIONS_MODULE = "tests.lesson15_inherited13.functions_starts"
PARIS = "Europe/Paris"
EVERY_SECOND = "* * * * * *"
SECOND = timedelta(seconds=1)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def database_now(pool: ConnectionPool) -> datetime:
    with pool.connection() as conn:
        now = Querier(conn).database_now()
    assert now is not None
    return now


# ---------------------------------------------------------------------------
# The arithmetic: cron in a time zone, next and last ticks
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "ticks", "local_times"),
    [
        # 09:00 in Paris is 08:00 UTC in winter and 07:00 UTC from 29 March.
        (
            "0 9 * * *",
            [utc(2026, 3, 28, 8), utc(2026, 3, 29, 7), utc(2026, 3, 30, 7)],
            ["2026-03-28 09:00 CET", "2026-03-29 09:00 CEST", "2026-03-30 09:00 CEST"],
        ),
        # 02:30 does not exist on 29 March (02:00 becomes 03:00): Debian cron,
        # which cronsim follows, fires at 03:00 instead, once; the next day at 02:30.
        (
            "30 2 * * *",
            [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1), utc(2026, 3, 30, 0, 30)],
            ["2026-03-28 02:30 CET", "2026-03-29 03:00 CEST", "2026-03-30 02:30 CEST"],
        ),
        # Every hour: 01:00 then 03:00 local, one hour apart, no tick lost or doubled.
        (
            "0 * * * *",
            [utc(2026, 3, 29, 0), utc(2026, 3, 29, 1), utc(2026, 3, 29, 2)],
            ["2026-03-29 01:00 CET", "2026-03-29 03:00 CEST", "2026-03-29 04:00 CEST"],
        ),
    ],
    ids=["nine-daily", "skipped-half-past-two", "hourly"],
)
def test_cron_in_a_time_zone_across_the_change_to_summer_time(
    cron: str, ticks: list[datetime], local_times: list[str]
) -> None:
    """A cron expression is read in its schedule's time zone: across Paris's change
    to summer time (2026-03-29, 02:00 CET becomes 03:00 CEST) next_tick_after
    steps through the ticks in UTC as the local clock has them, and
    last_tick_at_or_before walks the same ticks back: each tick is the last at or
    before itself, and the one before it is the last just before it."""
    rule = ScheduleRule.parse(cron=cron, every=None, time_zone=PARIS)
    first = ticks[0] - timedelta(days=7)
    stepped = [rule.next_tick_after(ticks[0] - timedelta(microseconds=1))]
    for _ in ticks[1:]:
        stepped.append(rule.next_tick_after(stepped[-1]))
    assert stepped == ticks
    assert [t.astimezone(ZoneInfo(PARIS)).strftime("%Y-%m-%d %H:%M %Z") for t in ticks] == (
        local_times
    )
    for earlier, later in pairwise(ticks):
        assert rule.last_tick_at_or_before(later, first=first) == later
        assert rule.last_tick_at_or_before(later - timedelta(microseconds=1), first=first) == (
            earlier
        )


def test_next_tick_after_is_strictly_after() -> None:
    """The next tick is the first strictly after the moment: a moment that is a
    tick gives the next one, a fraction of a second past a tick the next whole
    second; an interval counts from the moment itself."""
    every_second = ScheduleRule.parse(cron=EVERY_SECOND, every=None, time_zone="UTC")
    five = utc(2026, 1, 1, 0, 0, 5)
    assert every_second.next_tick_after(five) == five + SECOND
    assert every_second.next_tick_after(five + timedelta(microseconds=300)) == five + SECOND
    assert every_second.next_tick_after(five - timedelta(microseconds=1)) == five
    daily = ScheduleRule.parse(cron="0 9 * * *", every=None, time_zone=PARIS)
    assert daily.next_tick_after(utc(2026, 3, 29, 7)) == utc(2026, 3, 30, 7)
    interval = ScheduleRule.parse(cron=None, every=2.5, time_zone="UTC")
    assert interval.next_tick_after(five) == five + timedelta(seconds=2.5)


def test_last_tick_at_or_before_counts_from_the_first_tick() -> None:
    """The newest tick at or before a moment: the moment itself when it is a
    tick, the tick before it otherwise, and None before the first tick (a cron
    tick older than the schedule's first is not one of its ticks); an interval's
    ticks are the first plus whole intervals."""
    every_second = ScheduleRule.parse(cron=EVERY_SECOND, every=None, time_zone="UTC")
    first = utc(2026, 1, 1, 0, 0, 5)
    assert every_second.last_tick_at_or_before(first, first=first) == first
    assert every_second.last_tick_at_or_before(first + 2.7 * SECOND, first=first) == (
        first + 2 * SECOND
    )
    assert (
        every_second.last_tick_at_or_before(first - timedelta(microseconds=1), first=first) is None
    )
    late_first = first + timedelta(microseconds=500)
    assert every_second.last_tick_at_or_before(first + 0.9 * SECOND, first=late_first) is None
    interval = ScheduleRule.parse(cron=None, every=2.5, time_zone="UTC")
    assert interval.last_tick_at_or_before(first + 7.4 * SECOND, first=first) == (
        first + 5 * SECOND
    )
    assert interval.last_tick_at_or_before(first + 7.5 * SECOND, first=first) == (
        first + 7.5 * SECOND
    )


# ---------------------------------------------------------------------------
# What a firing does
# ---------------------------------------------------------------------------

T0 = utc(2026, 3, 29, 12)
GRACE = timedelta(seconds=0.5)


def schedule_of(rule: str, catch_up: CatchUp, *, next_tick_at: datetime = T0) -> Schedule:
    """A schedule of every second, by cron or by interval, as its row would be."""
    return Schedule(
        name=f"{rule}-{catch_up}",
        cron=EVERY_SECOND if rule == "cron" else None,
        every=SECOND if rule == "every" else None,
        time_zone="UTC",
        queue="default",
        task_name="digest",
        input={},
        durable=False,
        catch_up=catch_up,
        grace=GRACE,
        next_tick_at=next_tick_at,
    )


FIRED, LATE, SKIPPED = TickOutcome.FIRED, TickOutcome.FIRED_LATE, TickOutcome.SKIPPED


@pytest.mark.parametrize("rule", ["cron", "every"])
@pytest.mark.parametrize(
    ("catch_up", "missed_outcomes"),
    [
        (CatchUp.ALL, [LATE] * 10),
        (CatchUp.LATEST, [SKIPPED] * 9 + [LATE]),
        (CatchUp.NONE, [SKIPPED] * 10),
    ],
)
def test_a_firing_fires_due_ticks_and_treats_missed_ones_by_its_policy(
    rule: str, catch_up: CatchUp, missed_outcomes: list[TickOutcome]
) -> None:
    """Eleven ticks due, 10.2 s to 0.2 s old, with a grace of 0.5 s: the newest is
    on time and fired; the ten older were missed, and are all fired late (all),
    skipped but the newest, fired late (latest), or all skipped (none). The next
    tick is the first not yet due; nothing is due before the next tick."""
    firing = plan_firing(schedule_of(rule, catch_up), T0 + 10.2 * SECOND)
    assert [tick for tick, _ in firing.ticks] == [T0 + n * SECOND for n in range(11)]
    assert [outcome for _, outcome in firing.ticks] == [*missed_outcomes, FIRED]
    assert firing.next_tick_at == T0 + 11 * SECOND
    idle = plan_firing(schedule_of(rule, catch_up), T0 - timedelta(microseconds=1))
    assert (idle.ticks, idle.next_tick_at) == ([], T0)


@pytest.mark.parametrize(
    ("catch_up", "late_outcome"),
    [(CatchUp.ALL, LATE), (CatchUp.LATEST, LATE), (CatchUp.NONE, SKIPPED)],
)
def test_a_tick_is_missed_once_it_is_grace_late(
    catch_up: CatchUp, late_outcome: TickOutcome
) -> None:
    """A tick fired a microsecond less than `grace` after its time is on time; a
    microsecond more, it was missed (and, alone, the latest missed)."""
    schedule = schedule_of("cron", catch_up)
    assert plan_firing(schedule, T0 + GRACE - timedelta(microseconds=1)).ticks == [(T0, FIRED)]
    assert plan_firing(schedule, T0 + GRACE + timedelta(microseconds=1)).ticks == [
        (T0, late_outcome)
    ]


@pytest.mark.parametrize("rule", ["cron", "every"])
@pytest.mark.parametrize(
    ("catch_up", "expected"),
    [
        (CatchUp.ALL, {LATE: 1200, FIRED: 1}),
        (CatchUp.LATEST, {SKIPPED: 1199, LATE: 1, FIRED: 1}),
        (CatchUp.NONE, {SKIPPED: 1200, FIRED: 1}),
    ],
)
def test_a_backlog_larger_than_one_firing_is_fired_in_batches(
    rule: str, catch_up: CatchUp, expected: dict[TickOutcome, int]
) -> None:
    """1,201 ticks due after a 20-minute outage (the newest on time): firings take
    MAX_TICKS_PER_FIRING (500) at most, each going on from the next tick the one
    before set, until none is due: 500, 500 and 201 ticks, each tick once, in
    order, none left out. With latest, the one fired late is the newest missed
    tick of the whole backlog (in the last batch), not of each batch."""
    schedule = schedule_of(rule, catch_up)
    now = T0 + 1200.2 * SECOND
    batches: list[list[tuple[datetime, TickOutcome]]] = []
    while True:
        firing = plan_firing(schedule, now)
        if not firing.ticks:
            break
        batches.append(firing.ticks)
        schedule = dataclasses.replace(schedule, next_tick_at=firing.next_tick_at)
    assert [len(batch) for batch in batches] == [MAX_TICKS_PER_FIRING, MAX_TICKS_PER_FIRING, 201]
    ticks = [tick for batch in batches for tick in batch]
    assert [tick for tick, _ in ticks] == [T0 + n * SECOND for n in range(1201)]
    assert Counter(outcome for _, outcome in ticks) == expected
    if catch_up == CatchUp.LATEST:
        assert [tick for tick, outcome in ticks if outcome == LATE] == [T0 + 1199 * SECOND]
    assert schedule.next_tick_at == T0 + 1201 * SECOND


# ---------------------------------------------------------------------------
# set_schedule: refusals, and a redefinition
# ---------------------------------------------------------------------------


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    """A lesson-13 schema with the task functions' `executions` table."""
    created = lesson_database(LESSON)
    with created.pool.connection() as conn:
        create_executions_table(conn)
    return created


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"cron": "61 * * * *"}, "cron expression '61 * * * *' is not valid"),
        ({"cron": "every five minutes"}, "cron expression 'every five minutes' is not valid"),
        ({"cron": "0 9 * * *", "time_zone": "Mars/Olympus_Mons"}, "unknown time zone"),
        ({"cron": "0 9 * * *", "every": 60.0}, "one of the two"),
        ({}, "a schedule needs a cron expression or an interval"),
        ({"every": 0.0}, "a schedule's interval must be positive"),
        ({"every": 60.0, "grace": 0.0}, "grace must be positive"),
    ],
    ids=["bad-field", "not-cron", "unknown-zone", "both", "neither", "zero-interval", "no-grace"],
)
def test_set_schedule_refuses_what_is_not_a_schedule(
    database: LessonDatabase, arguments: dict[str, Any], message: str
) -> None:
    """A bad cron expression, an unknown time zone, both a cron expression and an
    interval, neither, a zero interval, a zero grace: each a ValueError that names
    what is wrong, and no schedule is written."""
    with database.pool.connection() as conn:
        with pytest.raises(ValueError, match=re.escape(message)):
            set_schedule(conn, "refused", "digest", {}, **arguments)
        assert Querier(conn).list_schedules() == []


def test_redefining_a_schedule_starts_it_afresh_from_now(database: LessonDatabase) -> None:
    """Two schedules of every second, catch-up all, each with ten seconds of ticks
    due (their next tick set back, as after an outage). One is redefined (every
    2 s): its next tick is the first of the new rule after the database's now,
    its backlog dropped. A scheduler's firing (in this process, called directly)
    then catches the other up, ten ticks or more (nine of them late), and fires nothing of
    the redefined one."""
    pool = database.pool
    with pool.connection() as conn:
        for name in ("kept", "redefined"):
            set_schedule(conn, name, "digest", {}, every=1.0, catch_up=CatchUp.ALL, grace=0.5)
        conn.execute("UPDATE schedules SET next_tick_at = next_tick_at - interval '10 seconds'")
        before = database_now(pool)
        redefined = set_schedule(
            conn, "redefined", "digest", {"v": 2}, every=2.0, catch_up=CatchUp.ALL, grace=0.5
        )
        after = database_now(pool)
        assert before + 2 * SECOND <= redefined.next_tick_at <= after + 2 * SECOND
        assert redefined.every == 2 * SECOND and redefined.input == {"v": 2}
        assert [schedule.name for schedule in Querier(conn).list_schedules()] == [
            "kept",
            "redefined",
        ]
        scheduler = Scheduler(
            pool, worker_id=1, max_wait=1.0, limits=TransactionLimits.for_worker(10.0)
        )
        scheduler.fire_due_schedules()
        kept = Querier(conn).list_schedule_ticks(schedule="kept")
        assert Querier(conn).list_schedule_ticks(schedule="redefined") == []
    # Its ticks of the last grace (0.5 s) are on time; the nine before were missed.
    assert len(kept) >= 10 and [tick.outcome for tick in kept[:9]] == [LATE] * 9, kept
    assert scheduler.ticks_fired == len(kept)


# ---------------------------------------------------------------------------
# Four workers, sixty ticks, a kill, an outage and a crash
# ---------------------------------------------------------------------------

TICKS = 60
POLICIES = (CatchUp.ALL, CatchUp.LATEST, CatchUp.NONE)
PROCESS_GRACE = 0.5
TICKS_BEFORE_KILL = 15
TICKS_BEFORE_OUTAGE = 30
OUTAGE_TICKS = 5
CRASH_POINT = "schedule_tick:before_commit"


def name_of(policy: CatchUp) -> str:
    return f"every-second-{policy}"


def schedule_worker(database: LessonDatabase, **options: Any) -> WorkerProcess:
    return WorkerProcess(
        schema=database.schema,
        functions=FUNCTIONS_MODULE,
        slots=2,
        poll_interval=0.2,
        # Also the scheduler's longest sleep between two looks at the schedules.
        heartbeat_interval=0.1,
        inactivity_threshold=1.0,
        **options,
    )


def start_all(processes: list[WorkerProcess]) -> None:
    """Start the processes side by side (each start waits for its process to say ready)."""
    with ThreadPoolExecutor(len(processes)) as starting:
        list(starting.map(lambda process: process.start(), processes))


def run_until_it_crashes(process: WorkerProcess) -> str:
    """Run the worker process `process` describes until its crash point SIGKILLs it,
    and return its log. Not `process.start()`: the scheduler's first firing comes
    before the process says it is ready, so it may die before it can."""
    completed = subprocess.run(
        [sys.executable, "-m", f"lessons.{LESSON}.tools.worker_process", *process.arguments],
        env=process.environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=30,
    )
    assert completed.returncode == -signal.SIGKILL, completed.stderr
    return completed.stderr


def all_ticks(pool: ConnectionPool) -> dict[CatchUp, list[ScheduleTick]]:
    with pool.connection() as conn:
        queries = Querier(conn)
        return {
            policy: queries.list_schedule_ticks(schedule=name_of(policy)) for policy in POLICIES
        }


def fewest_ticks(pool: ConnectionPool) -> int:
    return min(len(ticks) for ticks in all_ticks(pool).values())


def expected_outcomes(policy: CatchUp, ticks: list[ScheduleTick]) -> list[TickOutcome]:
    """What the policy makes of each recorded tick, from how late its firing was
    (recorded_at is the firing transaction's now, the very time plan_firing used):
    missed when `grace` late or more; with latest, the newest missed of each
    firing is the one fired late."""
    grace = timedelta(seconds=PROCESS_GRACE)
    newest_missed: dict[datetime, datetime] = {}
    for tick in ticks:
        if tick.recorded_at - tick.tick_at >= grace:
            newest_missed[tick.recorded_at] = max(
                tick.tick_at, newest_missed.get(tick.recorded_at, tick.tick_at)
            )
    outcomes = []
    for tick in ticks:
        if tick.recorded_at - tick.tick_at < grace:
            outcomes.append(FIRED)
        elif policy == CatchUp.ALL or (
            policy == CatchUp.LATEST and tick.tick_at == newest_missed[tick.recorded_at]
        ):
            outcomes.append(LATE)
        else:
            outcomes.append(SKIPPED)
    return outcomes


@pytest.mark.slow
def test_four_workers_fire_each_of_sixty_ticks_once_through_a_kill_an_outage_and_a_crash(
    database: LessonDatabase,
) -> None:
    """Three schedules of every second (cron "* * * * * *", grace 0.5 s), one per
    catch-up policy, fired by four worker processes. At tick 15 one worker is
    SIGKILLed as a tick comes; at tick 30 all the others are, and none runs for
    five ticks; then a worker with COURSE_CRASH_AT=schedule_tick:before_commit
    starts alone and dies inside its first firing, which had the missed ticks
    due; then four new workers start and run to tick 60.

    For each schedule: one row per tick from its first tick to its last, one
    second apart, none twice (its primary key), none by the crashed firing; the
    outage's ticks (five or more, all missed) are fired late (all), skipped but
    the newest (latest), or skipped (none), and every other tick was fired on time;
    each fired tick has exactly one task, with the tick's idempotency key and
    input, and no other task exists; and every task of those ticks completed,
    its digest recorded."""
    pool = database.pool
    started_at = time.monotonic()
    with ExitStack() as stack:
        first_workers = [stack.enter_context(schedule_worker(database)) for _ in range(4)]
        start_all(first_workers)
        first_ticks: dict[CatchUp, datetime] = {}
        with pool.connection() as conn:
            for policy in POLICIES:
                schedule = set_schedule(
                    conn,
                    name_of(policy),
                    "digest",
                    {"policy": str(policy)},
                    cron=EVERY_SECOND,
                    catch_up=policy,
                    grace=PROCESS_GRACE,
                )
                first_ticks[policy] = schedule.next_tick_at

        wait_until(lambda: fewest_ticks(pool) >= TICKS_BEFORE_KILL, timeout=40, message="ticks")
        # A SIGKILL as the next tick comes (2 ms after it, on the database's
        # clock) to the worker that fired the last one: it may be inside that
        # firing, or not yet, or done with it. (A sleep to time a signal, not
        # to wait for work.)
        latest = max(
            (tick for ticks in all_ticks(pool).values() for tick in ticks),
            key=lambda tick: tick.recorded_at,
        )
        (victim,) = [process for process in first_workers if process.id == latest.worker_id]
        with pool.connection() as conn:
            row = conn.execute(
                "SELECT extract(epoch FROM min(next_tick_at) - now())::float8 FROM schedules"
            ).fetchone()
        assert row is not None
        time.sleep(max(0.0, row[0] + 0.002))
        victim.kill()
        killed_at = database_now(pool)
        killed_tick = killed_at.replace(microsecond=0)
        survivors = [process for process in first_workers if process is not victim]

        wait_until(lambda: fewest_ticks(pool) >= TICKS_BEFORE_OUTAGE, timeout=40, message="ticks")
        for process in survivors:
            process.kill()
        # Five ticks after the last one fired, and grace more: all five missed,
        # however fast the workers below start.
        with pool.connection() as conn:
            last_fired = conn.execute("SELECT max(tick_at) FROM schedule_ticks").fetchone()
        assert last_fired is not None
        outage_until = last_fired[0] + OUTAGE_TICKS * SECOND + PROCESS_GRACE * SECOND
        wait_until(lambda: database_now(pool) >= outage_until, timeout=20, message="the outage")
        crashed = schedule_worker(database, verbose=True, environment={CRASH_AT: CRASH_POINT})
        crash_log = run_until_it_crashes(crashed)
        second_workers = [stack.enter_context(schedule_worker(database)) for _ in range(4)]
        start_all(second_workers)

        wait_until(lambda: fewest_ticks(pool) >= TICKS, timeout=60, message="sixty ticks")
        snapshot = all_ticks(pool)
        fired_task_ids = [
            tick.task_id
            for ticks in snapshot.values()
            for tick in ticks
            if tick.task_id is not None
        ]

        def unfinished() -> list[int]:
            with pool.connection() as conn:
                rows = conn.execute(
                    "SELECT id FROM tasks WHERE id = ANY(%s) AND status <> 'completed'",
                    (fired_task_ids,),
                ).fetchall()
            return [task_id for (task_id,) in rows]

        wait_until(lambda: not unfinished(), timeout=30, message=lambda: f"{unfinished()}")
        for process in second_workers:
            assert process.stop() == 0, process.log()
    elapsed = time.monotonic() - started_at

    ticks_by_policy = all_ticks(pool)
    with pool.connection() as conn:
        tasks = {task.id: task for task in Querier(conn).list_tasks()}
        worker_ids = {row[0] for row in conn.execute("SELECT id FROM workers").fetchall()}
        digests = conn.execute(
            "SELECT key, detail FROM executions WHERE event = 'digest' ORDER BY seq"
        ).fetchall()
    known = {process.id for process in [*first_workers, *second_workers]}
    (crashed_worker,) = worker_ids - known
    assert f"crash point {CRASH_POINT}: SIGKILL" in crash_log
    # The crashed firing had ticks to fire, and fired them, in the transaction it never committed.
    assert re.search(r"schedule every-second-\w+: tick .* fired_late", crash_log), crash_log

    digested = Counter(int(key) for key, _ in digests)
    assert {task.input["schedule"] for task in tasks.values()} == set(map(name_of, POLICIES))
    on_time_lateness: list[float] = []
    for policy, ticks in ticks_by_policy.items():
        name = name_of(policy)
        assert ticks[0].tick_at == first_ticks[policy]
        assert all(later.tick_at - earlier.tick_at == SECOND for earlier, later in pairwise(ticks))
        assert len(ticks) >= TICKS
        assert crashed_worker not in {tick.worker_id for tick in ticks}

        outcomes = [tick.outcome for tick in ticks]
        assert outcomes == expected_outcomes(policy, ticks), (policy, ticks)
        # Missed: the outage's ticks, five or more in a row, in one firing after
        # it by a new worker; every other tick was fired on time.
        outage = [
            tick
            for tick in ticks
            if tick.recorded_at - tick.tick_at >= timedelta(seconds=PROCESS_GRACE)
        ]
        assert len(outage) >= OUTAGE_TICKS, (policy, outage)
        assert all(later.tick_at - earlier.tick_at == SECOND for earlier, later in pairwise(outage))
        assert outage[0].tick_at in (last_fired[0], last_fired[0] + SECOND), outage
        assert len({(tick.recorded_at, tick.worker_id) for tick in outage}) == 1, outage
        assert outage[0].worker_id in {process.id for process in second_workers}
        on_time_lateness += [
            (tick.recorded_at - tick.tick_at).total_seconds()
            for tick in ticks
            if tick not in outage
        ]

        fired = [tick for tick in ticks if tick.outcome != SKIPPED]
        assert all(tick.task_id is not None for tick in fired)
        assert all(tick.task_id is None for tick in ticks if tick.outcome == SKIPPED)
        assert len({tick.task_id for tick in fired}) == len(fired)
        schedule_tasks = [task for task in tasks.values() if task.input.get("schedule") == name]
        assert sorted(task.id for task in schedule_tasks) == sorted(
            tick.task_id for tick in fired if tick.task_id is not None
        )
        for tick in fired:
            assert tick.task_id is not None
            task = tasks[tick.task_id]
            assert task.idempotency_key == tick_idempotency_key(name, tick.tick_at)
            assert task.input == {
                "schedule": name,
                "tick_at": tick.tick_at.isoformat(),
                "input": {"policy": str(policy)},
            }
        for tick in snapshot[policy]:
            if tick.task_id is not None:
                assert tasks[tick.task_id].status == TaskStatus.COMPLETED
                assert digested[tick.task_id] >= 1, tick

    outcomes_by_policy = {
        str(policy): {str(outcome): n for outcome, n in Counter(t.outcome for t in ticks).items()}
        for policy, ticks in ticks_by_policy.items()
    }
    firers = Counter(tick.worker_id for ticks in ticks_by_policy.values() for tick in ticks)
    at_the_kill = sorted(
        (tick.worker_id, round((tick.recorded_at - tick.tick_at).total_seconds() * 1000, 1))
        for ticks in ticks_by_policy.values()
        for tick in ticks
        if tick.tick_at == killed_tick
    )
    print(
        f"\n{elapsed:.1f} s; outcomes {outcomes_by_policy}; ticks per worker {dict(firers)}; "
        f"on-time lateness p50 {statistics.median(on_time_lateness) * 1000:.1f} ms, "
        f"max {max(on_time_lateness) * 1000:.1f} ms; digests run again after a kill: "
        f"{sum(count - 1 for count in digested.values())}; the tick worker {victim.id} was "
        f"killed at was fired by (worker, ms late) {at_the_kill}"
    )
    assert set(firers) <= known
