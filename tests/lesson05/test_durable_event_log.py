"""Lesson 05: a durable task's history survives retries and crashes intact; a retry
reads what was recorded instead of running it again; nothing is written twice;
only the worker that owns the current attempt can append.

Workers use short intervals: poll every 0.02 s, heartbeat every 0.1 s, and a
worker silent for 0.6 s is presumed dead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from lessons.lesson05_durable_event_log.db.models import EventKind, Task, TaskEvent, TaskStatus
from lessons.lesson05_durable_event_log.db.queries import Querier
from lessons.lesson05_durable_event_log.engine.client import enqueue, wait_for_task
from lessons.lesson05_durable_event_log.engine.worker import Worker
from lessons.lesson05_durable_event_log.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.lesson05.functions import DURABLE_FUNCTIONS, FUNCTIONS
from tests.recording import create_executions_table, open_gate
from tests.waiting import wait_until

LESSON = "lesson05_durable_event_log"
FUNCTIONS_MODULE = "tests.lesson05.functions"
POLL_INTERVAL = 0.02
HEARTBEAT_INTERVAL = 0.1
INACTIVITY_THRESHOLD = 0.6


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
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


def local_worker(database: LessonDatabase) -> Worker:
    return Worker(
        database.pool,
        FUNCTIONS,
        durable_functions=DURABLE_FUNCTIONS,
        slots=2,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
    )


def enqueue_durable(pool: ConnectionPool, task_name: str, input: Any, **options: Any) -> int:
    with pool.connection() as conn:
        return enqueue(conn, task_name, input, durable=True, **options)


def get_task(pool: ConnectionPool, task_id: int) -> Task:
    with pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    assert task is not None
    return task


def history(pool: ConnectionPool, task_id: int) -> list[TaskEvent]:
    with pool.connection() as conn:
        return Querier(conn).list_task_events(task_id=task_id)


def step_runs(pool: ConnectionPool, task_id: int) -> list[tuple[str, int, int]]:
    """(what ran, attempt, pid), in order, as the step functions recorded it."""
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT event, attempt, pid FROM executions WHERE key = %s ORDER BY seq", (task_id,)
        ).fetchall()
    return [(event, attempt, pid) for event, attempt, pid in rows]


def error_of(task: Task) -> tuple[str, str]:
    error = (task.output or {}).get("error") or {}
    return error.get("type", ""), error.get("message", "")


def test_a_retry_replays_the_recorded_steps_and_runs_only_the_rest(
    database: LessonDatabase,
) -> None:
    """Step two fails on attempt 1. Attempt 2 gets step one's output from the
    history (its function does not run again), runs two and three, and the task
    completes with the outputs the history holds."""
    pool = database.pool
    task_id = enqueue_durable(pool, "three_steps", {"schema": database.schema, "fail_in": "two"})
    with local_worker(database):
        task = wait_for_task(pool, task_id)

    assert task.status == TaskStatus.COMPLETED and task.attempt == 2, task
    runs = Counter(event for event, _, _ in step_runs(pool, task_id))
    assert runs == {"ran one": 1, "ran two": 2, "ran three": 1}
    events = history(pool, task_id)
    assert [(e.event_number, e.kind, e.name, e.attempt) for e in events] == [
        (1, EventKind.STEP, "one", 1),
        (2, EventKind.STEP, "two", 2),
        (3, EventKind.STEP, "three", 2),
    ]
    assert task.output == {e.name: (e.output or {})["nonce"] for e in events}


def test_a_replayed_step_returns_exactly_what_its_first_run_returned(
    database: LessonDatabase,
) -> None:
    """Outputs come back as the history holds them: a tuple as a list, None as
    None, the same on the attempt that ran the step and on the one that replayed it."""
    pool = database.pool
    task_id = enqueue_durable(pool, "return_a_tuple_and_none", None)
    with local_worker(database):
        task = wait_for_task(pool, task_id)
    assert task.status == TaskStatus.COMPLETED and task.attempt == 2, task
    assert task.output == {"pair": [1, 2], "nothing": None}
    assert [(e.name, e.output, e.attempt) for e in history(pool, task_id)] == [
        ("pair", [1, 2], 1),
        ("nothing", None, 1),
    ]


def test_a_step_that_changes_its_input_in_place_records_the_input_it_was_called_with(
    database: LessonDatabase,
) -> None:
    """The step adds to a list of its input and deletes one of its keys: its event
    holds the input as the step was called with it, not what the step left of it.
    Attempt 2 replays the step."""
    pool = database.pool
    task_id = enqueue_durable(pool, "pack_then_fail_on_attempt_1", {"schema": database.schema})
    with local_worker(database):
        task = wait_for_task(pool, task_id)
    assert task.status == TaskStatus.COMPLETED and task.attempt == 2, task
    assert task.output == 3
    assert [event for event, _, _ in step_runs(pool, task_id)] == ["ran pack"]
    [event] = history(pool, task_id)
    assert event.input == {"schema": database.schema, "items": ["teapot", "cup"], "note": "fragile"}


def test_a_worker_killed_mid_step_is_replaced_and_the_history_replayed(
    database: LessonDatabase, tmp_path: Path
) -> None:
    """SIGKILL the worker process while it runs step two of attempt 1. Another
    worker process takes the task over once the first is presumed dead, replays
    step one from the history, and finishes: step one ran once, in all."""
    pool = database.pool
    with worker_process(database) as first, worker_process(database) as second:
        first.start()
        task_id = enqueue_durable(
            pool,
            "three_steps",
            {"schema": database.schema, "stall_in": "two", "gate": str(tmp_path / "never")},
        )
        wait_until(
            lambda: ("ran two", 1, first.pid) in step_runs(pool, task_id),
            message="the first worker did not reach step two",
        )
        first.kill()
        second.start()
        task = wait_for_task(pool, task_id, timeout=30)

    assert task.status == TaskStatus.COMPLETED, task
    assert task.attempt == 2 and task.worker_id == second.id
    assert step_runs(pool, task_id) == [
        ("ran one", 1, first.pid),
        ("ran two", 1, first.pid),
        ("ran two", 2, second.pid),
        ("ran three", 2, second.pid),
    ]
    assert [(e.name, e.attempt) for e in history(pool, task_id)] == [
        ("one", 1),
        ("two", 2),
        ("three", 2),
    ]


def test_a_frozen_worker_cannot_append_to_the_history_of_the_attempt_it_lost(
    database: LessonDatabase, tmp_path: Path
) -> None:
    """SIGSTOP the worker process inside step two of attempt 1; another takes the
    task over and completes it. SIGCONT: the frozen worker's step returns, its
    append is refused, it stops the function and records nothing."""
    pool = database.pool
    gate = tmp_path / "gate"
    with worker_process(database) as frozen, worker_process(database) as second:
        frozen.start()
        task_id = enqueue_durable(
            pool, "three_steps", {"schema": database.schema, "stall_in": "two", "gate": str(gate)}
        )
        wait_until(
            lambda: ("ran two", 1, frozen.pid) in step_runs(pool, task_id),
            message="the first worker did not reach step two",
        )
        frozen.pause()
        second.start()
        completed = wait_for_task(pool, task_id, timeout=30)
        history_when_completed = history(pool, task_id)

        open_gate(gate)
        frozen.resume()
        wait_until(
            lambda: "rejected, this worker no longer owns that attempt" in frozen.log(),
            message=lambda: f"the frozen worker did not report a rejected append:\n{frozen.log()}",
        )
        assert frozen.stop() == 0
        frozen_log = frozen.log()

    assert "result rejected" not in frozen_log  # it did not even try to record one
    assert completed.status == TaskStatus.COMPLETED and completed.worker_id == second.id
    assert [(e.name, e.attempt) for e in history_when_completed] == [
        ("one", 1),
        ("two", 2),
        ("three", 2),
    ]
    assert history(pool, task_id) == history_when_completed
    assert get_task(pool, task_id) == completed


def test_append_event_is_fenced_and_an_event_number_is_written_once(
    database: LessonDatabase,
) -> None:
    """AppendEvent writes only for the running attempt of the worker that owns it,
    and the primary key refuses a second event with the same number."""
    pool = database.pool
    with pool.connection() as conn:
        queries = Querier(conn)
        worker = queries.register_worker(name="test", queue="default", slots=1, lease_seconds=10)
        assert worker is not None
        task_id = enqueue(conn, "three_steps", {}, durable=True)
        [claimed] = queries.claim_tasks(
            worker_id=worker.id,
            queue="default",
            task_names=[],
            durable_task_names=["three_steps"],
            max_tasks=1,
        )

        def append(event_number: int, *, attempt: int = 1, worker_id: int = worker.id) -> Any:
            return queries.append_event(
                task_id=task_id,
                event_number=event_number,
                kind=EventKind.STEP,
                name="one",
                input_={},
                output={},
                attempt=attempt,
                worker_id=worker_id,
            )

        assert append(1) is not None
        assert append(2, worker_id=worker.id + 1) is None, "another worker appended"
        assert append(2, attempt=2) is None, "another attempt appended"
        with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
            append(1)
        queries.finish_attempts(
            worker_id=worker.id,
            ids=[task_id],
            attempts=[claimed.attempt],
            succeeded=[True],
            retryable=[False],
            infrastructure=[False],
            outputs=["{}"],
        )
        assert append(2) is None, "an append after the attempt ended"
    assert len(history(pool, task_id)) == 1


def sweep_lost_workers(conn: psycopg.Connection[Any]) -> list[Task]:
    """The lost-worker sweep of a sweeper in touch with the database for ages: it
    takes the tasks of every worker whose lease has expired."""
    return Querier(conn).reassign_tasks_of_lost_workers(
        healthy_since=datetime(2000, 1, 1, tzinfo=UTC), max_tasks=1000
    )


def test_a_sweep_skips_a_task_whose_event_is_being_appended(database: LessonDatabase) -> None:
    """The fence holds under concurrency: while an append's transaction is open,
    a sweep cannot give the attempt away (it skips the locked task); once the
    append commits, the next sweep can."""
    pool = database.pool
    with pool.connection() as appending, pool.connection() as sweeping:
        queries = Querier(appending)
        # A lease of a millisecond: expired by the time of the sweeps below.
        worker = queries.register_worker(name="test", queue="default", slots=1, lease_seconds=0.001)
        assert worker is not None
        task_id = enqueue(appending, "three_steps", {}, durable=True)
        queries.claim_tasks(
            worker_id=worker.id,
            queue="default",
            task_names=[],
            durable_task_names=["three_steps"],
            max_tasks=1,
        )
        with appending.transaction():
            event = queries.append_event(
                task_id=task_id,
                event_number=1,
                kind=EventKind.STEP,
                name="one",
                input_={},
                output={},
                attempt=1,
                worker_id=worker.id,
            )
            assert event is not None
            swept = sweep_lost_workers(sweeping)
            assert swept == [], "the sweep took a task whose append was in flight"
        swept = sweep_lost_workers(sweeping)
        assert [task.id for task in swept] == [task_id]
    assert [e.attempt for e in history(pool, task_id)] == [1]


@pytest.mark.parametrize(
    ("task_name", "message"),
    [
        ("return_a_set", "the output of step a_set is not JSON: Object of type set"),
        ("pass_a_set", "the input of step given_a_set is not JSON: Object of type set"),
        ("return_a_nul", "event 1 (step nul) cannot be stored: "),
        (
            "return_a_lone_surrogate",
            "the output of step surrogate cannot be stored: "
            "it holds a string that is not valid Unicode: ",
        ),
    ],
)
def test_a_step_whose_input_or_output_cannot_be_recorded_fails_the_task_at_once(
    database: LessonDatabase, task_name: str, message: str
) -> None:
    pool = database.pool
    task_id = enqueue_durable(pool, task_name, None, max_retries=3)
    with local_worker(database):
        task = wait_for_task(pool, task_id)
    assert task.status == TaskStatus.FAILED and task.attempt == 1, task
    kind, text = error_of(task)
    assert kind == "InvalidStepData" and text.startswith(message), text
    assert history(pool, task_id) == []


def test_a_non_retryable_error_in_a_step_fails_the_task_at_once(
    database: LessonDatabase,
) -> None:
    pool = database.pool
    task_id = enqueue_durable(pool, "step_out_of_stock", None, max_retries=3)
    with local_worker(database):
        task = wait_for_task(pool, task_id)
    assert task.status == TaskStatus.FAILED and task.attempt == 1, task
    assert error_of(task) == ("OutOfStock", "no teapots left")
    assert history(pool, task_id) == []


@pytest.mark.parametrize(
    ("task_name", "durable"),
    [("nowhere", True), ("plain", True), ("three_steps", False)],
)
def test_a_task_without_a_function_of_its_kind_waits_on_the_queue_untouched(
    database: LessonDatabase, task_name: str, durable: bool
) -> None:
    """A durable task runs only a durable function, and a plain task only a plain
    one: a worker claims only the tasks it has a function of their kind for, and
    leaves the others queued, never started, for a worker that has (lesson 04's
    rolling deploys)."""
    pool = database.pool
    with pool.connection() as conn:
        task_id = enqueue(conn, task_name, {}, durable=durable)
        known_id = enqueue(conn, "plain", {}, durable=False)
        known_durable_id = enqueue(conn, "three_steps", {"schema": database.schema}, durable=True)
    with local_worker(database):
        assert wait_for_task(pool, known_id).status == TaskStatus.COMPLETED
        assert wait_for_task(pool, known_durable_id).status == TaskStatus.COMPLETED
        task = get_task(pool, task_id)
    assert (task.status, task.attempt, task.worker_id) == (TaskStatus.QUEUED, 0, None), task
