"""Lesson 04's claim policy: a saturated worker claims in batches of at least its
share of the slots, or after its linger; a worker that keeps up claims at once.

Real worker processes on the real database. What a claim took is read from the
tasks themselves: one claim stamps each of its tasks with its worker and its
transaction's `now()`, so each (worker_id, started_at) is one claim. The tests
assert what was claimed and what ran, never how long it took: a linger far
longer than any deadline makes "the poller waited for the share" observable as
"it never claimed less", and "it did not wait" as "the task finished at all".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from psycopg_pool import ConnectionPool

from lessons.lesson04_queue_improvements.engine.client import enqueue
from lessons.lesson04_queue_improvements.engine.poller import ClaimPolicy
from lessons.lesson04_queue_improvements.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.recording import create_executions_table, open_gate
from tests.waiting import wait_until

LESSON = "lesson04_queue_improvements"
FUNCTIONS_MODULE = "tests.lesson04.functions"
SLOTS = 8
# Far longer than any wait below: a poller that lingered would fail the test, not pass it.
FOREVER = 3600.0
DEADLINE = 60.0


def lesson_schema(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    database = lesson_database(LESSON)
    with database.pool.connection() as conn:
        create_executions_table(conn)
    return database


def worker_process(database: LessonDatabase, claim_policy: ClaimPolicy) -> WorkerProcess:
    return WorkerProcess(
        schema=database.schema,
        functions=FUNCTIONS_MODULE,
        slots=SLOTS,
        claim_policy=claim_policy,
        poll_interval=0.02,
        heartbeat_interval=0.2,
        inactivity_threshold=10.0,
    )


def enqueue_naps(pool: ConnectionPool, schema: str, count: int) -> list[int]:
    """`count` tasks that sleep 10 to 80 ms, in turn: their slots free one by one."""
    with pool.connection() as conn:
        return [
            enqueue(conn, "nap", {"schema": schema, "seconds": 0.01 * (1 + n % SLOTS)})
            for n in range(count)
        ]


def unfinished(pool: ConnectionPool, task_ids: list[int]) -> int:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM tasks WHERE id = ANY(%s) AND status <> 'completed'",
            (task_ids,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def status_and_attempt(pool: ConnectionPool, task_id: int) -> tuple[str, int]:
    with pool.connection() as conn:
        row = conn.execute("SELECT status, attempt FROM tasks WHERE id = %s", (task_id,)).fetchone()
    assert row is not None
    return str(row[0]), int(row[1])


def claim_sizes(pool: ConnectionPool, task_ids: list[int]) -> list[int]:
    """How many of these tasks each claim took, claims in the order they were made
    (a task not claimed yet is in none)."""
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT count(*) FROM tasks WHERE id = ANY(%s) AND started_at IS NOT NULL"
            " GROUP BY worker_id, started_at ORDER BY started_at",
            (task_ids,),
        ).fetchall()
    return [int(count) for (count,) in rows]


def test_a_saturated_worker_claims_at_least_its_share_of_the_slots_each_time(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    """64 tasks of staggered lengths on a full queue, 8 slots, a share of 1/2 and a
    linger that never ends: every claim but the last (which empties the queue)
    takes at least 4 tasks, though slots come free one at a time. Claiming at once,
    most claims took one or two."""
    database = lesson_schema(lesson_database)
    task_ids = enqueue_naps(database.pool, database.schema, 8 * SLOTS)
    policy = ClaimPolicy(share_free=0.5, linger=FOREVER)
    with worker_process(database, policy) as worker:
        worker.start()
        wait_until(
            lambda: unfinished(database.pool, task_ids) == 0,
            timeout=DEADLINE,
            message=lambda: f"{unfinished(database.pool, task_ids)} unfinished\n{worker.log()}",
        )
        assert worker.stop() == 0
    sizes = claim_sizes(database.pool, task_ids)
    assert sum(sizes) == len(task_ids)
    assert sizes[0] == SLOTS  # an idle worker claims for all its free slots
    share = policy.slots_to_wait_for(SLOTS)
    assert all(size >= share for size in sizes[:-1]), sizes


def test_a_saturated_worker_claims_after_its_linger_when_the_share_never_comes_free(
    lesson_database: Callable[..., LessonDatabase], tmp_path: Path
) -> None:
    """One task holds its slot until the test is done, so all 8 slots are never free
    at once; a share of all the slots would wait for ever, but the linger ends each
    wait: the other tasks all run while the held one still holds its slot."""
    database = lesson_schema(lesson_database)
    gate = tmp_path / "gate"
    with database.pool.connection() as conn:
        held = enqueue(conn, "hold_slot", {"schema": database.schema, "gate": str(gate)})
    task_ids = enqueue_naps(database.pool, database.schema, 4 * SLOTS)
    with worker_process(database, ClaimPolicy(share_free=1.0, linger=0.05)) as worker:
        worker.start()
        try:
            wait_until(
                lambda: unfinished(database.pool, task_ids) == 0,
                timeout=DEADLINE,
                message=lambda: f"{unfinished(database.pool, task_ids)} unfinished\n{worker.log()}",
            )
            # Still its first attempt, holding its slot (the gate gives up after 30 s).
            assert status_and_attempt(database.pool, held) == ("running", 1)
        finally:
            open_gate(gate)
        assert worker.stop() == 0
    assert status_and_attempt(database.pool, held) == ("completed", 1)


def test_a_worker_that_keeps_up_starts_a_new_task_without_waiting_for_the_share(
    lesson_database: Callable[..., LessonDatabase], tmp_path: Path
) -> None:
    """A worker whose last claim was not full claims as soon as one slot is free:
    with one slot held, a share of all 8 slots and a linger of an hour, a new task
    still runs (well within the deadline, which is far shorter than the linger)."""
    database = lesson_schema(lesson_database)
    gate = tmp_path / "gate"
    with worker_process(database, ClaimPolicy(share_free=1.0, linger=FOREVER)) as worker:
        worker.start()
        with database.pool.connection() as conn:
            held = enqueue(conn, "hold_slot", {"schema": database.schema, "gate": str(gate)})
        try:
            wait_until(
                lambda: claim_sizes(database.pool, [held]) == [1],
                timeout=DEADLINE,
                message=lambda: f"the held task never started\n{worker.log()}",
            )
            with database.pool.connection() as conn:
                prompt = enqueue(conn, "note_start", {"schema": database.schema})
            wait_until(
                lambda: unfinished(database.pool, [prompt]) == 0,
                timeout=DEADLINE,
                message=lambda: f"the new task did not run\n{worker.log()}",
            )
            # Still its first attempt, holding its slot (the gate gives up after 30 s).
            assert status_and_attempt(database.pool, held) == ("running", 1)
        finally:
            open_gate(gate)
        assert worker.stop() == 0
