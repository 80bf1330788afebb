"""A child cancelled on its own wakes the parent that waits for it: the parent meets
`ChildTaskCancelled` at once, instead of waiting, suspended, for a child that will
never finish otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lessons.lesson15_operating_at_scale.db.models import TaskStatus
from lessons.lesson15_operating_at_scale.db.queries import Querier
from lessons.lesson15_operating_at_scale.engine.client import (
    cancel,
    enqueue,
    wait_for_task,
)
from lessons.lesson15_operating_at_scale.engine.durable import (
    ChildTaskCancelled,
    DurableContext,
)
from lessons.lesson15_operating_at_scale.engine.worker import Worker
from tests.conftest import LessonDatabase
from tests.waiting import wait_until

LESSON = "lesson15_operating_at_scale"
# No worker serves it: the child stays queued until it is cancelled.
UNSERVED_QUEUE = "nobody"


def parent(ctx: DurableContext, input: Any) -> dict[str, str]:
    try:
        ctx.call("never_runs", {}, queue=UNSERVED_QUEUE)
    except ChildTaskCancelled as cancelled:
        return {"child": cancelled.error_type}
    return {"child": "finished"}


def test_a_child_cancelled_alone_wakes_its_waiting_parent(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    database = lesson_database(LESSON)
    pool = database.pool
    with Worker(
        pool,
        {},
        durable_functions={"parent": parent},
        poll_interval=5.0,
        heartbeat_interval=0.1,
        inactivity_threshold=2.0,
        run_schedules=False,
    ):
        with pool.connection() as conn:
            parent_id = enqueue(conn, "parent", {}, durable=True)

        def child_id() -> int | None:
            with pool.connection() as conn:
                queries = Querier(conn)
                task = queries.get_task(id=parent_id)
                if task is None or task.status != TaskStatus.SUSPENDED:
                    return None
                children = [t.id for t in queries.list_tasks() if t.parent_id == parent_id]
            return children[0] if children else None

        child = wait_until(child_id, message="the parent did not suspend on its child")
        with pool.connection() as conn:
            assert cancel(conn, child, cancelled_by="ops", reason="not needed") == (
                TaskStatus.CANCELLED
            )
        # The poll interval is 5 s: only the wake-up (its notification) makes this quick.
        finished = wait_for_task(pool, parent_id, timeout=30)
    assert finished.status == TaskStatus.COMPLETED
    assert finished.output == {"child": "Cancelled"}
