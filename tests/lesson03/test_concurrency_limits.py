"""Lesson 03: a worker never runs more tasks at once than its slots, and never
claims more tasks than it has free slots."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from psycopg_pool import ConnectionPool

from lessons.lesson03_concurrency_limits.db.models import TaskStatus
from lessons.lesson03_concurrency_limits.engine.client import enqueue, wait_for_task
from lessons.lesson03_concurrency_limits.engine.worker import Worker
from tests.conftest import LessonDatabase
from tests.lesson03.functions import FUNCTIONS
from tests.recording import create_executions_table, open_gate
from tests.waiting import wait_until
from tests.worker_processes import LessonWorkerProcess

LESSON = "lesson03_concurrency_limits"
FUNCTIONS_MODULE = "tests.lesson03.functions"
POLL_INTERVAL = 0.02

# The database's own account of every claim, kept by a trigger on `tasks`: who
# claimed (the connection's application_name names the worker), how many tasks,
# and how many tasks that worker had running in the database right after the
# claim. A worker that claims more than its free slots shows there as
# running_after > slots, whatever the worker believes about itself.
CLAIMS_TRIGGER = """
CREATE TABLE claimed_by (task_id bigint NOT NULL, worker text NOT NULL);

CREATE TABLE claims (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    worker text NOT NULL,
    claimed integer NOT NULL,
    running_after integer NOT NULL
);

CREATE FUNCTION record_claim() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
    claimer text := current_setting('application_name');
    claimed integer;
BEGIN
    INSERT INTO claimed_by (task_id, worker)
    SELECT id, claimer FROM changed WHERE status = 'running';
    GET DIAGNOSTICS claimed = ROW_COUNT;
    IF claimed > 0 THEN
        INSERT INTO claims (worker, claimed, running_after)
        SELECT claimer, claimed, count(*)
        FROM tasks JOIN claimed_by ON claimed_by.task_id = tasks.id
        WHERE tasks.status = 'running' AND claimed_by.worker = claimer;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER record_claims AFTER UPDATE ON tasks
REFERENCING NEW TABLE AS changed
FOR EACH STATEMENT EXECUTE FUNCTION record_claim();
"""


def lesson_schema(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    database = lesson_database(LESSON)
    with database.pool.connection() as conn:
        conn.execute(CLAIMS_TRIGGER)
        create_executions_table(conn)
    return database


def named_pool(database: LessonDatabase, application_name: str, max_size: int) -> ConnectionPool:
    """A pool on the lesson's schema whose connections carry `application_name`."""
    pool = ConnectionPool(
        database.url,
        min_size=1,
        max_size=max_size,
        kwargs={
            "autocommit": True,
            "options": f"-c search_path={database.schema}",
            "application_name": application_name,
        },
        open=False,
    )
    pool.open(wait=True, timeout=30)
    return pool


def worker_process(
    database: LessonDatabase, *, slots: int, application_name: str | None = None
) -> LessonWorkerProcess:
    return LessonWorkerProcess(
        LESSON,
        schema=database.schema,
        functions=FUNCTIONS_MODULE,
        arguments=[f"--poll-interval={POLL_INTERVAL}", f"--slots={slots}"],
        # libpq reads PGAPPNAME: every connection of that process carries the name.
        environment={"PGAPPNAME": application_name} if application_name else None,
    )


def most_at_once(intervals: Iterable[tuple[float, float]]) -> int:
    """The most intervals that overlap at any instant (an end before a start at a tie)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


def count_by_status(pool: ConnectionPool) -> dict[str, int]:
    with pool.connection() as conn:
        rows = conn.execute("SELECT status::text, count(*) FROM tasks GROUP BY status").fetchall()
    return {status: count for status, count in rows}


def test_under_a_burst_no_worker_runs_more_than_its_slots_nor_claims_more_than_it_has_free(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    """Two workers (a process with 2 slots, one in this process with 4) drain a
    burst of 120 tasks. By the task functions' own clocks neither ever ran more
    tasks at once than its slots; by the database's record of every claim, neither
    ever had more tasks running than its slots, so no claim took more than the
    free slots; and the in-process worker's own counter agrees."""
    database = lesson_schema(lesson_database)
    pool = database.pool
    slots = {"worker-a": 2, "worker-b": 4}
    tasks = 120
    with (
        worker_process(database, slots=slots["worker-a"], application_name="worker-a") as a,
        named_pool(database, "worker-b", max_size=slots["worker-b"] + 1) as b_pool,
    ):
        a.launch()
        a.wait_ready()
        with Worker(
            b_pool,
            FUNCTIONS,
            poll_interval=POLL_INTERVAL,
            slots=slots["worker-b"],
        ) as b:
            with pool.connection() as conn, conn.transaction():
                for _ in range(tasks):
                    enqueue(conn, "timed_sleep", {"seconds": 0.04})
            wait_until(
                lambda: count_by_status(pool).get("completed") == tasks,
                timeout=60,
                message=lambda: f"tasks by status: {count_by_status(pool)}",
            )
        assert a.terminate() == 0, a.log()
        slots_of_pid = {a.pid: slots["worker-a"], os.getpid(): slots["worker-b"]}

    with pool.connection() as conn:
        outputs: list[dict[str, Any]] = [
            output for (output,) in conn.execute("SELECT output FROM tasks").fetchall()
        ]
        claims = conn.execute("SELECT worker, claimed, running_after FROM claims").fetchall()

    # The functions' own account: how many ran at once in each process.
    intervals: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for output in outputs:
        intervals[output["pid"]].append((output["started"], output["finished"]))
    assert set(intervals) == set(slots_of_pid), "both workers ran tasks"
    for pid, ran in intervals.items():
        assert most_at_once(ran) <= slots_of_pid[pid]
        # The burst was big enough to fill every slot: the limit was tested.
        assert most_at_once(ran) == slots_of_pid[pid]

    # The database's account of every claim.
    assert {worker for worker, _, _ in claims} == set(slots)
    for worker, claimed, running_after in claims:
        assert claimed <= slots[worker], f"{worker} claimed {claimed} tasks at once"
        assert running_after <= slots[worker], (
            f"{worker} claimed more than its free slots: {running_after} tasks running"
        )
    claimed_by_worker: dict[str, int] = defaultdict(int)
    for worker, claimed, _ in claims:
        claimed_by_worker[worker] += claimed
    assert sum(claimed_by_worker.values()) == tasks, "each task was claimed once"
    assert claimed_by_worker["worker-a"] == len(intervals[a.pid])

    # And the in-process worker's own counter agrees.
    assert b.peak_slots_in_use == slots["worker-b"]


def test_a_worker_with_every_slot_busy_leaves_the_rest_of_the_queue_to_another_worker(
    lesson_database: Callable[..., LessonDatabase], tmp_path: Path
) -> None:
    """A worker with 2 slots, given 6 tasks, claims 2 and leaves 4 queued, not
    hoarded in its process: a second worker started later runs those 4 while the
    first is still busy."""
    database = lesson_schema(lesson_database)
    pool = database.pool
    gate = tmp_path / "gate"

    def started_by() -> dict[int, int]:
        with pool.connection() as conn:
            rows = conn.execute(
                "SELECT pid, count(*) FROM executions WHERE event = 'started' GROUP BY pid"
            ).fetchall()
        return {pid: count for pid, count in rows}

    with (
        worker_process(database, slots=2) as first,
        worker_process(database, slots=4) as second,
    ):
        first.launch()
        first.wait_ready()
        with pool.connection() as conn, conn.transaction():
            for n in range(6):
                enqueue(
                    conn, "wait_at_gate", {"schema": database.schema, "n": n, "gate": str(gate)}
                )
        wait_until(lambda: started_by() == {first.pid: 2}, message=lambda: f"{started_by()}")
        # Both slots are held at the gate, so the first worker cannot claim again:
        # what the database shows now is everything it ever claimed.
        assert count_by_status(pool) == {"running": 2, "queued": 4}

        second.launch()
        second.wait_ready()
        wait_until(
            lambda: started_by() == {first.pid: 2, second.pid: 4},
            message=lambda: f"started, by pid: {started_by()}",
        )
        open_gate(gate)
        wait_until(lambda: count_by_status(pool) == {"completed": 6})
        assert first.terminate() == 0, first.log()
        assert second.terminate() == 0, second.log()


def test_an_error_message_jsonb_cannot_hold_fails_the_task_and_frees_its_slot(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    """An exception whose message holds a lone surrogate (a file name that is not
    UTF-8) fails its task with the character spelled out, and the worker's only
    slot is free again for the next task."""
    pool = lesson_database(LESSON).pool
    with Worker(pool, FUNCTIONS, poll_interval=POLL_INTERVAL, slots=1):
        with pool.connection() as conn:
            failing = enqueue(conn, "import_report", {})
            after = enqueue(conn, "timed_sleep", {"seconds": 0})
        task = wait_for_task(pool, failing, timeout=20)
        assert wait_for_task(pool, after, timeout=20).status == TaskStatus.COMPLETED
    assert task.status == TaskStatus.FAILED
    assert task.output == {
        "error": {
            "type": "ValueError",
            "message": "cannot import report-\\udcff.csv: no header line",
        }
    }
