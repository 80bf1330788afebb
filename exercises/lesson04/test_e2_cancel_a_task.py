"""Cancel a task.

Someone changed their mind: the report is no longer wanted. Add
`cancel_task(conn, task_id) -> bool` to `engine/client.py`: a task that is queued or
running fails at once with the error type `Cancelled`, and the call returns True; a
task already finished is left alone, and it returns False. A running attempt is ended
the way an execution timeout ends one (its function sees `current_task().cancelled`,
and whatever it returns afterwards is rejected). The check cancels a queued task and a
running one whose function waits for the flag: both end failed with `Cancelled`, after
one attempt at most, the running function sees its flag, and cancelling again
returns False.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from exercises import expect
from lessons.lesson04_queue_improvements.db.models import Task, TaskStatus
from lessons.lesson04_queue_improvements.db.queries import Querier
from lessons.lesson04_queue_improvements.engine import client
from lessons.lesson04_queue_improvements.engine.attempts import current_task
from lessons.lesson04_queue_improvements.engine.worker import Worker
from tests.conftest import LessonDatabase
from tests.recording import create_executions_table, record
from tests.waiting import wait_until

LESSON = "lesson04_queue_improvements"


def wait_for_cancellation(input: dict[str, Any]) -> dict[str, Any]:
    record(input["schema"], input["n"], "started")
    if current_task().cancelled.wait(30):
        record(input["schema"], input["n"], "saw the flag")
    return {"finished": True}


def get_task(database: LessonDatabase, task_id: int) -> Task:
    with database.pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    assert task is not None
    return task


def test_a_queued_and_a_running_task_are_cancelled(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    cancel_task = getattr(client, "cancel_task", None)
    expect(
        cancel_task is not None,
        "lesson04's engine/client.py has no `cancel_task` yet: see exercise 2 in its README",
    )
    assert cancel_task is not None
    database = lesson_database(LESSON)
    schema = database.schema
    with database.pool.connection() as conn:
        create_executions_table(conn)
        queued = client.enqueue(conn, "wait_for_cancellation", {"schema": schema, "n": 1})
        expect(cancel_task(conn, queued) is True, "cancelling a queued task should return True")

    def seen(n: int, event: str) -> bool:
        with database.pool.connection() as conn:
            row = conn.execute(
                "SELECT count(*) FROM executions WHERE key = %s AND event = %s", (n, event)
            ).fetchone()
        return bool(row and row[0])

    functions = {"wait_for_cancellation": wait_for_cancellation}
    with Worker(database.pool, functions, poll_interval=0.02, heartbeat_interval=0.1):
        with database.pool.connection() as conn:
            running = client.enqueue(conn, "wait_for_cancellation", {"schema": schema, "n": 2})
        wait_until(lambda: seen(2, "started"), message="the second task did not start")
        with database.pool.connection() as conn:
            expect(
                cancel_task(conn, running) is True,
                "cancelling a running task should return True",
            )
        wait_until(
            lambda: seen(2, "saw the flag"),
            message="the running task's function never saw current_task().cancelled",
        )
    expect(not seen(1, "started"), "the task cancelled while queued ran all the same")
    for task_id, attempts in ((queued, 0), (running, 1)):
        task = get_task(database, task_id)
        error = (task.output or {}).get("error", {})
        expect(
            task.status == TaskStatus.FAILED and error.get("type") == "Cancelled",
            f"task {task_id} should have failed with Cancelled; it is {task.status}: {task.output}",
        )
        expect(
            task.attempt == attempts,
            f"task {task_id} ran {task.attempt} attempts, not {attempts}: a cancelled task "
            "is not retried",
        )
    with database.pool.connection() as conn:
        expect(
            cancel_task(conn, running) is False,
            "cancelling a task that has finished should return False",
        )
