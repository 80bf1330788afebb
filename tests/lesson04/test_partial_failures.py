"""Lesson 04 under partial failures: leases judged by their owner, an outage that
condemns nobody, sweeps in bounded batches, and a rolling deploy.

Real worker processes and the real server, as in the lesson's other tests. The
outage goes through a TCP proxy (tests/database_proxy.py) that the workers
connect to, so that the database vanishes for them while the server itself
stays up for the test.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from psycopg_pool import ConnectionPool

from lessons.lesson04_queue_improvements.db.models import Task, TaskStatus
from lessons.lesson04_queue_improvements.db.queries import Querier
from lessons.lesson04_queue_improvements.engine.client import enqueue, wait_for_task
from lessons.lesson04_queue_improvements.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.database_proxy import DatabaseProxy
from tests.lesson04.test_queue_improvements import lesson_schema, started
from tests.recording import open_gate
from tests.waiting import wait_until

FUNCTIONS_MODULE = "tests.lesson04.functions"


def worker(
    database: LessonDatabase,
    *,
    heartbeat_interval: float,
    inactivity_threshold: float,
    functions: str = FUNCTIONS_MODULE,
    slots: int = 1,
    database_url: str | None = None,
    verbose: bool = True,
) -> WorkerProcess:
    """A worker process that logs the engine's events, optionally through a proxy."""
    return WorkerProcess(
        schema=database.schema,
        functions=functions,
        slots=slots,
        poll_interval=0.02,
        heartbeat_interval=heartbeat_interval,
        inactivity_threshold=inactivity_threshold,
        verbose=verbose,
        environment={"DATABASE_URL": database_url} if database_url else None,
    )


def tasks_of(pool: ConnectionPool, ids: list[int]) -> list[Task]:
    with pool.connection() as conn:
        queries = Querier(conn)
        found = [queries.get_task(id=task_id) for task_id in ids]
    return [task for task in found if task is not None]


@pytest.fixture
def proxy(database_url: str) -> Iterator[DatabaseProxy]:
    with DatabaseProxy(database_url) as running:
        yield running


def test_a_worker_with_a_long_lease_keeps_its_task_while_a_quick_worker_sweeps(
    lesson_database: Callable[..., LessonDatabase], tmp_path: Path
) -> None:
    """A beats every 1 s with a 6 s lease (a valid setting); B beats every 0.1 s
    with a 0.5 s lease, and sweeps ten times a second. B must judge A by A's own
    lease, not by B's threshold: A's task runs once, on A, and completes."""
    database = lesson_schema(lesson_database)
    pool = database.pool
    gate = tmp_path / "gate"
    slow = worker(database, heartbeat_interval=1.0, inactivity_threshold=6.0)
    quick = worker(database, heartbeat_interval=0.1, inactivity_threshold=0.5)
    with slow, quick:
        slow.start()
        with pool.connection() as conn:
            task_id = enqueue(conn, "hold_slot", {"schema": database.schema, "gate": str(gate)})
        wait_until(lambda: started(pool, task_id))
        quick.start()
        # Three of A's heartbeat intervals, thirty of B's sweeps: A's last beat
        # is often older than B's threshold, never older than A's own lease.
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            assert tasks_of(pool, [task_id])[0].status == TaskStatus.RUNNING, quick.log()
            time.sleep(0.05)
        open_gate(gate)
        task = wait_for_task(pool, task_id, timeout=30)
        assert (task.status, task.attempt, task.worker_id) == (TaskStatus.COMPLETED, 1, slow.id)
        assert started(pool, task_id) == [(1, slow.pid)], "the task ran once, on A"
        assert "result rejected" not in slow.log()
        assert slow.stop() == 0, slow.log()
        assert quick.stop() == 0, quick.log()


def test_an_outage_of_three_leases_condemns_no_worker_and_burns_no_attempt(
    lesson_database: Callable[..., LessonDatabase], tmp_path: Path, proxy: DatabaseProxy
) -> None:
    """Four workers (heartbeat 0.2 s, lease 1 s) each run a task with no retries
    left; the database is out of their reach for 3 s, three whole leases. When it
    is back, the first worker to beat again finds every other lease expired, but
    must not take their tasks: each worker is alive and finishing its own. Every
    task completes on attempt 1, and no result is rejected."""
    database = lesson_schema(lesson_database)
    pool = database.pool
    gate = tmp_path / "gate"
    workers = [
        worker(database, heartbeat_interval=0.2, inactivity_threshold=1.0, database_url=proxy.url)
        for _ in range(4)
    ]
    with ExitStack() as stack:
        for process in workers:
            stack.enter_context(process).start()
        with pool.connection() as conn:
            ids = [
                enqueue(
                    conn,
                    "hold_slot",
                    {"schema": database.schema, "gate": str(gate)},
                    max_retries=0,
                )
                for _ in workers
            ]
        wait_until(lambda: all(started(pool, task_id) for task_id in ids))

        proxy.cut()
        time.sleep(3.0)  # the outage itself: three leases of every worker
        proxy.restore()
        # Back: every worker renews its lease within a heartbeat or so.
        wait_until(lambda: leases_all_renewed(pool, [process.id for process in workers]))
        open_gate(gate)

        finished = [wait_for_task(pool, task_id, timeout=30) for task_id in ids]
        logs = "\n".join(process.log() for process in workers)
        for task in finished:
            assert (task.status, task.attempt) == (TaskStatus.COMPLETED, 1), (task, logs)
        assert "result rejected" not in logs
        assert "worker lost" not in logs
        for process in workers:
            assert process.stop() == 0, process.log()


def test_a_task_whose_claim_reply_was_lost_by_a_live_worker_runs_again(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    """A claim committed and its reply was lost (the connection died on the way): the
    task is the worker's in the database, and runs nowhere. Played here by marking a
    queued task running for a live worker in the enqueue's own transaction, as the
    claim's UPDATE would. The worker is alive and renews its lease, so no sweep takes
    the task back; with no execution timeout nothing else would. Its heartbeat must
    find the task owned and never received, and give it back: it runs, and completes
    at attempt 1, since the lost claim is undone (see engine/claims.py)."""
    database = lesson_schema(lesson_database)
    pool = database.pool
    with worker(database, heartbeat_interval=0.1, inactivity_threshold=0.5) as process:
        process.start()
        with pool.connection() as conn, conn.transaction():
            task_id = enqueue(
                conn, "nap", {"schema": database.schema, "seconds": 0.0}, max_retries=0
            )
            conn.execute(
                "UPDATE tasks SET status = 'running', attempt = attempt + 1, worker_id = %s,"
                " started_at = now(), schedule_deadline = NULL WHERE id = %s",
                (process.id, task_id),
            )
        task = wait_for_task(pool, task_id, timeout=10)
        assert (task.status, task.attempt) == (TaskStatus.COMPLETED, 1), process.log()
        assert f"task {task_id} attempt 1: this worker's claim of it committed" in process.log()
        assert process.stop() == 0, process.log()


def leases_all_renewed(pool: ConnectionPool, worker_ids: list[int]) -> bool:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT bool_and(lease_expires_at > now()) FROM workers WHERE id = ANY(%s)",
            (worker_ids,),
        ).fetchone()
    return bool(row and row[0])


def test_a_task_no_worker_has_a_function_for_waits_on_the_queue_untouched(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    """A worker claims only tasks it has a function for: a task of another kind
    stays queued, never started (attempt 0), for a worker that can run it."""
    database = lesson_schema(lesson_database)
    pool = database.pool
    old = worker(
        database,
        heartbeat_interval=0.1,
        inactivity_threshold=1.0,
        functions="tests.lesson04.functions_before_deploy",
    )
    with old:
        old.start()
        with pool.connection() as conn:
            new = enqueue(conn, "new_kind", {"schema": database.schema})
            known = enqueue(conn, "note_start", {"schema": database.schema})
        assert wait_for_task(pool, known).status == TaskStatus.COMPLETED
        task = tasks_of(pool, [new])[0]
        assert (task.status, task.attempt, task.worker_id) == (TaskStatus.QUEUED, 0, None)
        assert old.stop() == 0, old.log()


def test_old_and_new_workers_on_one_queue_during_a_rolling_deploy_complete_every_task(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    """Two old workers, which do not know `new_kind`, and one new worker, which
    does, share a queue holding both kinds of task: every task completes on its
    first attempt, each new one on the new worker."""
    database = lesson_schema(lesson_database)
    pool = database.pool
    old = [
        worker(
            database,
            heartbeat_interval=0.1,
            inactivity_threshold=1.0,
            functions="tests.lesson04.functions_before_deploy",
            slots=2,
        )
        for _ in range(2)
    ]
    new = worker(database, heartbeat_interval=0.1, inactivity_threshold=1.0, slots=2)
    with ExitStack() as stack:
        for process in [*old, new]:
            stack.enter_context(process).start()
        with pool.connection() as conn:
            kinds = ["note_start", "new_kind"] * 20
            ids = [enqueue(conn, kind, {"schema": database.schema}) for kind in kinds]
        finished = [wait_for_task(pool, task_id, timeout=30) for task_id in ids]
        for kind, task in zip(kinds, finished, strict=True):
            assert (task.status, task.attempt) == (TaskStatus.COMPLETED, 1), task
            if kind == "new_kind":
                assert task.worker_id == new.id
        for process in [*old, new]:
            assert process.stop() == 0, process.log()


@pytest.mark.slow
def test_a_sweep_of_200_000_overdue_tasks_works_in_short_batches_and_never_delays_a_heartbeat(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    """One million queued tasks, of which 200,000 passed their schedule deadline
    while no worker ran (on a queue no worker serves, so only the sweeps, which
    cover every queue, touch them). A worker ends all 200,000, but in batches: no
    sweep statement runs for a second, and its heartbeat (0.2 s) is never late
    by a second. (The worker does not log: 200,000 log lines would measure the
    logging.)"""
    database = lesson_schema(lesson_database)
    pool = database.pool
    with pool.connection() as conn:
        conn.execute(
            """
            INSERT INTO tasks (queue, task_name, display_name, input, schedule_deadline)
            SELECT 'nobody_serves_it', 'nap', 'nap', '{}'::jsonb,
                   CASE WHEN n <= 200000 THEN now() - interval '1 minute' END
            FROM generate_series(1, 1000000) AS n
            """
        )
        conn.execute("ANALYZE tasks")
    sweeper = worker(database, heartbeat_interval=0.2, inactivity_threshold=2.0, verbose=False)
    with sweeper:
        sweeper.start()
        longest_statement = 0.0
        latest_heartbeat = 0.0
        while overdue_left(pool) > 0:
            statement, heartbeat = ages(pool, sweeper.id)
            longest_statement = max(longest_statement, statement)
            latest_heartbeat = max(latest_heartbeat, heartbeat)
            assert longest_statement < 1.0, "a sweep statement ran for a second"
            assert latest_heartbeat < 1.0, "the heartbeat was late by a second"
            time.sleep(0.05)
        assert sweeper.stop() == 0, sweeper.log()


def overdue_left(pool: ConnectionPool) -> int:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM tasks WHERE status = 'queued' AND schedule_deadline <= now()"
        ).fetchone()
    return int(row[0]) if row else 0


def ages(pool: ConnectionPool, worker_id: int) -> tuple[float, float]:
    """How long the longest schedule-timeout sweep statement running now has run,
    and how long ago the worker last beat, in seconds."""
    with pool.connection() as conn:
        row = conn.execute(
            """
            SELECT
                coalesce(max(extract(epoch FROM now() - query_start)), 0)::double precision,
                (SELECT extract(epoch FROM now() - last_heartbeat_at)::double precision
                 FROM workers WHERE id = %s)
            FROM pg_stat_activity
            WHERE state = 'active' AND query LIKE '%%WITH expired AS%%'
            """,
            (worker_id,),
        ).fetchone()
    assert row is not None
    return float(row[0]), float(row[1])
