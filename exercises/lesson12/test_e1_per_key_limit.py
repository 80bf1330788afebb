"""A limit for one key: `set_key_limit(conn, queue, key, max_running)`.

The enterprise tenant pays for three reports at once, every other tenant gets the
queue's one. Add `set_key_limit` to engine/client.py: a `max_running` column on
concurrency_keys (NULL: the queue's max_per_key) that overrides the queue's limit
for that key, everywhere the limit is read: the claim's open keys, the walk's hint
(keys_to_visit) and the trigger's over-admission backstop. The check sets the queue's
limit to 1 and enterprise's to 3, enqueues tasks that hold their slot until released,
and starts a worker of 8 slots: exactly 3 of enterprise's run at once and 1 of
startup's (by the test's own audit of every commit), even after the worker has
claimed again; forcing a 4th of enterprise's to running in one UPDATE, or a 2nd of
startup's, is refused with check_violation; released, every task completes. And
with 1 of enterprise's 3 slots taken, a walk for one open key stops at enterprise.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from exercises import expect
from lessons.lesson12_flow_control.db.models import TaskStatus
from lessons.lesson12_flow_control.engine import client
from lessons.lesson12_flow_control.engine.client import (
    enqueue,
    set_concurrency_limit,
    wait_for_task,
)
from lessons.lesson12_flow_control.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.lesson12.audit import counter_mismatches, install_audit, max_held_per_key
from tests.lesson12.functions import arrival_file
from tests.recording import open_gate
from tests.waiting import wait_until

LESSON = "lesson12_flow_control"
FUNCTIONS_MODULE = "tests.lesson12.functions"
QUEUE = "reports"
ENTERPRISE_LIMIT = 3


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    """A lesson-12 schema with the tests' audit of every key's slots installed."""
    created = lesson_database(LESSON)
    install_audit(created)
    return created


def arrived(gate: Path, task_ids: list[int]) -> int:
    """How many of these tasks have started running (each leaves a file at the gate)."""
    return sum(arrival_file(str(gate), task_id).exists() for task_id in task_ids)


def force_to_running(
    conn: psycopg.Connection[Any], task_id: int
) -> psycopg.errors.CheckViolation | None:
    """Set a queued task running behind the claim's back, in one UPDATE (what a claim
    that misread the limit would do), and roll it back whatever happens: the
    backstop's refusal, or None when it let the task through."""
    try:
        with conn.transaction():
            conn.execute(
                "UPDATE tasks SET status = 'running', attempt = 1, started_at = now() "
                "WHERE id = %s",
                (task_id,),
            )
            raise psycopg.Rollback()
    except psycopg.errors.CheckViolation as refusal:
        return refusal
    return None


def test_one_key_runs_up_to_its_own_limit_and_the_others_up_to_the_queues(
    database: LessonDatabase, tmp_path: Path
) -> None:
    set_key_limit: Callable[..., Any] | None = getattr(client, "set_key_limit", None)
    expect(
        set_key_limit is not None,
        "lesson 12's engine/client.py has no `set_key_limit` yet: see exercise 1 in its README",
    )
    assert set_key_limit is not None
    pool = database.pool
    gate = tmp_path / "gate"
    held = {"gate": str(gate)}
    with pool.connection() as conn:
        set_concurrency_limit(conn, QUEUE, 1)
        set_key_limit(conn, QUEUE, "enterprise", ENTERPRISE_LIMIT)
        enterprise = [
            enqueue(conn, "wait_at_gate", held, queue=QUEUE, concurrency_key="enterprise")
            for _ in range(5)
        ]
        startup = [
            enqueue(conn, "wait_at_gate", held, queue=QUEUE, concurrency_key="startup")
            for _ in range(2)
        ]
    worker = WorkerProcess(
        schema=database.schema,
        queues=[QUEUE],
        functions=FUNCTIONS_MODULE,
        slots=8,
        poll_interval=0.05,
        heartbeat_interval=0.1,
        inactivity_threshold=1.0,
    )
    with worker:
        worker.start()
        try:
            wait_until(
                lambda: arrived(gate, enterprise) == ENTERPRISE_LIMIT and arrived(gate, startup),
                timeout=30,
                message=lambda: (
                    f"{arrived(gate, enterprise)} of enterprise's tasks and "
                    f"{arrived(gate, startup)} of startup's started; expected "
                    f"{ENTERPRISE_LIMIT} and 1 (4 of the worker's 8 slots stay free); the "
                    f"worker's log ends:\n{worker.log()[-1500:]}"
                ),
            )
            # A keyless task that runs at once: once it has completed, the worker
            # has claimed again with free slots, and could have admitted more.
            with pool.connection() as conn:
                probe = enqueue(conn, "work", {}, queue=QUEUE)
            assert wait_for_task(pool, probe, timeout=30).status == TaskStatus.COMPLETED
            assert (arrived(gate, enterprise), arrived(gate, startup)) == (ENTERPRISE_LIMIT, 1)

            with pool.connection() as conn:
                fourth = force_to_running(conn, enterprise[-1])
                second = force_to_running(conn, startup[-1])
            expect(
                fourth is not None,
                "a 4th enterprise task forced to running was let through: the trigger's "
                "backstop (count_key_slots) must refuse what is over the key's own limit",
            )
            expect(
                second is not None,
                "a 2nd startup task forced to running was let through: a key with no "
                "limit of its own keeps the queue's (max_per_key = 1)",
            )
            assert "over-admission" in str(fourth) and "over-admission" in str(second)
        finally:
            open_gate(gate)
        for task_id in enterprise + startup:
            task = wait_for_task(pool, task_id, timeout=60)
            assert task.status == TaskStatus.COMPLETED, (task_id, task.output)
        assert worker.stop() == 0, worker.log()
    assert max_held_per_key(pool) == {"enterprise": ENTERPRISE_LIMIT, "startup": 1}
    assert counter_mismatches(pool) == []

    with pool.connection() as conn:
        walk = walk_with_one_enterprise_task_running(conn)
    expect(
        walk == ["enterprise"],
        f"with 1 of enterprise's {ENTERPRISE_LIMIT} slots taken, a walk for one open key "
        f"visited {walk}, not ['enterprise']: keys_to_visit must read the key's own limit "
        "to see that it is open",
    )


def walk_with_one_enterprise_task_running(conn: psycopg.Connection[Any]) -> list[str]:
    """The keys a walk from the start visits to find one open key, while 1 task of
    enterprise runs (over the queue's limit, under enterprise's own) and both keys
    have tasks queued. Rolled back: nothing of it stays."""
    with conn.transaction():
        ids = [
            enqueue(conn, "wait_at_gate", {}, queue=QUEUE, concurrency_key=key)
            for key in ("enterprise", "enterprise", "startup")
        ]
        conn.execute("UPDATE tasks SET status = 'running', attempt = 1 WHERE id = %s", (ids[0],))
        row = conn.execute(
            "SELECT keys_to_visit(%s, '', ARRAY['wait_at_gate'], ARRAY[]::text[], 1, 10)",
            (QUEUE,),
        ).fetchone()
        raise psycopg.Rollback()
    assert row is not None
    return list(row[0])
