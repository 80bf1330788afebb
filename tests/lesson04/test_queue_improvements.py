"""Lesson 04: a dead worker's task is finished by another; a frozen worker cannot
overwrite the work of the one that took over; retries stop at the maximum;
non-retryable errors are not retried; both timeouts fire; priorities hold.

Workers use short intervals: poll every 0.02 s, heartbeat every 0.1 s, and a
worker silent for 1 s is presumed dead.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from lessons.lesson04_queue_improvements.db.models import Task, TaskStatus
from lessons.lesson04_queue_improvements.db.queries import Querier
from lessons.lesson04_queue_improvements.engine.client import enqueue, wait_for_task
from lessons.lesson04_queue_improvements.engine.worker import Worker
from lessons.lesson04_queue_improvements.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.lesson04.functions import FUNCTIONS
from tests.recording import create_executions_table, open_gate
from tests.waiting import wait_until
from tests.worker_processes import has_taken_signal

LESSON = "lesson04_queue_improvements"
FUNCTIONS_MODULE = "tests.lesson04.functions"
POLL_INTERVAL = 0.02
HEARTBEAT_INTERVAL = 0.1
INACTIVITY_THRESHOLD = 1.0
# Long enough for a dead worker to be noticed and its task run again.
RECOVERY_TIMEOUT = 30.0


def lesson_schema(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    database = lesson_database(LESSON)
    with database.pool.connection() as conn:
        create_executions_table(conn)
    return database


def worker_process(database: LessonDatabase) -> WorkerProcess:
    """A worker process with one slot, logging the engine's events (read with log())."""
    return WorkerProcess(
        schema=database.schema,
        functions=FUNCTIONS_MODULE,
        slots=1,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
        verbose=True,
    )


def local_worker(database: LessonDatabase, *, slots: int = 1) -> Worker:
    """A worker in this process, with the same intervals."""
    return Worker(
        database.pool,
        FUNCTIONS,
        slots=slots,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
    )


def get_task(pool: ConnectionPool, task_id: int) -> Task:
    with pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    assert task is not None
    return task


def finished_task(pool: ConnectionPool, task_id: int) -> Task | None:
    task = get_task(pool, task_id)
    return task if task.status in (TaskStatus.COMPLETED, TaskStatus.FAILED) else None


def executions(pool: ConnectionPool, task_id: int) -> list[tuple[int, str, int, Any]]:
    """What the task's function recorded, in order: (attempt, event, pid, detail)."""
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT attempt, event, pid, detail FROM executions WHERE key = %s ORDER BY seq",
            (task_id,),
        ).fetchall()
    return [(attempt, event, pid, detail) for attempt, event, pid, detail in rows]


def started(pool: ConnectionPool, task_id: int) -> list[tuple[int, int]]:
    """(attempt, pid) of every attempt whose function started."""
    return [
        (attempt, pid) for attempt, event, pid, _ in executions(pool, task_id) if event == "started"
    ]


def stopped_at_is_set(pool: ConnectionPool, worker_id: int) -> bool:
    with pool.connection() as conn:
        row = conn.execute("SELECT stopped_at FROM workers WHERE id = %s", (worker_id,)).fetchone()
    assert row is not None
    return row[0] is not None


def test_a_worker_process_killed_mid_task_has_its_task_finished_by_another_on_attempt_2(
    lesson_database: Callable[..., LessonDatabase], tmp_path: Path
) -> None:
    """SIGKILL a worker process while its function runs: once its heartbeat is
    older than the threshold, another worker process takes the task back and
    finishes it on attempt 2, and the recorded result is that worker's."""
    database = lesson_schema(lesson_database)
    pool = database.pool
    never_opened = tmp_path / "never-opened"
    with worker_process(database) as first, worker_process(database) as second:
        first.start()
        with pool.connection() as conn:
            task_id = enqueue(
                conn,
                "stall_on_first_attempt",
                {"schema": database.schema, "gate": str(never_opened)},
            )
        wait_until(lambda: started(pool, task_id) == [(1, first.pid)])
        task = get_task(pool, task_id)
        assert (task.status, task.worker_id, task.attempt) == (TaskStatus.RUNNING, first.id, 1)

        second.start()
        first.kill()

        finished = wait_until(
            lambda: finished_task(pool, task_id),
            timeout=RECOVERY_TIMEOUT,
            message=lambda: f"{get_task(pool, task_id)}\n{second.log()}",
        )
        assert finished.status == TaskStatus.COMPLETED
        assert finished.attempt == 2
        assert finished.worker_id == second.id
        assert finished.output == {"pid": second.pid, "attempt": 2}
        assert executions(pool, task_id) == [
            (1, "started", first.pid, None),
            (2, "started", second.pid, None),
            (2, "finished", second.pid, None),
        ]
        assert second.stop() == 0, second.log()

    assert not stopped_at_is_set(pool, first.id), "a killed worker never says it stopped"
    assert stopped_at_is_set(pool, second.id)


def test_a_frozen_worker_that_wakes_up_cannot_overwrite_the_result_of_the_worker_that_took_over(
    lesson_database: Callable[..., LessonDatabase], tmp_path: Path
) -> None:
    """SIGSTOP a worker process mid-task for longer than the inactivity threshold:
    another worker finishes the task on attempt 2. SIGCONT the first and let its
    function complete attempt 1: the late result is rejected (the first worker
    logs it), and the task keeps the second worker's result and worker id."""
    database = lesson_schema(lesson_database)
    pool = database.pool
    gate = tmp_path / "gate"
    with worker_process(database) as first, worker_process(database) as second:
        first.start()
        with pool.connection() as conn:
            task_id = enqueue(
                conn, "stall_on_first_attempt", {"schema": database.schema, "gate": str(gate)}
            )
        wait_until(lambda: started(pool, task_id) == [(1, first.pid)])
        second.start()
        first.pause()

        taken_over = wait_until(
            lambda: finished_task(pool, task_id),
            timeout=RECOVERY_TIMEOUT,
            message=lambda: f"{get_task(pool, task_id)}\n{second.log()}",
        )
        assert taken_over.status == TaskStatus.COMPLETED
        assert (taken_over.attempt, taken_over.worker_id) == (2, second.id)
        assert taken_over.output == {"pid": second.pid, "attempt": 2}

        first.resume()
        open_gate(gate)  # attempt 1, in the first worker, now completes: too late
        rejection = f"task {task_id} (stall_on_first_attempt) attempt 1: result rejected"
        wait_until(lambda: rejection in first.log(), message=first.log)
        assert (1, "finished", first.pid, None) in executions(pool, task_id), (
            "the first worker's function really did complete attempt 1"
        )

        after = get_task(pool, task_id)
        assert after.status == TaskStatus.COMPLETED
        assert (after.attempt, after.worker_id) == (2, second.id)
        assert after.output == {"pid": second.pid, "attempt": 2}
        assert first.stop() == 0, first.log()
        assert second.stop() == 0, second.log()


def test_sigterm_lets_the_running_tasks_finish_and_leaves_none_running(
    lesson_database: Callable[..., LessonDatabase], tmp_path: Path
) -> None:
    """SIGTERM to a worker process while its tasks run is a graceful stop: the
    functions finish, their results are recorded as this worker's (its heartbeat
    outlives them, so nobody takes them away), and the worker marks itself stopped."""
    database = lesson_schema(lesson_database)
    pool = database.pool
    gate = tmp_path / "gate"
    with WorkerProcess(
        schema=database.schema,
        functions=FUNCTIONS_MODULE,
        slots=2,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
        verbose=True,
    ) as worker:
        worker.start()
        with pool.connection() as conn:
            ids = [
                enqueue(conn, "hold_slot", {"schema": database.schema, "gate": str(gate)})
                for _ in range(2)
            ]
        wait_until(lambda: all(started(pool, task_id) for task_id in ids))

        os.kill(worker.pid, signal.SIGTERM)
        wait_until(lambda: has_taken_signal(worker.pid, signal.SIGTERM))
        # The worker is stopping, with both tasks held mid-run: let them finish.
        open_gate(gate)
        assert worker.stop() == 0, worker.log()

    for task_id in ids:
        task = get_task(pool, task_id)
        assert (task.status, task.attempt, task.worker_id) == (TaskStatus.COMPLETED, 1, worker.id)
    with pool.connection() as conn:
        running = conn.execute("SELECT id FROM tasks WHERE status = 'running'").fetchall()
    assert running == []
    assert stopped_at_is_set(pool, worker.id)


def test_retries_stop_at_the_maximum_after_max_retries_plus_one_executions(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    """A task whose function always raises runs exactly max_retries + 1 times, then
    fails with the last attempt's error."""
    database = lesson_schema(lesson_database)
    pool = database.pool
    with local_worker(database):
        with pool.connection() as conn:
            task_id = enqueue(conn, "always_fail", {"schema": database.schema}, max_retries=2)
        task = wait_for_task(pool, task_id, timeout=20)

    assert task.status == TaskStatus.FAILED
    assert task.attempt == 3
    assert task.output == {
        "error": {"type": "ConnectionError", "message": "the service is unavailable (attempt 3)"}
    }
    assert [attempt for attempt, _ in started(pool, task_id)] == [1, 2, 3]


def test_a_non_retryable_error_fails_the_task_after_one_execution(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    """A NonRetryableError fails the task at once, although retries are left."""
    database = lesson_schema(lesson_database)
    pool = database.pool
    with local_worker(database):
        with pool.connection() as conn:
            task_id = enqueue(
                conn, "decline_card", {"schema": database.schema, "card": "0002"}, max_retries=3
            )
        task = wait_for_task(pool, task_id, timeout=20)

    assert task.status == TaskStatus.FAILED
    assert task.attempt == 1
    assert task.output == {"error": {"type": "CardDeclined", "message": "card 0002 was declined"}}
    assert [attempt for attempt, _ in started(pool, task_id)] == [1]


def test_an_execution_timeout_ends_the_attempt_cancels_it_and_rejects_its_late_result(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    """An attempt running past its execution timeout is ended: retried while retries
    are left, then failed with an ExecutionTimeout reason. Each attempt's function
    sees its cancellation flag raised, and the result it returns afterwards is
    rejected, so the recorded failure stands."""
    database = lesson_schema(lesson_database)
    pool = database.pool
    with local_worker(database) as worker:
        with pool.connection() as conn:
            task_id = enqueue(
                conn,
                "wait_for_cancellation",
                {"schema": database.schema, "seconds": 20},
                execution_timeout=0.3,
                max_retries=1,
            )
        task = wait_for_task(pool, task_id, timeout=20)
        assert task.status == TaskStatus.FAILED
        assert task.attempt == 2
        assert task.output == {
            "error": {
                "type": "ExecutionTimeout",
                "message": "attempt 2 ran longer than its execution timeout of 0.3 s",
            }
        }
        wait_until(
            lambda: worker.results_rejected == 2,
            message=lambda: f"{worker.results_rejected} late result(s) rejected, not 2",
        )

    finished = [
        (attempt, detail)
        for attempt, event, _, detail in executions(pool, task_id)
        if event == "finished"
    ]
    assert finished == [(1, {"cancelled": True}), (2, {"cancelled": True})]
    assert get_task(pool, task_id).output == task.output, "the late results changed nothing"


def test_a_task_not_started_by_its_schedule_deadline_fails_and_never_runs(
    lesson_database: Callable[..., LessonDatabase], tmp_path: Path
) -> None:
    """A task that waits in the queue past its schedule timeout (its worker's only
    slot is busy) fails with a ScheduleTimeout reason, and is not run when the
    slot frees up, though the worker then runs a task enqueued after it."""
    database = lesson_schema(lesson_database)
    pool = database.pool
    gate = tmp_path / "gate"
    schema = database.schema
    with local_worker(database):
        with pool.connection() as conn:
            busy = enqueue(conn, "hold_slot", {"schema": schema, "gate": str(gate)})
        wait_until(lambda: len(started(pool, busy)) == 1)
        with pool.connection() as conn:
            late = enqueue(conn, "note_start", {"schema": schema}, schedule_timeout=0.3)
        task = wait_for_task(pool, late, timeout=20)
        assert task.status == TaskStatus.FAILED
        assert task.output == {
            "error": {
                "type": "ScheduleTimeout",
                "message": "not started within 0.3 s of being enqueued",
            }
        }
        assert (task.attempt, task.worker_id, task.started_at) == (0, None, None)

        open_gate(gate)
        with pool.connection() as conn:
            after = enqueue(conn, "note_start", {"schema": schema})
        assert wait_for_task(pool, after, timeout=20).status == TaskStatus.COMPLETED
        assert wait_for_task(pool, busy, timeout=20).status == TaskStatus.COMPLETED

    assert started(pool, late) == [], "the task that missed its deadline never ran"
    assert get_task(pool, late).status == TaskStatus.FAILED


def test_higher_priority_runs_first_and_equal_priorities_in_the_order_they_were_enqueued(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    """With one slot, tasks enqueued in a mixed order start highest priority first,
    and first come first served within a priority (by the functions' own record)."""
    database = lesson_schema(lesson_database)
    pool = database.pool
    enqueued = [
        ("low-1", 0),
        ("high-1", 10),
        ("medium-1", 5),
        ("low-2", 0),
        ("below-1", -5),
        ("high-2", 10),
        ("medium-2", 5),
        ("low-3", 0),
        ("high-3", 10),
    ]
    with pool.connection() as conn, conn.transaction():
        for label, priority in enqueued:
            enqueue(
                conn, "note_start", {"schema": database.schema, "label": label}, priority=priority
            )

    def completed() -> int:
        with pool.connection() as conn:
            return len(conn.execute("SELECT FROM tasks WHERE status = 'completed'").fetchall())

    with local_worker(database, slots=1):
        wait_until(lambda: completed() == len(enqueued), message=lambda: f"{completed()} done")

    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT detail->>'label' FROM executions WHERE event = 'started' ORDER BY seq"
        ).fetchall()
    order = [label for (label,) in rows]
    expected = [
        *("high-1", "high-2", "high-3"),
        *("medium-1", "medium-2"),
        *("low-1", "low-2", "low-3"),
        "below-1",
    ]
    assert order == expected


def refuse_poison_outputs(conn: psycopg.Connection[Any]) -> None:
    """Make the database refuse, for good, any task output holding the key "poison"."""
    conn.execute(
        """
        CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.output ? 'poison' THEN
                RAISE EXCEPTION 'this output is refused for good'
                    USING ERRCODE = 'program_limit_exceeded';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_poison BEFORE UPDATE OF output ON tasks
            FOR EACH ROW EXECUTE FUNCTION refuse_poison();
        """
    )


def test_results_that_cannot_be_stored_fail_their_own_tasks_only_and_are_not_retried(
    lesson_database: Callable[..., LessonDatabase], tmp_path: Path
) -> None:
    """Results that are not JSON (a set, NaN, a list nested 100,000 deep), that
    jsonb refuses (U+0000), that the database refuses for good with another
    kind of error than a DataError, or whose own code raises while they are
    written out, each fail their own task at once with a readable reason, while
    the good results finishing at the same moment (often recorded in the same
    batch) are recorded as completed. No bad result blocks the writer.

    The refusal for good is a program-limit error, the one PostgreSQL gives for a
    string longer than jsonb holds (2**28 - 1 bytes), which psycopg raises as an
    OperationalError, like a lost connection. Sending 256 MB three times takes
    the best part of a minute, so a trigger of the test's refuses a small
    "poison" output with the same SQLSTATE instead."""
    database = lesson_schema(lesson_database)
    pool = database.pool
    with pool.connection() as conn:
        refuse_poison_outputs(conn)
    gate = tmp_path / "gate"
    kinds = ["good", "set", "good", "nul", "good", "nan", "good", "nul"]
    kinds += ["deep", "good", "poison", "good", "unwritable", "good"]
    with local_worker(database, slots=len(kinds)):
        with pool.connection() as conn:
            ids = [
                enqueue(
                    conn,
                    "return_at_gate",
                    {"schema": database.schema, "gate": str(gate), "kind": kind, "n": n},
                )
                for n, kind in enumerate(kinds)
            ]
        # Hold every function until all have started, then let them return together.
        wait_until(lambda: all(started(pool, task_id) for task_id in ids))
        open_gate(gate)
        tasks = [wait_for_task(pool, task_id, timeout=60) for task_id in ids]

    reasons = {
        "set": ("InvalidResult", "the result of return_at_gate is not JSON: Object of type set"),
        "nan": ("InvalidResult", "the result of return_at_gate is not JSON: Out of range float"),
        "nul": ("InvalidResult", "the result of return_at_gate cannot be stored: "),
        "deep": (
            "InvalidResult",
            "the result of return_at_gate is not JSON: maximum recursion depth exceeded",
        ),
        "poison": (
            "InvalidResult",
            "the result of return_at_gate cannot be stored: this output is refused for good",
        ),
        "unwritable": (
            "WorkerError",
            "the worker failed while running attempt 1: RuntimeError: these items cannot be listed",
        ),
    }
    for n, (kind, task) in enumerate(zip(kinds, tasks, strict=True)):
        assert task.attempt == 1, "an unstorable result is not retried"
        if kind == "good":
            assert (task.status, task.output) == (TaskStatus.COMPLETED, {"good": n})
        else:
            assert task.status == TaskStatus.FAILED
            assert task.output is not None
            kind_of_error, message = reasons[kind]
            assert task.output["error"]["type"] == kind_of_error, task.output
            assert task.output["error"]["message"].startswith(message), task.output


def test_an_error_message_holding_a_lone_surrogate_is_recorded_and_blocks_no_other_result(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    """An exception whose message jsonb cannot hold as is (a lone surrogate, from a
    file name that is not UTF-8) is retried and then fails its task with the
    character spelled out; the worker goes on recording other tasks' results."""
    database = lesson_schema(lesson_database)
    pool = database.pool
    with local_worker(database):
        with pool.connection() as conn:
            failing = enqueue(conn, "import_report", {"schema": database.schema}, max_retries=1)
            after = enqueue(conn, "note_start", {"schema": database.schema, "label": "after"})
        task = wait_for_task(pool, failing, timeout=20)
        assert wait_for_task(pool, after, timeout=20).status == TaskStatus.COMPLETED

    assert task.status == TaskStatus.FAILED
    assert task.attempt == 2
    assert task.output == {
        "error": {
            "type": "ValueError",
            "message": "cannot import report-\\udcff.csv: no header line",
        }
    }
    assert [attempt for attempt, _ in started(pool, failing)] == [1, 2]


def test_an_exception_whose_message_cannot_be_read_still_fails_its_task_readably(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    """str() of an exception runs the exception's own code, which can raise; the
    attempt still ends in a recorded failure naming the exception's type."""
    database = lesson_schema(lesson_database)
    pool = database.pool
    with local_worker(database):
        with pool.connection() as conn:
            task_id = enqueue(conn, "raise_unprintable", {"schema": database.schema}, max_retries=0)
        task = wait_for_task(pool, task_id, timeout=20)

    assert task.status == TaskStatus.FAILED
    assert task.output == {
        "error": {
            "type": "UnprintableError",
            "message": "(the message of this UnprintableError could not be read)",
        }
    }
