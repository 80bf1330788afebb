"""A command that lists the tasks in a status.

A worker killed mid-task leaves its task `running` for ever. Add a query `ListTasks`
(tasks of one status, by id) and a command `python -m
lessons.lesson02_simple_task_queue.tools.list_tasks --status running [--schema S]`
that prints one line per task: its id first, then its task name. The check kills a
worker process in the middle of a task and runs the command: `--status running` must
list that task alone, `--status completed` and `--status failed` the others.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from exercises import REPOSITORY_ROOT, expect
from lessons.lesson02_simple_task_queue.engine.client import enqueue
from tests.conftest import LessonDatabase
from tests.recording import create_executions_table
from tests.waiting import wait_until
from tests.worker_processes import LessonWorkerProcess

LESSON = "lesson02_simple_task_queue"
COMMAND = f"lessons.{LESSON}.tools.list_tasks"


def list_tasks(schema: str, status: str) -> list[tuple[int, str]]:
    """(id, task name) of each line the command prints."""
    completed = subprocess.run(
        [sys.executable, "-m", COMMAND, f"--schema={schema}", f"--status={status}"],
        cwd=REPOSITORY_ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    expect(
        completed.returncode == 0,
        f"`python -m {COMMAND} --status {status}` exited {completed.returncode}:\n"
        f"{completed.stdout}{completed.stderr}",
    )
    listed = []
    for line in completed.stdout.splitlines():
        fields = line.split()
        if not fields:
            continue
        expect(
            len(fields) >= 2 and fields[0].isdigit(),
            f"a line should be a task's id, then its task name; got {line!r}",
        )
        listed.append((int(fields[0]), fields[1]))
    return listed


def test_the_command_lists_the_task_a_killed_worker_left_running(
    lesson_database: Callable[..., LessonDatabase], tmp_path: Path
) -> None:
    expect(
        importlib.util.find_spec(COMMAND) is not None,
        f"there is no {COMMAND} yet: see exercise 2 in lesson 02's README",
    )
    database = lesson_database(LESSON)
    schema = database.schema
    with database.pool.connection() as conn:
        create_executions_table(conn)
        done = enqueue(conn, "record_execution", {"schema": schema, "n": 1})
        unknown = enqueue(conn, "no_such_task", {})
        stuck = enqueue(
            conn, "wait_at_gate", {"schema": schema, "n": 3, "gate": str(tmp_path / "never")}
        )
    with LessonWorkerProcess(LESSON, schema=schema, functions="tests.lesson02.functions") as worker:
        worker.launch()
        worker.wait_ready()

        def settled() -> bool:
            with database.pool.connection() as conn:
                row = conn.execute(
                    "SELECT count(*) FILTER (WHERE status IN ('completed', 'failed')),"
                    " (SELECT count(*) FROM executions WHERE key = 3)"
                    " FROM tasks"
                ).fetchone()
            return row == (2, 1)

        wait_until(settled, message="the worker did not finish two tasks and start the third")
        worker.process.kill()
        worker.wait_for_exit()

    expected = {
        "running": [(stuck, "wait_at_gate")],
        "completed": [(done, "record_execution")],
        "failed": [(unknown, "no_such_task")],
    }
    for status, tasks in expected.items():
        listed = list_tasks(schema, status)
        expect(
            listed == tasks,
            f"--status {status} should list {tasks} (id, task name); it listed {listed}",
        )
