"""Issue 21: the insert trigger's look at a child's parent (lesson 09's
`notify_tasks_inserted`, carried by every later lesson) reads the parent's row
and nothing else, however many tasks are suspended.

PL/pgSQL plans the trigger's statement once per connection, the first time it
runs: on a fresh worker's connection, with `tasks` empty and no statistics.
Written as NOT EXISTS (a suspended parent on this queue, with this id), that
plan read all of `tasks_suspended_idx` at every insert, every suspended task
of the queue (with 4,000 orders in flight, a fifth of the server's time): the
test fails on it. The parent joined by its id alone can only be a primary key
probe.

The plan is the one the trigger ran: auto_explain sends it back as a notice,
nested statements included, in JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from lessons.common.database import connect
from tests.auto_explain import plans_of, scans_that_ran
from tests.conftest import LessonDatabase

QUEUE = "orders"
SUSPENDED = 500  # suspended tasks added after the trigger's plan was made


@pytest.mark.parametrize(
    "package",
    [
        "lesson09_durable_sleep",
        "lesson12_flow_control",
        "lesson13_cancellation_and_schedules",
        "lesson15_operating_at_scale",
    ],
)
def test_a_childs_insert_reads_its_parent_alone_however_many_tasks_are_suspended(
    package: str, lesson_database: Callable[..., LessonDatabase]
) -> None:
    database = lesson_database(package)
    with connect(database.url, schema=database.schema) as conn:
        conn.autocommit = True
        # The first runs plan the trigger's statement, on an empty table.
        for _ in range(3):
            spawn_and_suspend(conn)
        suspend_many(conn, SUSPENDED)
        documents = plans_of(conn, lambda: spawn_and_suspend(conn), nested=True)
    trigger_plans = [d["Plan"] for d in documents if "FROM inserted" in d.get("Query Text", "")]
    assert trigger_plans, f"no plan of the insert trigger among {documents}"
    for plan in trigger_plans:
        # Each scan of tasks (or of a partition): the rows it read, kept or not.
        read = {
            f"{scan['Node Type']} on {scan['Relation Name']}": (
                float(scan.get("Actual Rows", 0)) + float(scan.get("Rows Removed by Filter", 0))
            )
            * float(scan["Actual Loops"])
            for scan in scans_that_ran(plan)
            if scan["Relation Name"].startswith("tasks")
        }
        assert sum(read.values()) <= 1, (
            f"the insert trigger read {read} rows of tasks for one child "
            f"(with {SUSPENDED} tasks suspended): {json.dumps(plan)}"
        )


def spawn_and_suspend(conn: psycopg.Connection[Any]) -> None:
    """What `ctx.call` does: suspend the parent, then insert its child, in one transaction."""
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO tasks (queue, task_name, display_name, input)"
            " VALUES (%s, 'parent', 'parent', '{}') RETURNING id",
            (QUEUE,),
        ).fetchone()
        assert row is not None
        conn.execute("UPDATE tasks SET status = 'suspended' WHERE id = %s", (row[0],))
        conn.execute(
            "INSERT INTO tasks (queue, task_name, display_name, input, parent_id)"
            " VALUES (%s, 'child', 'child', '{}', %s)",
            (QUEUE, row[0]),
        )


def suspend_many(conn: psycopg.Connection[Any], count: int) -> None:
    """`count` more tasks of the queue, suspended (parents waiting for their children)."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO tasks (queue, task_name, display_name, input)"
            " SELECT %s, 'parent', 'parent', '{}' FROM generate_series(1, %s)",
            (QUEUE, count),
        )
        conn.execute(
            "UPDATE tasks SET status = 'suspended' WHERE status = 'queued' AND parent_id IS NULL"
        )
