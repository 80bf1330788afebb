"""Lesson 02: many workers share a queue and every task runs exactly once; every way
a task can go wrong ends in a recorded, readable failure; a graceful stop leaves
no task running."""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from lessons.lesson02_simple_task_queue.db.models import Task, TaskStatus
from lessons.lesson02_simple_task_queue.engine.client import enqueue, wait_for_task
from lessons.lesson02_simple_task_queue.engine.worker import TaskFunction, Worker
from tests.conftest import LessonDatabase
from tests.recording import create_executions_table, open_gate
from tests.waiting import wait_until
from tests.worker_processes import LessonWorkerProcess, wait_ready

LESSON = "lesson02_simple_task_queue"
FUNCTIONS_MODULE = "tests.lesson02.functions"
POLL_INTERVAL = 0.02


def lesson_schema(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    database = lesson_database(LESSON)
    with database.pool.connection() as conn:
        create_executions_table(conn)
    return database


def worker_process(database: LessonDatabase) -> LessonWorkerProcess:
    return LessonWorkerProcess(
        LESSON,
        schema=database.schema,
        functions=FUNCTIONS_MODULE,
        arguments=[f"--poll-interval={POLL_INTERVAL}"],
    )


def count_by_status(pool: ConnectionPool) -> dict[str, int]:
    with pool.connection() as conn:
        rows = conn.execute("SELECT status::text, count(*) FROM tasks GROUP BY status").fetchall()
    return {status: count for status, count in rows}


def run_one_task(
    pool: ConnectionPool, functions: dict[str, TaskFunction], task_name: str, input: Any
) -> Task:
    """Enqueue one task, let an in-process worker run it, and return the finished task."""
    with pool.connection() as conn:
        task_id = enqueue(conn, task_name, input)
    with Worker(pool, functions, poll_interval=POLL_INTERVAL):
        return wait_for_task(pool, task_id, timeout=20)


def test_three_worker_processes_run_each_of_500_tasks_exactly_once(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    """500 tasks, three worker processes competing for them: every task completes,
    and the functions' own records show each ran exactly once, in one of the three."""
    database = lesson_schema(lesson_database)
    pool = database.pool
    with (
        worker_process(database) as first,
        worker_process(database) as second,
        worker_process(database) as third,
    ):
        workers = [first, second, third]
        for worker in workers:
            worker.launch()
        wait_ready(workers)

        # All at once, in one transaction, so that the three compete for them.
        with pool.connection() as conn, conn.transaction():
            for n in range(500):
                enqueue(conn, "record_execution", {"schema": database.schema, "n": n})

        wait_until(
            lambda: count_by_status(pool).get("completed") == 500,
            timeout=60,
            message=lambda: f"tasks by status: {count_by_status(pool)}",
        )
        for worker in workers:
            assert worker.terminate() == 0, worker.log()

    with pool.connection() as conn:
        executions = conn.execute("SELECT key, pid FROM executions").fetchall()
        tasks = conn.execute("SELECT input, output, status::text FROM tasks").fetchall()
    keys = [key for key, _ in executions]
    assert len(executions) == 500, "every task ran exactly once: 500 executions recorded"
    assert sorted(keys) == list(range(500)), "no task ran twice, none was skipped"
    pids = {pid for _, pid in executions}
    assert pids <= {worker.pid for worker in workers}
    assert len(pids) >= 2, "the worker processes shared the work"
    # Each task's recorded output is what its one execution returned.
    ran_in: dict[int, int] = dict(executions)
    for input, output, status in tasks:
        assert status == "completed"
        assert output == {"n": input["n"], "pid": ran_in[input["n"]]}


class PaymentRefused(Exception):
    pass


def refuse_payment(input: dict[str, Any]) -> None:
    raise PaymentRefused(f"card {input['card']} refused: insufficient funds")


def test_a_raising_function_ends_failed_with_the_exception_type_and_message(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    """A function that raises fails its task; the output names the exception's
    type and carries its message."""
    pool = lesson_database(LESSON).pool
    task = run_one_task(pool, {"refuse_payment": refuse_payment}, "refuse_payment", {"card": "42"})
    assert task.status == TaskStatus.FAILED
    assert task.output == {
        "error": {"type": "PaymentRefused", "message": "card 42 refused: insufficient funds"}
    }


def import_report(input: dict[str, Any]) -> None:
    # A file name that is not UTF-8 (as os.listdir() returns it) holds a lone
    # surrogate, and so does a message that names the file.
    name = os.fsdecode(b"report-\xff.csv")
    raise ValueError(f"cannot import {name}: a NUL (\x00) in its header")


def test_an_error_message_jsonb_cannot_hold_is_still_recorded_readably(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    """An exception whose message jsonb cannot hold as is (a lone surrogate, from a
    file name that is not UTF-8, and a NUL character) still ends its task failed,
    with those characters spelled out, instead of leaving the task running."""
    pool = lesson_database(LESSON).pool
    task = run_one_task(pool, {"import_report": import_report}, "import_report", {})
    assert task.status == TaskStatus.FAILED
    assert task.output == {
        "error": {
            "type": "ValueError",
            "message": "cannot import report-\\udcff.csv: a NUL (\\x00) in its header",
        }
    }


def test_a_task_with_no_registered_function_fails_with_no_function_registered(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    """A task whose name no function is registered under fails with
    "no function registered for <name>", instead of staying queued or running."""
    pool = lesson_database(LESSON).pool
    task = run_one_task(pool, {"refuse_payment": refuse_payment}, "send_invoice", {"to": "me"})
    assert task.status == TaskStatus.FAILED
    assert task.output == {
        "error": {"type": "UnknownTask", "message": "no function registered for send_invoice"}
    }


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        pytest.param({"tags": {"a", "b"}}, "is not JSON: Object of type set", id="a-set"),
        pytest.param({"ratio": math.nan}, "is not JSON: Out of range float", id="nan"),
        pytest.param(object(), "is not JSON: Object of type object", id="an-object"),
        pytest.param({"text": "a\x00b"}, "cannot be stored: ", id="a-nul-character"),
    ],
)
def test_a_result_that_is_not_json_fails_the_task_with_a_clear_error(
    lesson_database: Callable[..., LessonDatabase], result: Any, reason: str
) -> None:
    """A function whose result cannot be stored as JSON fails its task with an
    InvalidResult error that names the function and says what is wrong."""
    pool = lesson_database(LESSON).pool
    task = run_one_task(pool, {"make_report": lambda _: result}, "make_report", {})
    assert task.status == TaskStatus.FAILED
    assert task.output is not None
    error = task.output["error"]
    assert error["type"] == "InvalidResult"
    assert error["message"].startswith(f"the result of make_report {reason}"), error


@pytest.mark.parametrize(
    ("input", "reason"),
    [
        pytest.param({"when": {1, 2}}, "Object of type set", id="a-set"),
        pytest.param([math.inf], "Out of range float", id="infinity"),
        pytest.param({"callback": print}, "Object of type builtin_function_or_method", id="fn"),
        pytest.param({(1, 2): "tuple key"}, "keys must be str, int, float, bool or None", id="key"),
    ],
)
def test_an_input_that_is_not_json_is_refused_at_enqueue_and_nothing_is_written(
    lesson_database: Callable[..., LessonDatabase], input: Any, reason: str
) -> None:
    """enqueue() refuses an input that is not JSON with a ValueError that names the
    task and the problem, and the queue stays empty."""
    pool = lesson_database(LESSON).pool
    with pool.connection() as conn, pytest.raises(ValueError) as refused:
        enqueue(conn, "make_report", input)
    assert str(refused.value).startswith("the input of make_report is not JSON: ")
    assert reason in str(refused.value)
    assert count_by_status(pool) == {}


@pytest.mark.parametrize(
    "input",
    [
        pytest.param({"text": "a\x00b"}, id="nul-character"),
        pytest.param({"file": os.fsdecode(b"report-\xff.csv")}, id="lone-surrogate"),
    ],
)
def test_json_that_jsonb_cannot_store_is_refused_at_enqueue_and_nothing_is_written(
    lesson_database: Callable[..., LessonDatabase], input: Any
) -> None:
    """Valid JSON that jsonb refuses (U+0000, a lone surrogate) is refused by enqueue()
    with the same kind of error as any bad input, a ValueError naming the task."""
    pool = lesson_database(LESSON).pool
    with pool.connection() as conn, pytest.raises(ValueError) as refused:
        enqueue(conn, "make_report", input)
    assert str(refused.value).startswith("the input of make_report cannot be stored: ")
    assert count_by_status(pool) == {}


def test_after_sigterm_the_worker_process_finishes_its_running_tasks_and_leaves_none_running(
    lesson_database: Callable[..., LessonDatabase], tmp_path: Path
) -> None:
    """SIGTERM while tasks are running is a graceful stop: the process lets them
    finish and records their results before it exits, so none is left running."""
    database = lesson_schema(lesson_database)
    pool = database.pool
    gate = tmp_path / "gate"
    with worker_process(database) as worker:
        worker.launch()
        worker.wait_ready()
        with pool.connection() as conn:
            for n in range(5):
                enqueue(
                    conn, "wait_at_gate", {"schema": database.schema, "n": n, "gate": str(gate)}
                )

        def started() -> int:
            with pool.connection() as conn:
                return len(
                    conn.execute("SELECT FROM executions WHERE event = 'started'").fetchall()
                )

        wait_until(lambda: started() == 5, message=lambda: f"{started()} of 5 tasks started")
        assert count_by_status(pool) == {"running": 5}

        worker.process.send_signal(signal.SIGTERM)
        # The process has taken the signal, and is stopping, with five tasks held
        # mid-run at the gate. Only now do we let them finish.
        wait_until(lambda: worker.has_taken_signal(signal.SIGTERM))
        assert worker.process.poll() is None, "a graceful stop waits for its running tasks"
        open_gate(gate)
        assert worker.wait_for_exit() == 0, worker.log()

    assert count_by_status(pool) == {"completed": 5}
    with pool.connection() as conn:
        finished = conn.execute("SELECT key FROM executions WHERE event = 'finished'").fetchall()
    assert sorted(key for (key,) in finished) == list(range(5))


def test_enqueue_inside_a_transaction_that_rolls_back_leaves_no_task(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    """enqueue() joins the caller's transaction: when it rolls back, no task exists."""
    pool = lesson_database(LESSON).pool
    with (
        pool.connection() as conn,
        pytest.raises(psycopg.errors.DivisionByZero),
        conn.transaction(),
    ):
        enqueue(conn, "make_report", {"n": 1})
        conn.execute("SELECT 1 / 0")
    assert count_by_status(pool) == {}
