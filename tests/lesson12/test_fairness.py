"""Lesson 12: a noisy tenant with 10,000 tasks waiting delays quiet tenants by a
few turns of the walk over the keys, not by its backlog; without keys, lesson
11's order makes them wait for all of it.

Real worker processes. The start order is the tasks' own `started_at`, the
time of the claim that started each (one claim's tasks share it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack

import pytest
from psycopg_pool import ConnectionPool

from lessons.lesson12_flow_control.engine.client import set_concurrency_limit
from lessons.lesson12_flow_control.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.lesson12.test_concurrency_keys import (
    FUNCTIONS_MODULE,
    LESSON,
    QUEUE,
    NewTask,
    enqueue_many,
)
from tests.waiting import wait_until

NOISY = "tenant-big"  # first in the walk's order: it has the first turn
QUIET = [f"tenant-q{n:02d}" for n in range(20)]
NOISY_TASKS = 10_000
QUIET_TASKS = 10  # per quiet tenant
WORKERS = 2
SLOTS = 4
# No key ever reaches it: WORKERS * SLOTS = 8 tasks run at once in all.
MAX_PER_KEY = 10
# The most noisy tasks that may start before a quiet tenant's last one
# (derived in the keyed test's docstring): a turn per worker per lap.
NOISY_BOUND = WORKERS * (QUIET_TASKS + 1)


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def workers(database: LessonDatabase) -> list[WorkerProcess]:
    return [
        WorkerProcess(
            schema=database.schema,
            queues=[QUEUE],
            functions=FUNCTIONS_MODULE,
            slots=SLOTS,
            poll_interval=0.05,
            heartbeat_interval=0.1,
            inactivity_threshold=1.0,
        )
        for _ in range(WORKERS)
    ]


def enqueue_tenants(database: LessonDatabase, *, keyed: bool, seconds: float) -> None:
    """The noisy tenant's backlog first, then the quiet tenants' tasks, each task
    carrying its tenant in its input (and as its key, when `keyed`)."""
    tasks = [
        NewTask("work", {"tenant": tenant, "seconds": seconds}, tenant if keyed else None)
        for tenant, count in [(NOISY, NOISY_TASKS), *((quiet, QUIET_TASKS) for quiet in QUIET)]
        for _ in range(count)
    ]
    with database.pool.connection() as conn:
        if keyed:
            set_concurrency_limit(conn, QUEUE, MAX_PER_KEY)
        enqueue_many(conn, QUEUE, tasks)


def quiet_not_started(pool: ConnectionPool) -> int:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM tasks WHERE input->>'tenant' <> %s AND started_at IS NULL",
            (NOISY,),
        ).fetchone()
    return int(row[0]) if row else 0


def noisy_started_before_each_quiet_tenant_finished_starting(
    pool: ConnectionPool,
) -> dict[str, int]:
    """For each quiet tenant: how many noisy tasks had started (strictly) before
    its last task started."""
    with pool.connection() as conn:
        rows = conn.execute(
            """
            SELECT quiet.tenant,
                (SELECT count(*) FROM tasks AS noisy
                 WHERE noisy.input->>'tenant' = %(noisy)s AND noisy.started_at < quiet.last_start)
            FROM (
                SELECT input->>'tenant' AS tenant, max(started_at) AS last_start
                FROM tasks WHERE input->>'tenant' <> %(noisy)s GROUP BY 1
            ) AS quiet
            ORDER BY quiet.tenant
            """,
            {"noisy": NOISY},
        ).fetchall()
    return {tenant: count for tenant, count in rows}


def run_until_the_quiet_tenants_started(database: LessonDatabase, timeout: float) -> float:
    """Start the workers, and stop them once every quiet task has started."""
    started_at = time.monotonic()
    with ExitStack() as stack:
        processes = workers(database)
        for process in processes:
            stack.enter_context(process).start()
        wait_until(
            lambda: quiet_not_started(database.pool) == 0,
            timeout=timeout,
            message=lambda: f"{quiet_not_started(database.pool)} quiet tasks never started",
        )
        elapsed = time.monotonic() - started_at
        for process in processes:
            assert process.stop() == 0, process.log()
    return elapsed


def test_quiet_keys_start_within_a_few_turns_of_a_noisy_key_with_10_000_waiting(
    database: LessonDatabase,
) -> None:
    """One noisy key with 10,000 queued tasks and 20 quiet keys with T = 10 each,
    all enqueued before W = 2 workers of S = 4 slots start; limit N = 10 per key,
    which no key reaches (only W * S = 8 tasks run at once), so every key with
    queued tasks is open at every claim, and the order is the walk's alone.

    Why at most B = W * (T + 1) = 22 noisy tasks start before any quiet key's
    last task. Each claim of a worker with f free slots (f <= S = 4 < 21 keys)
    walks the keys on from the last key that worker served, and takes one task
    from each of the next f keys (the first turn of each key comes before the
    second of any): so a worker serves the keys one after the other round the
    ring, and the noisy key at most once per lap. A quiet key a worker's walk
    passes over is locked by the other worker's claim, which is starting one
    of its tasks then: in every lap of a worker, each quiet key with tasks left
    starts one at least. So a quiet key's T tasks have all started by the end
    of each worker's T-th lap after its start, plus the lap under way: T + 1
    laps, in which that worker started T + 1 noisy tasks at most, W * (T + 1)
    for the W workers. The bound depends on T, W and S, not on the 10,000."""
    enqueue_tenants(database, keyed=True, seconds=0.02)
    elapsed = run_until_the_quiet_tenants_started(database, timeout=60)
    noisy_before = noisy_started_before_each_quiet_tenant_finished_starting(database.pool)
    print(
        f"\nkeyed: all {len(QUIET) * QUIET_TASKS} quiet tasks started in {elapsed:.1f} s; "
        f"noisy tasks started before each quiet tenant's last start (bound {NOISY_BOUND}): "
        f"{noisy_before}"
    )
    assert set(noisy_before) == set(QUIET)
    assert max(noisy_before.values()) <= NOISY_BOUND, noisy_before


def test_without_keys_the_quiet_tenants_wait_for_the_noisy_tenants_whole_backlog(
    database: LessonDatabase,
) -> None:
    """The same tasks with no keys: lesson 11's order, highest priority first,
    then oldest first, so the 200 quiet tasks enqueued after the noisy tenant's
    10,000 start only once those have started. (Two workers' claims at once may
    overlap by the tasks of one claim each: at most W * S = 8 noisy tasks start
    after the first quiet one.) The tasks take no time, to get through the
    backlog quickly."""
    enqueue_tenants(database, keyed=False, seconds=0)
    elapsed = run_until_the_quiet_tenants_started(database, timeout=120)
    with database.pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM tasks WHERE input->>'tenant' = %(noisy)s AND started_at < ("
            "SELECT min(started_at) FROM tasks WHERE input->>'tenant' <> %(noisy)s)",
            {"noisy": NOISY},
        ).fetchone()
    noisy_before_first_quiet = int(row[0]) if row else 0
    print(
        f"\nkeyless: the first quiet task started after {noisy_before_first_quiet} noisy ones; "
        f"all quiet tasks started in {elapsed:.1f} s"
    )
    assert noisy_before_first_quiet >= NOISY_TASKS - WORKERS * SLOTS
