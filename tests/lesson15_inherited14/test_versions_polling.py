"""Lesson 14: a worker waits calmly beside a due task it may not claim.

A poller with nothing to claim waits for a notification, for the next wake-up time
of a suspended task of its queue (SecondsUntilNextWakeUp), or for its poll interval.
A due task that this worker cannot claim must not count as work to do now: the query
already leaves out a due task whose key is full, because "a poller told '0 s' would
ask again at once". A due task pinned to another version (stranded, or woken while
only the new version runs), and a delayed durable task that is due while this
worker's version drains, are the same case, and lesson 14 makes them common: every
deploy has them.

These tests count every claim statement a worker's poller runs (a statement trigger
on `tasks` that reads the connection's application_name, "worker N poller"), in a
window on the database's clock, with a poll interval of 0.5 s: first with nothing due
(the control, which must hold, or the test itself is wrong), then with such a task
due. Real worker processes and the real server.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from psycopg import sql

from lessons.lesson15_operating_at_scale.db.models import TaskStatus
from lessons.lesson15_operating_at_scale.db.queries import Querier
from lessons.lesson15_operating_at_scale.engine.client import drain_version
from tests.conftest import LessonDatabase
from tests.lesson15_inherited14.test_versions import (
    enqueue_durable,
    get_task,
    pinned,
    push,
    versions_database,
    wait_pinned,
    wait_until_past,
    worker,
)

# Every UPDATE statement on tasks that a poller's connection runs: its claims,
# those that take nothing included (a statement trigger fires for zero rows).
CLAIM_STATEMENTS = """
CREATE TABLE {schema}.claim_statements (
    application_name text NOT NULL,
    ran_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION {schema}.record_claim_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('application_name') LIKE 'worker % poller' THEN
        INSERT INTO {schema}.claim_statements (application_name)
        VALUES (current_setting('application_name'));
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER claim_statements
    AFTER UPDATE ON {schema}.tasks
    FOR EACH STATEMENT
    EXECUTE FUNCTION {schema}.record_claim_statement();
"""

POLL_INTERVAL = 0.5
WINDOW_SECONDS = 1.5
# The claims a calm poller runs in the window: one per poll interval, and a few
# for the notifications it hears. One that asks again at once runs thousands.
CALM_CLAIMS = 8


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    created = versions_database(lesson_database)
    with created.pool.connection() as conn:
        conn.execute(sql.SQL(CLAIM_STATEMENTS).format(schema=sql.Identifier(created.schema)))
    return created


def claims_in_a_window(database: LessonDatabase, worker_id: int) -> int:
    """How many claim statements the worker's poller runs in the next WINDOW_SECONDS,
    on the database's clock."""
    with database.pool.connection() as conn:
        start = Querier(conn).database_now()
    assert start is not None
    end = start + timedelta(seconds=WINDOW_SECONDS)
    wait_until_past(database, end)
    with database.pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM claim_statements "
            "WHERE application_name = %s AND ran_at > %s AND ran_at <= %s",
            (f"worker {worker_id} poller", start, end),
        ).fetchone()
    assert row is not None
    return int(row[0])


def calm_while_nothing_is_due(database: LessonDatabase, worker_id: int) -> None:
    """The control: with nothing due, the poller claims about once per poll interval.
    (Not an AssertionError: a failed control says the test is wrong, not the engine.)"""
    claims = claims_in_a_window(database, worker_id)
    if claims > CALM_CLAIMS:
        raise RuntimeError(f"the control failed: {claims} claims in {WINDOW_SECONDS} s idle")


def test_a_worker_beside_a_due_task_pinned_to_another_version_claims_no_faster_than_it_polls(
    database: LessonDatabase,
) -> None:
    """A v1 worker leaves a task waiting for an event, and stops. A v2 worker alone,
    polling every half second, claims about that often; the event is pushed, and the
    task, due now and pinned to v1, stays suspended; the v2 worker still claims no
    more often than that (before SecondsUntilNextWakeUp asked can_run_here, it
    claimed again at once: thousands of claims)."""
    pool = database.pool
    with (
        worker(database, "v1") as old,
        worker(database, "v2", poll_interval=POLL_INTERVAL) as new,
    ):
        old.start()
        waiter = enqueue_durable(pool, "event_waiter", {"key": "due"})
        wait_pinned(pool, [waiter], TaskStatus.SUSPENDED, "v1")
        assert old.stop() == 0
        new.start()
        calm_while_nothing_is_due(database, new.id)

        push(pool, "due")
        claims = claims_in_a_window(database, new.id)
        assert pinned(pool, [waiter], TaskStatus.SUSPENDED, "v1")
        assert claims <= CALM_CLAIMS, f"{claims} claims in {WINDOW_SECONDS} s"


def test_a_draining_worker_beside_a_due_delayed_durable_task_claims_no_faster_than_it_polls(
    database: LessonDatabase,
) -> None:
    """A v1 worker alone, draining, polling every half second, claims about that often;
    a durable task delayed by 0 s is due at once, and stays unstarted (v1 starts no
    new durable task); the worker still claims no more often than that."""
    pool = database.pool
    with worker(database, "v1", poll_interval=POLL_INTERVAL) as old:
        old.start()
        with pool.connection() as conn:
            drain_version(conn, "v1")
        calm_while_nothing_is_due(database, old.id)

        delayed = enqueue_durable(pool, "steps", {"delayed": True}, delay=0.0)
        claims = claims_in_a_window(database, old.id)
        task = get_task(pool, delayed)
        assert (task.status, task.attempt, task.code_version) == (TaskStatus.SUSPENDED, 0, None)
        assert claims <= CALM_CLAIMS, f"{claims} claims in {WINDOW_SECONDS} s"
