"""Issue 21: lesson 15's worker pool plans each statement once per connection, and
those plans, made on empty tables, still probe by key once the tables have grown.

On partitioned tables PostgreSQL's plan cache keeps choosing a plan made for each
call's own values (pruned to one partition) over the generic one (every
partition), so a prepared statement is planned again at every call: the first
test fails without `generic_plans`. A generic plan made on empty tables keeps
whatever looked cheapest then: the history's join to the children read all of
`tasks`, which the second test catches, without the pool's nested loops only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from lessons.common.database import create_pool
from lessons.lesson15_operating_at_scale.db.queries import Querier
from tests.auto_explain import plans_of, scans_that_ran
from tests.conftest import LessonDatabase

LESSON = "lesson15_operating_at_scale"
QUEUE = "plans"
CALLS = 12  # past psycopg's prepare threshold and the plan cache's five custom plans
GROWTH = 2_000  # parents and children added after the plans were made


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


@contextmanager
def worker_pool_connection(database: LessonDatabase) -> Iterator[psycopg.Connection[Any]]:
    """A connection of a pool made as the worker process makes its own."""
    with (
        create_pool(database.schema, url=database.url, max_size=1, generic_plans=True) as pool,
        pool.connection() as conn,
    ):
        yield conn


def test_the_worker_pool_plans_each_statement_once(database: LessonDatabase) -> None:
    with worker_pool_connection(database) as conn:
        parent = create_parent(Querier(conn))
        for _ in range(CALLS):
            Querier(conn).get_task(id=parent)
            Querier(conn).list_task_history_with_children(task_id=parent)
        plans = conn.execute(
            "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
        ).fetchall()
    counted = {statement.split("\n")[0]: (generic, custom) for statement, generic, custom in plans}
    for name in ("-- name: GetTask :one", "-- name: ListTaskHistoryWithChildren :many"):
        assert counted.get(name) == (CALLS, 0), f"{name}: (generic, custom) plans {counted}"


def test_plans_made_on_empty_tables_probe_by_key_once_they_have_grown(
    database: LessonDatabase,
) -> None:
    with worker_pool_connection(database) as conn:
        queries = Querier(conn)
        parent = create_parent(queries)
        for _ in range(CALLS):  # the plans are made here, on empty tables
            queries.get_task(id=parent)
            queries.list_task_history_with_children(task_id=parent)
        grow(database)
        documents = plans_of(
            conn,
            lambda: (
                queries.get_task(id=parent),
                queries.list_task_history_with_children(task_id=parent),
            ),
        )
    assert len(documents) == 2, documents
    for document in documents:
        sequential = [
            scan["Relation Name"]
            for scan in scans_that_ran(document["Plan"])
            if scan["Node Type"] == "Seq Scan" and scan["Relation Name"].startswith("task")
        ]
        assert sequential == [], json.dumps(document)


def create_parent(queries: Querier) -> int:
    task = queries.create_task(
        queue=QUEUE,
        task_name="parent",
        display_name="parent",
        input_={},
        priority=0,
        max_retries=0,
        execution_timeout_seconds=None,
        schedule_timeout_seconds=None,
        durable=True,
        parent_id=None,
        concurrency_key=None,
        rate_limit=None,
        rate_units=None,
        start_at=None,
        start_after_seconds=None,
        idempotency_key=None,
        idempotency_retention_seconds=None,
    )
    assert task is not None
    return task.id


def grow(database: LessonDatabase) -> None:
    """GROWTH parents, each with a child and the child's event, with no ANALYZE."""
    with psycopg.connect(database.url, autocommit=True) as conn:
        conn.execute(f"SET search_path = {database.schema}")
        with conn.transaction():
            conn.execute(
                "INSERT INTO tasks (queue, task_name, display_name, input, durable)"
                " SELECT %s, 'parent', 'parent', '{}', true FROM generate_series(1, %s)",
                (QUEUE, GROWTH),
            )
            conn.execute(
                "INSERT INTO tasks (queue, task_name, display_name, input, parent_id)"
                " SELECT queue, 'child', 'child', '{}', id FROM tasks WHERE durable"
            )
            conn.execute(
                "INSERT INTO task_events (task_id, event_number, kind, name, input, key,"
                " child_task_id, attempt)"
                " SELECT parent_id, 1, 'child', 'child', '{}', 'key', id, 1"
                " FROM tasks WHERE parent_id IS NOT NULL"
            )
