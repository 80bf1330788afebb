"""`history_tool cancel` and `history_tool schedules`, run as real subprocesses: a task
cancelled from the command line is cancelled with who and why, a durable one that has
run is told to compensate, a finished or unknown task is refused readably; `history`
shows the cancellation; `schedules` shows each schedule and its ticks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

from lessons.lesson15_operating_at_scale.db.models import TaskStatus
from lessons.lesson15_operating_at_scale.db.queries import Querier
from lessons.lesson15_operating_at_scale.engine.client import enqueue, set_schedule
from tests.conftest import LessonDatabase

LESSON = "lesson15_operating_at_scale"
TOOL = f"lessons.{LESSON}.tools.history_tool"


def run_tool(database: LessonDatabase, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", TOOL, "--schema", database.schema, *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DATABASE_URL": database.url},
    )


def test_cancel_cancels_a_queued_task_with_who_and_why_and_history_shows_it(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    """A queued task is cancelled at once; a second cancel changes nothing; an unknown
    task is one line on stderr and exit code 1."""
    database = lesson_database(LESSON)
    with database.pool.connection() as conn:
        task_id = enqueue(conn, "send_digest", {})
    done = run_tool(database, "cancel", str(task_id), "--by", "ops", "--reason", "duplicate")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"task {task_id} (send_digest) is cancelled, and its unfinished children"
    ]
    with database.pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    assert task is not None
    assert (task.status, task.cancelled_by, task.cancel_reason) == (
        TaskStatus.CANCELLED,
        "ops",
        "duplicate",
    )
    again = run_tool(database, "cancel", str(task_id), "--by", "ops", "--reason", "again")
    assert again.returncode == 0
    assert "had finished (cancelled): nothing to cancel" in again.stdout
    history = run_tool(database, "history", str(task_id))
    assert history.returncode == 0
    assert f"task {task_id} send_digest: cancelled" in history.stdout
    assert "cancelled by ops at " in history.stdout and ": duplicate" in history.stdout
    unknown = run_tool(database, "cancel", "999999", "--by", "ops", "--reason", "x")
    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert unknown.stderr.strip() == "error: there is no task 999999"
    without_reason = run_tool(database, "cancel", str(task_id), "--by", "ops")
    assert without_reason.returncode == 2, "argparse refuses a cancellation without a reason"


def test_cancel_of_a_running_durable_task_says_it_compensates_first(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    """A durable task that runs is not cancelled at once: its cancellation is requested,
    and the tool says the task compensates first."""
    database = lesson_database(LESSON)
    with database.pool.connection() as conn:
        task_id = enqueue(conn, "checkout", {"order_id": "T-1"}, durable=True)
        queries = Querier(conn)
        worker = queries.register_worker(name="test", queue="default", slots=1, lease_seconds=30)
        assert worker is not None
        claimed = queries.claim_tasks(
            worker_id=worker.id,
            queue="default",
            task_names=[],
            durable_task_names=["checkout"],
            max_tasks=1,
            max_keys_visited=10,
        )
    assert [task.id for task in claimed] == [task_id]
    done = run_tool(database, "cancel", str(task_id), "--by", "ops", "--reason", "fraud")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == (
        f"task {task_id} (checkout) is running, and compensates before it ends"
    )
    with database.pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    assert task is not None and task.status == TaskStatus.RUNNING
    assert task.cancel_requested_at is not None
    repeated = run_tool(database, "cancel", str(task_id), "--by", "other", "--reason", "again")
    assert repeated.stdout.strip() == f"task {task_id} is being cancelled already, by ops"


def test_schedules_lists_each_schedule_and_its_next_tick(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    """No schedule: one line saying so; then each schedule with its rule and catch-up."""
    database = lesson_database(LESSON)
    assert run_tool(database, "schedules").stdout.strip() == "no schedules"
    with database.pool.connection() as conn:
        set_schedule(
            conn, "nightly", "send_digest", {}, cron="0 21 * * *", time_zone="Europe/Paris"
        )
        set_schedule(conn, "often", "send_digest", {}, every=3600)
    listed = run_tool(database, "schedules")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["schedule", "when", "zone", "task", "catch-up", "next", "tick"]
    assert "nightly" in lines[1] and "0 21 * * *" in lines[1] and "Europe/Paris" in lines[1]
    assert "often" in lines[2] and "every 60 min" in lines[2] and "latest (grace" in lines[2]
