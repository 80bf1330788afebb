"""Lesson 13: delayed starts (`enqueue(..., delay=...)` or `run_at=...`).

Real worker processes and the real server. A delayed task waits suspended at
attempt 0 and starts no earlier than its time and soon after it (lateness
measured on the database's clock, both ends read from the task's row); it takes
its key's slot and its rate limit's units only when it starts; its schedule
timeout counts from its start time; a cancel cancels it at once; and bad
arguments are refused before anything is written.

What ran is counted from the task functions' own rows (`executions`, see
tests/lesson15_inherited13/functions_starts.py).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from lessons.lesson15_operating_at_scale.db.models import Task, TaskStatus
from lessons.lesson15_operating_at_scale.db.queries import Querier
from lessons.lesson15_operating_at_scale.engine.client import (
    cancel,
    enqueue,
    set_concurrency_limit,
    set_rate_limit,
    wait_for_task,
)
from lessons.lesson15_operating_at_scale.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.lesson15_inherited13.functions_starts import UNSERVED_TASK, arrival_file
from tests.recording import create_executions_table, open_gate
from tests.waiting import wait_until

LESSON = "lesson15_operating_at_scale"
FUNCTIONS_MODULE = "tests.lesson15_inherited13.functions_starts"
KEYED_QUEUE = "keyed"


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    """A lesson-13 schema with the task functions' `executions` table."""
    created = lesson_database(LESSON)
    with created.pool.connection() as conn:
        create_executions_table(conn)
    return created


def worker(
    database: LessonDatabase, *, queues: list[str], poll_interval: float = 0.1
) -> WorkerProcess:
    return WorkerProcess(
        schema=database.schema,
        queues=queues,
        functions=FUNCTIONS_MODULE,
        slots=4,
        poll_interval=poll_interval,
        heartbeat_interval=0.1,
        inactivity_threshold=1.0,
    )


def get_task(pool: ConnectionPool, task_id: int) -> Task:
    with pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    assert task is not None, f"there is no task {task_id}"
    return task


def database_now(pool: ConnectionPool) -> datetime:
    with pool.connection() as conn:
        now = Querier(conn).database_now()
    assert now is not None
    return now


def runs_of(pool: ConnectionPool, task_id: int) -> list[int]:
    """The attempts of `task_id` its function recorded, in order."""
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT attempt FROM executions WHERE key = %s ORDER BY seq", (task_id,)
        ).fetchall()
    return [int(attempt) for (attempt,) in rows]


def waiting_to_start(task: Task) -> bool:
    """Whether the task is a delayed start that has not started: suspended at attempt 0."""
    return task.status == TaskStatus.SUSPENDED and task.attempt == 0 and task.started_at is None


def running_of_key(pool: ConnectionPool, key: str) -> int:
    """The key's slots taken, as ListConcurrencyKeys (history_tool flow) shows them."""
    with pool.connection() as conn:
        rows = Querier(conn).list_concurrency_keys(max_keys=100)
    return sum(row.running for row in rows if row.key == key)


# ---------------------------------------------------------------------------
# On time: no earlier, and soon after
# ---------------------------------------------------------------------------

DELAYED_TASKS = 20
# Longer than the bound on lateness: a worker that found delayed tasks by its
# polls alone would start some of the twenty up to 2 s late (their times are
# spread over 1.9 s) and fail the bound. Only its wake-up times keep it on time.
POLL_INTERVAL = 2.0
LATENESS_BOUND_SECONDS = 1.5


def test_delayed_tasks_start_no_earlier_than_their_time_and_soon_after(
    database: LessonDatabase,
) -> None:
    """Twenty delayed tasks, half with `delay`, half with `run_at` (a time on the
    database's clock), due 0.5 s to 2.4 s after they are enqueued, on a worker
    that polls every 2 s and listens. Each waits suspended at attempt 0 with its
    wake-up time (`run_at` itself; the enqueue's time plus `delay`), then starts
    no earlier than that time (started_at >= wake_at, both from the row, both the
    database's clock) and within 1.5 s after it, and runs once, as attempt 1.
    The lateness's median and maximum are printed."""
    pool = database.pool
    wake_times: dict[int, datetime] = {}
    with worker(database, queues=["default"], poll_interval=POLL_INTERVAL) as process:
        process.start()
        with pool.connection() as conn:
            now = database_now(pool)
            for n in range(DELAYED_TASKS):
                seconds = 0.5 + 0.1 * n
                if n % 2:
                    run_at = now + timedelta(seconds=seconds)
                    task_id = enqueue(conn, "note", {"n": n}, run_at=run_at)
                    task = get_task(pool, task_id)
                    assert task.wake_at == run_at, task
                else:
                    task_id = enqueue(conn, "note", {"n": n}, delay=seconds)
                    task = get_task(pool, task_id)
                    assert task.wake_at is not None
                    expected = task.inserted_at + timedelta(seconds=seconds)
                    assert abs(task.wake_at - expected) < timedelta(milliseconds=1), task
                assert waiting_to_start(task), task
                wake_times[task_id] = task.wake_at
        finished = {task_id: wait_for_task(pool, task_id, timeout=30) for task_id in wake_times}

    lateness: list[float] = []
    for task_id, task in finished.items():
        assert task.status == TaskStatus.COMPLETED and task.attempt == 1, task
        assert task.started_at is not None
        assert task.started_at >= wake_times[task_id], (task.started_at, wake_times[task_id])
        lateness.append((task.started_at - wake_times[task_id]).total_seconds())
        assert runs_of(pool, task_id) == [1]
    print(
        f"\n{DELAYED_TASKS} delayed starts (poll interval {POLL_INTERVAL} s, listening): "
        f"lateness p50 {statistics.median(lateness) * 1000:.1f} ms, "
        f"max {max(lateness) * 1000:.1f} ms"
    )
    assert max(lateness) <= LATENESS_BOUND_SECONDS


# ---------------------------------------------------------------------------
# Flow control: a slot and units only from the start
# ---------------------------------------------------------------------------


def test_a_delayed_keyed_task_takes_its_keys_slot_only_when_it_starts(
    database: LessonDatabase, tmp_path: Path
) -> None:
    """Limit 1 per key. A keyed task delayed by 1 s waits holding nothing
    (key_slot_held false, its key's running count 0 in ListConcurrencyKeys), so a
    task of the same key enqueued after it, for now, starts and takes the one slot.
    When the delayed task's time comes the key is full, and it does not start:
    it waits, still at attempt 0. Once the other task ends, it starts, takes the
    slot (key_slot_held, running 1), and runs as attempt 1."""
    pool = database.pool
    delayed_gate, now_gate = tmp_path / "delayed", tmp_path / "now"
    with worker(database, queues=[KEYED_QUEUE]) as process, pool.connection() as conn:
        set_concurrency_limit(conn, KEYED_QUEUE, 1)
        process.start()
        delayed = enqueue(
            conn,
            "wait_at_gate",
            {"gate": str(delayed_gate)},
            queue=KEYED_QUEUE,
            concurrency_key="tenant",
            delay=1.0,
        )
        waiting = get_task(pool, delayed)
        assert waiting_to_start(waiting) and not waiting.key_slot_held, waiting
        assert running_of_key(pool, "tenant") == 0

        now = enqueue(
            conn,
            "wait_at_gate",
            {"gate": str(now_gate)},
            queue=KEYED_QUEUE,
            concurrency_key="tenant",
        )
        wait_until(lambda: arrival_file(str(now_gate), now).exists(), timeout=30, message="now")
        assert get_task(pool, now).key_slot_held and running_of_key(pool, "tenant") == 1
        assert waiting_to_start(get_task(pool, delayed))

        # Its time comes while the key is full: it must wait for the slot.
        assert waiting.wake_at is not None
        past_due = waiting.wake_at + timedelta(seconds=0.5)
        wait_until(lambda: database_now(pool) >= past_due, timeout=10, message="past due")
        assert waiting_to_start(get_task(pool, delayed))

        open_gate(now_gate)
        assert wait_for_task(pool, now, timeout=30).status == TaskStatus.COMPLETED
        wait_until(
            lambda: arrival_file(str(delayed_gate), delayed).exists(),
            timeout=30,
            message="the delayed task never started once the slot was free",
        )
        started = get_task(pool, delayed)
        assert (started.status, started.attempt, started.key_slot_held) == (
            TaskStatus.RUNNING,
            1,
            True,
        )
        assert running_of_key(pool, "tenant") == 1
        open_gate(delayed_gate)
        assert wait_for_task(pool, delayed, timeout=30).status == TaskStatus.COMPLETED
    assert running_of_key(pool, "tenant") == 0
    assert runs_of(pool, delayed) == [1]


def grants_of(pool: ConnectionPool, name: str) -> list[datetime]:
    with pool.connection() as conn:
        limit = Querier(conn).get_rate_limit(name=name)
    assert limit is not None
    return list(limit.granted_at)


def test_a_delayed_rate_limited_task_takes_its_units_when_it_starts(
    database: LessonDatabase,
) -> None:
    """A rate limit of 2 units a minute, and a task taking 2 of them, delayed by 1
    s. While it waits, the limit has granted nothing (all 2 units left, as
    ListRateLimitWindows shows). When it starts, its 2 units are granted at its
    start time (the grant's time is its started_at, no earlier than its wake-up
    time), and the window has none left."""
    pool = database.pool
    with worker(database, queues=["default"]) as process, pool.connection() as conn:
        set_rate_limit(conn, "payments_api", 2, 60.0)
        process.start()
        delayed = enqueue(conn, "note", {}, rate_limit="payments_api", rate_units=2, delay=1.0)
        waiting = get_task(pool, delayed)
        assert waiting_to_start(waiting) and waiting.wake_at is not None
        wake_at = waiting.wake_at
        almost_due = wake_at - timedelta(seconds=0.2)
        wait_until(lambda: database_now(pool) >= almost_due, timeout=10, message="almost due")
        assert grants_of(pool, "payments_api") == []
        assert waiting_to_start(get_task(pool, delayed))
        units_left = {row.name: row.units_left for row in Querier(conn).list_rate_limit_windows()}
        assert units_left == {"payments_api": 2}
        done = wait_for_task(pool, delayed, timeout=30)
        units_left = {row.name: row.units_left for row in Querier(conn).list_rate_limit_windows()}
    assert done.status == TaskStatus.COMPLETED and done.started_at is not None
    assert grants_of(pool, "payments_api") == [done.started_at, done.started_at]
    assert done.started_at >= wake_at
    assert units_left == {"payments_api": 0}


# ---------------------------------------------------------------------------
# The schedule timeout, and cancellation
# ---------------------------------------------------------------------------


def test_a_delayed_tasks_schedule_timeout_counts_from_its_start_time(
    database: LessonDatabase,
) -> None:
    """Two delayed tasks whose schedule timeouts are shorter than their delays.
    Their deadlines are their wake-up times plus the timeout, not their enqueue
    times plus it. One a worker runs: it starts after its timeout has passed
    since the enqueue, and completes. One no worker can run: it is still waiting,
    not failed, at every look (every 20 ms, the sweeper sweeps every 0.1 s) until
    its deadline, well past its enqueue time plus its timeout, and then fails
    with ScheduleTimeout, having never run."""
    pool = database.pool
    with worker(database, queues=["default"]) as process, pool.connection() as conn:
        process.start()
        served = enqueue(conn, "note", {}, delay=1.5, schedule_timeout=1.0)
        unserved = enqueue(conn, UNSERVED_TASK, {}, delay=1.0, schedule_timeout=0.5)
        rows = {task_id: get_task(pool, task_id) for task_id in (served, unserved)}
        for task_id, timeout in ((served, 1.0), (unserved, 0.5)):
            row = rows[task_id]
            assert row.wake_at is not None and row.schedule_deadline is not None
            assert row.schedule_deadline == row.wake_at + timedelta(seconds=timeout), row
        deadline = rows[unserved].schedule_deadline
        assert deadline is not None

        looks: list[tuple[datetime, TaskStatus]] = []

        def failed() -> bool:
            row = conn.execute(
                "SELECT now(), status::text FROM tasks WHERE id = %s", (unserved,)
            ).fetchone()
            assert row is not None
            looks.append((row[0], TaskStatus(row[1])))
            return looks[-1][1] == TaskStatus.FAILED

        wait_until(failed, timeout=30, message="the unserved delayed task never timed out")
        done = wait_for_task(pool, served, timeout=30)
    assert done.status == TaskStatus.COMPLETED and done.started_at is not None
    assert (done.started_at - done.inserted_at).total_seconds() > 1.0
    enqueued_plus_timeout = rows[unserved].inserted_at + timedelta(seconds=0.5)
    assert any(now > enqueued_plus_timeout for now, _ in looks[:-1]), "never looked in between"
    assert all(status == TaskStatus.SUSPENDED for now, status in looks if now < deadline), looks
    assert looks[-1][0] >= deadline
    timed_out = get_task(pool, unserved)
    assert timed_out.output is not None and timed_out.attempt == 0, timed_out
    assert timed_out.output["error"]["type"] == "ScheduleTimeout"


@pytest.mark.parametrize("durable", [False, True], ids=["plain", "durable"])
def test_cancelling_a_delayed_task_cancels_it_at_once(
    database: LessonDatabase, durable: bool
) -> None:
    """A delayed task that has not started is cancelled at once (it has done
    nothing to undo, durable or not): cancel() returns `cancelled`, its wake-up
    time is gone, and with a worker running past its time it never runs (attempt
    0, no run recorded). The control: the same task, not cancelled, runs then."""
    pool = database.pool
    name, input = (
        ("call_child", {"order_id": "D-1", "child": "note", "child_input": {}})
        if durable
        else ("note", {})
    )
    with worker(database, queues=["default"]) as process, pool.connection() as conn:
        process.start()
        cancelled = enqueue(conn, name, input, durable=durable, delay=0.5)
        control = enqueue(conn, name, input, durable=durable, delay=0.5)
        status = cancel(conn, cancelled, cancelled_by="test", reason="the customer left")
        assert status == TaskStatus.CANCELLED
        row = get_task(pool, cancelled)
        assert (row.status, row.wake_at, row.attempt) == (TaskStatus.CANCELLED, None, 0)
        assert wait_for_task(pool, control, timeout=30).status == TaskStatus.COMPLETED
    after = get_task(pool, cancelled)
    assert (after.status, after.attempt, after.started_at) == (TaskStatus.CANCELLED, 0, None)
    assert (after.cancelled_by, after.cancel_reason) == ("test", "the customer left")
    assert runs_of(pool, cancelled) == []
    with pool.connection() as conn:
        assert Querier(conn).list_task_events(task_id=cancelled) == []


# ---------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            {"run_at": datetime(2030, 1, 1).astimezone(), "delay": 1.0},
            "give run_at or delay, not both",
        ),
        ({"delay": -0.5}, "a delay cannot be negative, not -0.5 s"),
        ({"run_at": datetime(2030, 1, 1)}, "run_at must say its time zone"),
    ],
    ids=["both", "negative-delay", "naive-run_at"],
)
def test_bad_delayed_start_arguments_are_refused_before_anything_is_written(
    database: LessonDatabase, arguments: dict[str, Any], message: str
) -> None:
    """Both run_at and delay, a negative delay, a run_at with no time zone: each a
    ValueError saying what is wrong, and no task is created."""
    with database.pool.connection() as conn:
        with pytest.raises(ValueError, match=message):
            enqueue(conn, "note", {}, **arguments)
        assert Querier(conn).list_tasks() == []
