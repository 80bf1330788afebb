"""Lesson 12 under partial failures: the keys' counts stay exact, and no key goes over
its limit, through a database outage longer than the workers' leases and through a
worker frozen inside the transaction that gives its key's slot back.

Real worker processes, the real server, and the test-only audit of every commit
(tests/lesson12/audit.sql). The outage goes through a TCP proxy
(tests/database_proxy.py): the database vanishes for the workers, the claim's own
connection included (engine/poller.py), while the server stays up for the test.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from psycopg_pool import ConnectionPool

from lessons.lesson12_flow_control.db.models import Task, TaskStatus
from lessons.lesson12_flow_control.engine.client import (
    enqueue,
    set_concurrency_limit,
    wait_for_task,
)
from lessons.lesson12_flow_control.engine.crash_points import FREEZE_AT
from lessons.lesson12_flow_control.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.database_proxy import DatabaseProxy
from tests.lesson12.audit import (
    counter_mismatches,
    counters,
    install_audit,
    max_held_per_key,
)
from tests.lesson12.functions import arrival_file
from tests.lesson12.local_workers import get_task
from tests.takeovers import is_frozen
from tests.waiting import wait_until

LESSON = "lesson12_flow_control"
FUNCTIONS_MODULE = "tests.lesson12.functions"
QUEUE = "keyed"
KEYS = ["k-a", "k-b", "k-c", "k-d"]


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    created = lesson_database(LESSON)
    install_audit(created)
    with created.pool.connection() as conn:
        set_concurrency_limit(conn, QUEUE, 1)
    return created


@pytest.fixture
def proxy(database_url: str) -> Iterator[DatabaseProxy]:
    with DatabaseProxy(database_url) as running:
        yield running


def worker(
    database: LessonDatabase,
    *,
    heartbeat_interval: float,
    inactivity_threshold: float,
    environment: dict[str, str] | None = None,
) -> WorkerProcess:
    return WorkerProcess(
        schema=database.schema,
        queues=[QUEUE],
        functions=FUNCTIONS_MODULE,
        slots=4,
        poll_interval=0.05,
        heartbeat_interval=heartbeat_interval,
        inactivity_threshold=inactivity_threshold,
        verbose=True,
        environment=environment,
    )


def enqueue_at_gate(pool: ConnectionPool, gate: Path, key: str, *, max_retries: int = 3) -> int:
    with pool.connection() as conn:
        return enqueue(
            conn,
            "wait_at_gate",
            {"gate": str(gate)},
            queue=QUEUE,
            concurrency_key=key,
            max_retries=max_retries,
        )


def leases_all_renewed(pool: ConnectionPool, worker_ids: list[int]) -> bool:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT bool_and(lease_expires_at > now()) FROM workers WHERE id = ANY(%s)",
            (worker_ids,),
        ).fetchone()
    return bool(row and row[0])


def assert_counts_exact_and_within_the_limit(pool: ConnectionPool) -> None:
    assert max(max_held_per_key(pool).values()) == 1, max_held_per_key(pool)
    assert counter_mismatches(pool) == []
    assert set(counters(pool).values()) == {0}, counters(pool)


def test_an_outage_of_three_leases_keeps_every_key_within_its_limit(
    database: LessonDatabase, tmp_path: Path, proxy: DatabaseProxy
) -> None:
    """Two workers (heartbeat 0.2 s, lease 1 s) through the proxy; four keys with a
    limit of 1, each with one task running, held at a gate, and one queued behind it.
    The database is out of the workers' reach for 3 s, three leases. When it is back,
    no worker takes another's tasks (each is alive, and renews first), the pollers
    claim again on new connections, and every task completes on attempt 1, with no key
    ever over its limit and every count equal to its recount at every commit."""
    pool = database.pool
    gate = tmp_path / "gate"
    workers = [
        worker(
            database,
            heartbeat_interval=0.2,
            inactivity_threshold=1.0,
            environment={"DATABASE_URL": proxy.url},
        )
        for _ in range(2)
    ]
    with ExitStack() as stack:
        for process in workers:
            stack.enter_context(process).start()
        first = [enqueue_at_gate(pool, gate, key, max_retries=0) for key in KEYS]
        second = [enqueue_at_gate(pool, gate, key, max_retries=0) for key in KEYS]
        wait_until(
            lambda: all(arrival_file(str(gate), task_id).exists() for task_id in first),
            message="the first task of every key did not reach the gate",
        )
        assert [get_task(pool, task_id).status for task_id in second] == [TaskStatus.QUEUED] * 4

        proxy.cut()
        time.sleep(3.0)  # the outage itself: three leases of every worker
        proxy.restore()
        wait_until(
            lambda: leases_all_renewed(pool, [process.id for process in workers]),
            timeout=20,
            message="the workers did not all renew their leases",
        )
        gate.touch()

        finished: list[Task] = [
            wait_for_task(pool, task_id, timeout=60) for task_id in first + second
        ]
        logs = "\n".join(process.log() for process in workers)
        assert [(task.status, task.attempt) for task in finished] == [
            (TaskStatus.COMPLETED, 1)
        ] * 8, logs
        assert "worker lost" not in logs
        assert_counts_exact_and_within_the_limit(pool)
        for process in workers:
            assert process.stop() == 0, process.log()


def test_a_worker_frozen_while_it_gives_a_slot_back_blocks_no_other_key_and_leaks_nothing(
    database: LessonDatabase, tmp_path: Path
) -> None:
    """A worker freezes (SIGSTOP, COURSE_FREEZE_AT) inside its result transaction:
    FinishAttempts has run, and the trigger holds the key's row locked with the count
    lowered, not yet committed. A healthy worker goes on with the other keys
    meanwhile (the claim passes over a locked key row). The server ends the frozen
    session within half the threshold, which undoes the lowered count; the frozen
    worker's lease expires, the healthy worker takes its task back and runs it again,
    and then the key's next task. No key is ever over its limit of 1, and every count
    equals its recount at every commit."""
    pool = database.pool
    gate = tmp_path / "gate"
    gate.touch()  # nothing waits: each task completes at once
    frozen = worker(
        database,
        heartbeat_interval=0.2,
        inactivity_threshold=2.0,
        environment={FREEZE_AT: "finish_attempts:before_commit"},
    )
    healthy = worker(database, heartbeat_interval=0.2, inactivity_threshold=2.0)
    with frozen, healthy:
        frozen.start()
        stuck = enqueue_at_gate(pool, gate, "k-a")
        wait_until(lambda: is_frozen(frozen.pid), message=frozen.log)
        behind = enqueue_at_gate(pool, gate, "k-a")
        others = [enqueue_at_gate(pool, gate, key) for key in KEYS[1:]]
        healthy.start()

        for task_id in others:
            task = wait_for_task(pool, task_id, timeout=30)
            assert (task.status, task.attempt) == (TaskStatus.COMPLETED, 1), healthy.log()
        assert get_task(pool, behind).status == TaskStatus.QUEUED, "k-a's slot is still taken"

        retried = wait_for_task(pool, stuck, timeout=60)
        assert (retried.status, retried.attempt) == (TaskStatus.COMPLETED, 2), healthy.log()
        assert wait_for_task(pool, behind, timeout=30).status == TaskStatus.COMPLETED
        assert_counts_exact_and_within_the_limit(pool)
        assert healthy.stop() == 0, healthy.log()
