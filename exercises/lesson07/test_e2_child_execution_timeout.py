"""A child that hangs fails, and its parent carries on.

Give `spawn_child` and `call` an `execution_timeout` parameter (seconds, None by
default), the child's own execution timeout. The check calls a child that never
answers with `execution_timeout=0.5` and no retries, and asserts that the child's
row holds the timeout, that the child failed, and that its parent got
`ChildTaskFailed` and completed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from lessons.lesson07_durable_tasks.db.models import TaskStatus
from lessons.lesson07_durable_tasks.db.queries import Querier
from lessons.lesson07_durable_tasks.engine.client import enqueue, wait_for_task
from lessons.lesson07_durable_tasks.engine.durable import ChildTaskFailed, DurableContext
from lessons.lesson07_durable_tasks.engine.shared import DEFAULT_QUEUE
from lessons.lesson07_durable_tasks.engine.worker import Worker
from tests.conftest import LessonDatabase
from tests.recording import open_gate, wait_for_gate

LESSON = "lesson07_durable_tasks"
CHILDREN_QUEUE = "children"


def hang(input: dict[str, str]) -> None:
    """A payment API that never answers (until the check opens the gate, at its end)."""
    wait_for_gate(input["gate"])


def call_a_hanging_child(ctx: DurableContext, input: dict[str, str]) -> Any:
    try:
        ctx.call(
            "hang",
            input,
            queue=CHILDREN_QUEUE,
            max_retries=0,
            execution_timeout=0.5,  # type: ignore[call-arg, unused-ignore]
        )
    except ChildTaskFailed as failure:
        return {"child failed": failure.error_type}
    return {"child failed": None}


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def worker(database: LessonDatabase, queue: str) -> Worker:
    return Worker(
        database.pool,
        {"hang": hang},
        queue=queue,
        slots=1,
        poll_interval=0.02,
        heartbeat_interval=0.1,
        inactivity_threshold=0.6,
        durable_functions={"call_a_hanging_child": call_a_hanging_child},
    )


def test_a_hanging_child_times_out_and_its_parent_completes(
    database: LessonDatabase, tmp_path: Path
) -> None:
    for method in (DurableContext.spawn_child, DurableContext.call):
        if "execution_timeout" not in inspect.signature(method).parameters:
            pytest.fail(
                f"lesson 07's DurableContext.{method.__name__} has no `execution_timeout` "
                "parameter yet: see exercise 2 in its README",
                pytrace=False,
            )
    gate = tmp_path / "gate"
    with database.pool.connection() as conn:
        task_id = enqueue(conn, "call_a_hanging_child", {"gate": str(gate)}, durable=True)
    try:
        with worker(database, DEFAULT_QUEUE), worker(database, CHILDREN_QUEUE):
            task = wait_for_task(database.pool, task_id, timeout=20)
            open_gate(gate)
    finally:
        open_gate(gate)
    assert task.status == TaskStatus.COMPLETED, f"task {task.id}: {task.status}: {task.output}"
    with database.pool.connection() as conn:
        [child] = [t for t in Querier(conn).list_tasks() if t.task_name == "hang"]
    assert child.execution_timeout == timedelta(seconds=0.5), (
        "the child's row should hold its timeout"
    )
    assert child.status == TaskStatus.FAILED, f"child {child.id}: {child.status}"
    assert task.output is not None and task.output["child failed"], task.output
