"""Lesson 12: a suspended keyed task gives its slot back, or holds it, as its queue
says; what enqueue and the settings refuse, they refuse before writing anything;
and a replay or a fork of a keyed, rate-limited task keeps its key and its limit.

Where a test must show that something does *not* happen (a task does not run
while its key is full), it enqueues a keyless probe task after the moment that
matters and waits for the probe to complete: the claim that took the probe, or
a later one, would have taken the other task too had it been admissible.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from lessons.lesson12_flow_control.db.models import Task, TaskStatus
from lessons.lesson12_flow_control.engine.client import (
    enqueue,
    set_concurrency_limit,
    set_rate_limit,
    wait_for_task,
)
from lessons.lesson12_flow_control.engine.reruns import fork, replay
from tests.conftest import LessonDatabase
from tests.lesson12.functions_rates import (
    GRANTS_AUDIT,
    install_transitions_audit,
    most_holding_at_once,
    seq_of,
)
from tests.lesson12.local_workers import get_task, local_worker
from tests.recording import open_gate
from tests.waiting import wait_until

LESSON = "lesson12_flow_control"
QUEUE = "deploys"
KEY = "production"
SLEEP_SECONDS = 1.5


def wait_status(pool: ConnectionPool, task_id: int, status: TaskStatus) -> Task:
    def in_status() -> Task | None:
        task = get_task(pool, task_id)
        return task if task.status == status else None

    return wait_until(
        in_status,
        message=lambda: f"task {task_id} is {get_task(pool, task_id).status}, not {status}",
    )


def enqueue_keyed(pool: ConnectionPool, task_name: str, input: Any, **options: Any) -> int:
    with pool.connection() as conn:
        return enqueue(conn, task_name, input, queue=QUEUE, concurrency_key=KEY, **options)


def run_a_probe(pool: ConnectionPool) -> None:
    """Enqueue a keyless task and wait until it completes: a claim has looked at the
    queue since this was called."""
    with pool.connection() as conn:
        probe = enqueue(conn, "work", {"probe": True}, queue=QUEUE)
    assert wait_for_task(pool, probe).status == TaskStatus.COMPLETED


def database_now(pool: ConnectionPool) -> datetime:
    with pool.connection() as conn:
        row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    now: datetime = row[0]
    return now


def key_count(pool: ConnectionPool, key: str = KEY) -> int:
    """The key's count of slots held, as the trigger keeps it."""
    with pool.connection() as conn:
        row = conn.execute("SELECT running FROM concurrency_keys WHERE key = %s", (key,)).fetchone()
    assert row is not None, f"key {key} has no row"
    running: int = row[0]
    return running


# --- Suspension ---


def test_a_sleeping_task_gives_its_slot_back_and_resumes_only_into_a_free_slot(
    lesson_database: Callable[..., LessonDatabase], tmp_path: Path
) -> None:
    """hold_while_suspended false (the default), limit 1: while the durable task
    sleeps, another task of its key runs; the sleep ends while that one still
    runs, and the sleeper waits, suspended, until the slot is free again. Never
    two of the key running at once."""
    database = lesson_database(LESSON)
    install_transitions_audit(database.pool)
    with database.pool.connection() as conn:
        set_concurrency_limit(conn, QUEUE, 1)
    with local_worker(database.pool, queue=QUEUE):
        sleeper_id = enqueue_keyed(
            database.pool, "sleep_then_finish", {"sleep": SLEEP_SECONDS}, durable=True
        )
        sleeper = wait_status(database.pool, sleeper_id, TaskStatus.SUSPENDED)
        assert key_count(database.pool) == 0
        other = enqueue_keyed(database.pool, "hold_at_gate", {"gate": str(tmp_path / "gate")})
        wait_status(database.pool, other, TaskStatus.RUNNING)
        assert sleeper.wake_at is not None
        assert database_now(database.pool) < sleeper.wake_at, "the other ran only after the sleep"
        wait_until(
            lambda: database_now(database.pool) > sleeper.wake_at,  # type: ignore[operator]
            message="the sleep never ended",
        )
        run_a_probe(database.pool)
        assert get_task(database.pool, sleeper_id).status == TaskStatus.SUSPENDED
        open_gate(tmp_path / "gate")
        assert wait_for_task(database.pool, sleeper_id).status == TaskStatus.COMPLETED
    resumed = seq_of(database.pool, sleeper_id, "suspended", "running")
    assert resumed > seq_of(database.pool, other, "running", "completed")
    assert most_holding_at_once(database.pool, KEY, {"running"}) == 1


def test_a_sleeping_task_that_holds_its_slot_keeps_its_key_to_itself(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    """hold_while_suspended true, limit 1: no other task of the key runs during the
    sleep (the slot stays counted), and the sleeper resumes without needing a free
    slot (its own is the only one); the other task runs once it has completed."""
    database = lesson_database(LESSON)
    install_transitions_audit(database.pool)
    with database.pool.connection() as conn:
        set_concurrency_limit(conn, QUEUE, 1, hold_while_suspended=True)
    with local_worker(database.pool, queue=QUEUE):
        sleeper = enqueue_keyed(
            database.pool, "sleep_then_finish", {"sleep": SLEEP_SECONDS}, durable=True
        )
        wait_status(database.pool, sleeper, TaskStatus.SUSPENDED)
        other = enqueue_keyed(database.pool, "work", {"n": 1})
        run_a_probe(database.pool)
        during_the_sleep = (get_task(database.pool, other).status, key_count(database.pool))
        assert wait_for_task(database.pool, sleeper).status == TaskStatus.COMPLETED
        assert wait_for_task(database.pool, other).status == TaskStatus.COMPLETED
    assert during_the_sleep == (TaskStatus.QUEUED, 1)
    assert seq_of(database.pool, other, "queued", "running") > seq_of(
        database.pool, sleeper, "running", "completed"
    )
    assert most_holding_at_once(database.pool, KEY, {"running", "suspended"}) == 1


# --- Refusals ---


def row_counts(pool: ConnectionPool) -> dict[str, int]:
    tables = ("tasks", "concurrency_keys", "concurrency_limits", "rate_limits")
    with pool.connection() as conn:
        counts = {}
        for table in tables:
            count = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
            row = conn.execute(count).fetchone()
            counts[table] = row[0] if row else -1
    return counts


def test_a_keyed_task_on_a_queue_without_a_limit_is_refused_and_nothing_is_written(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    """A limit is a decision, not a default: the enqueue says which queue, and how
    to set one; no task and no key row are left behind."""
    database = lesson_database(LESSON)
    with (
        database.pool.connection() as conn,
        pytest.raises(ValueError, match="queue 'unlimited' has no concurrency limit") as refusal,
    ):
        enqueue(conn, "work", {}, queue="unlimited", concurrency_key=KEY)
    assert "set_concurrency_limit" in str(refusal.value)
    assert set(row_counts(database.pool).values()) == {0}


@pytest.mark.parametrize(
    ("rate_limit", "rate_units", "message"),
    [
        ("nope", 1, "there is no rate limit 'nope'"),
        ("api", 0, "a task takes 1 to 5 units of rate limit 'api', not 0"),
        ("api", 6, "a task takes 1 to 5 units of rate limit 'api', not 6"),
    ],
)
def test_a_task_of_an_unknown_rate_limit_or_impossible_units_is_refused(
    lesson_database: Callable[..., LessonDatabase], rate_limit: str, rate_units: int, message: str
) -> None:
    """A task that names no rate limit there is, or takes 0 units or more than the
    limit ever grants (it could never start), is refused; no task is written."""
    database = lesson_database(LESSON)
    with database.pool.connection() as conn:
        set_rate_limit(conn, "api", 5, 1.0)
        with pytest.raises(ValueError, match=message):
            enqueue(conn, "work", {}, queue=QUEUE, rate_limit=rate_limit, rate_units=rate_units)
    assert row_counts(database.pool) == {
        "tasks": 0,
        "concurrency_keys": 0,
        "concurrency_limits": 0,
        "rate_limits": 1,
    }


def test_limits_of_zero_are_refused_and_nothing_is_written(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    """set_concurrency_limit(0) would admit nothing, ever; a rate limit of 0 units or
    of no time is meaningless: refused, with no row written."""
    database = lesson_database(LESSON)
    with database.pool.connection() as conn:
        with pytest.raises(ValueError, match="max_per_key must be positive, not 0"):
            set_concurrency_limit(conn, QUEUE, 0)
        with pytest.raises(ValueError, match="positive units and duration"):
            set_rate_limit(conn, "api", 0, 1.0)
        with pytest.raises(ValueError, match="positive units and duration"):
            set_rate_limit(conn, "api", 5, 0)
    assert set(row_counts(database.pool).values()) == {0}


# --- Reruns ---


def test_a_replay_and_a_fork_of_a_keyed_task_keep_its_key_and_its_limits(
    lesson_database: Callable[..., LessonDatabase], tmp_path: Path
) -> None:
    """A replayed task keeps its key and rate limit (same row), and a fork copies
    them: both wait while another task holds the key's only slot, and each takes
    fresh units of the rate limit when it starts."""
    database = lesson_database(LESSON)
    install_transitions_audit(database.pool)
    with database.pool.connection() as conn:
        conn.execute(GRANTS_AUDIT)
        set_concurrency_limit(conn, QUEUE, 1)
        set_rate_limit(conn, "deploy_api", 10, 60)
    with local_worker(database.pool, queue=QUEUE):
        source_id = enqueue_keyed(
            database.pool, "two_steps", {}, durable=True, rate_limit="deploy_api", rate_units=2
        )
        assert wait_for_task(database.pool, source_id).status == TaskStatus.COMPLETED
        holder = enqueue_keyed(database.pool, "hold_at_gate", {"gate": str(tmp_path / "gate")})
        wait_status(database.pool, holder, TaskStatus.RUNNING)
        with database.pool.connection() as conn:
            forked = fork(conn, source_id, at_event=2)
            replayed = replay(conn, source_id).task
        run_a_probe(database.pool)
        while_held = [get_task(database.pool, task.id).status for task in (replayed, forked)]
        open_gate(tmp_path / "gate")
        for task in (replayed, forked):
            assert wait_for_task(database.pool, task.id).status == TaskStatus.COMPLETED
    assert while_held == [TaskStatus.QUEUED, TaskStatus.QUEUED]
    for task in (replayed, forked):
        limits = (task.concurrency_key, task.hold_while_suspended, task.rate_limit, task.rate_units)
        assert limits == (KEY, False, "deploy_api", 2)
    assert most_holding_at_once(database.pool, KEY, {"running"}) == 1
    with database.pool.connection() as conn:
        grants = conn.execute("SELECT task_id, attempt, units FROM grants ORDER BY 1, 2").fetchall()
    assert grants == [(source_id, 1, 2), (source_id, 2, 2), (forked.id, 1, 2)]
