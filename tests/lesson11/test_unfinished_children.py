"""Lesson 11, a task that ended with a child still queued: until children can be
cancelled, neither a replay nor a fork may run it again.

The parent spawns two children, waits for the one that fails, and fails on
`ChildTaskFailed` while the other sits on a queue no worker serves. That child
is alive: it runs, and does what it does, as soon as a worker serves its
queue. A replay would spawn it again (its effect twice); a fork from its event
or before likewise, and a fork after it would wait for it for ever.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from lessons.lesson11_retries_replays_forks.db.models import EventKind, TaskStatus
from lessons.lesson11_retries_replays_forks.engine.client import wait_for_task
from lessons.lesson11_retries_replays_forks.engine.reruns import RerunRefused, fork, replay
from lessons.lesson11_retries_replays_forks.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.lesson11.helpers import (
    LESSON,
    PARENTS_QUEUE,
    POLL_INTERVAL,
    all_tasks,
    enqueue_durable,
    history,
)

TOOL = f"lessons.{LESSON}.tools.history_tool"


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def test_a_task_that_failed_with_a_child_still_queued_is_neither_replayed_nor_forked(
    database: LessonDatabase,
) -> None:
    task_id = enqueue_durable(database, "fail_on_one_of_two_children", None)
    with WorkerProcess(
        schema=database.schema,
        queues=[PARENTS_QUEUE],
        functions="tests.lesson11.functions",
        slots=2,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=0.1,
        inactivity_threshold=1.0,
    ) as worker:
        worker.start()
        failed = wait_for_task(database.pool, task_id, timeout=30)

    assert failed.status == TaskStatus.FAILED, failed
    assert (failed.output or {})["error"]["type"] == "ChildTaskFailed", failed.output
    queued_child, failed_child = history(database.pool, task_id)
    assert queued_child.kind == failed_child.kind == EventKind.CHILD
    tasks = {task.id: task for task in all_tasks(database.pool)}
    assert tasks[failed_child.child_task_id or 0].status == TaskStatus.FAILED
    assert tasks[queued_child.child_task_id or 0].status == TaskStatus.QUEUED
    before = all_tasks(database.pool), history(database.pool, task_id)

    reason = (
        f"child task {queued_child.child_task_id} of event 1 is queued: task {task_id} cannot "
        "be {done} until its children have finished (they cannot be cancelled yet)"
    )
    with database.pool.connection() as conn:
        with pytest.raises(RerunRefused) as refused:
            replay(conn, task_id)
        assert str(refused.value) == reason.format(done="replayed")
        for at_event in (1, 2):
            with pytest.raises(RerunRefused) as refused:
                fork(conn, task_id, at_event=at_event)
            assert str(refused.value) == reason.format(done="forked")

    for command, done in [(["replay"], "replayed"), (["fork", "--at", "2"], "forked")]:
        completed = subprocess.run(
            [sys.executable, "-m", TOOL, "--schema", database.schema, *command, str(task_id)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert completed.returncode == 1, completed
        assert completed.stdout == ""
        assert completed.stderr.splitlines() == [f"error: {reason.format(done=done)}"]

    assert (all_tasks(database.pool), history(database.pool, task_id)) == before
