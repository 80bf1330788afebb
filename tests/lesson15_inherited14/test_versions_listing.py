"""`history_tool versions` says where a version is stranded: queue by queue.

A worker serves one queue. A version with a live worker on one queue and
tasks pinned to it on another is stranded on that other queue, and must be
reported so: counted per version only, the live worker would hide the tasks
that no worker will ever take.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from contextlib import redirect_stdout

import pytest

from lessons.lesson15_operating_at_scale.db.queries import Querier
from lessons.lesson15_operating_at_scale.engine.client import enqueue
from lessons.lesson15_operating_at_scale.tools import history_tool
from tests.conftest import LessonDatabase

LESSON = "lesson15_operating_at_scale"


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def test_a_version_served_on_one_queue_is_stranded_on_another_with_its_tasks(
    database: LessonDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    with database.pool.connection() as conn:
        queries = Querier(conn)
        queries.register_worker(
            name="reports", queue="reports", slots=1, lease_seconds=60, code_version="v1"
        )
        task_id = enqueue(conn, "process_order", {"order_id": "O-1"}, queue="orders", durable=True)
        # As its first claim left it, on a v1 worker of `orders` that is gone.
        conn.execute(
            "UPDATE tasks SET status = 'suspended', attempt = 1, code_version = 'v1',"
            " started_at = now() WHERE id = %s",
            (task_id,),
        )
    monkeypatch.setenv("DATABASE_URL", database.url)
    printed = io.StringIO()
    with redirect_stdout(printed):
        status = history_tool.main(["--schema", database.schema, "versions"])

    assert status == 0
    rows = {tuple(line.split()[:2]): line for line in printed.getvalue().splitlines()[1:]}
    assert rows.keys() == {("v1", "reports"), ("v1", "orders")}, printed.getvalue()
    assert rows[("v1", "reports")].split()[2:4] == ["1", "0"]
    assert rows[("v1", "reports")].endswith("serving")
    assert rows[("v1", "orders")].split()[2:4] == ["0", "1"]
    assert rows[("v1", "orders")].endswith("STRANDED: tasks and no live worker")
