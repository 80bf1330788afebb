"""The viewer's reads run on every lesson it shows, on read-only connections.

The pages of lesson NN read with queries sqlc checked against lesson NN's schema
(viewer/sql/lessonNN/), and with every earlier lesson's from 11 on: a later
lesson must still have the columns those read. Here each lesson's schema gets a
durable task and a plain one, and every read the pages make runs on it, through
the viewer's own read-only pool, the way the pages call them.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from lessons.common.database import create_pool
from tests.conftest import LessonDatabase
from viewer.additions import read_overview_additions, read_task_additions
from viewer.lessons import ViewedLesson, view_lesson, viewable_lessons
from viewer.pages import TaskFilters, read_overview, read_task, read_tasks

LESSONS = sorted(viewable_lessons())


@pytest.fixture(params=LESSONS, ids=lambda number: f"lesson{number}")
def lesson(
    request: pytest.FixtureRequest, lesson_database: Any
) -> Iterator[tuple[ViewedLesson, LessonDatabase]]:
    number: int = request.param
    lesson = view_lesson(number)
    database: LessonDatabase = lesson_database(lesson.lesson.directory.name)
    yield view_lesson(number, database.schema), database


@pytest.fixture
def read_only_pool(lesson: tuple[ViewedLesson, LessonDatabase]) -> Iterator[ConnectionPool]:
    viewed, database = lesson
    pool = create_pool(viewed.schema, url=database.url, read_only=True, name="viewer-test")
    yield pool
    pool.close()


def test_every_read_runs_on_every_lesson_it_shows(
    lesson: tuple[ViewedLesson, LessonDatabase], read_only_pool: ConnectionPool
) -> None:
    """Every page's reads, on a schema with a durable and a plain task, return them."""
    viewed, database = lesson
    client = importlib.import_module(f"{viewed.lesson.package}.engine.client")
    with database.pool.connection() as conn:
        durable = client.enqueue(conn, "process_order", {"order_id": "R-1"}, durable=True)
        plain = client.enqueue(conn, "echo", {"n": 1})
    with read_only_pool.connection() as conn:
        overview = read_overview(conn)
        assert overview.queues == {"default": {"queued": 2}}
        assert [task.id for task in read_tasks(conn, TaskFilters(durable=True))] == [durable]
        page = read_task(conn, durable)
        assert page is not None and page.task.status == "queued" and page.timeline
        assert read_task(conn, plain) is not None
        assert read_task(conn, plain + 1000) is None
        read_overview_additions(conn, viewed)
        additions = read_task_additions(conn, viewed, durable)
        assert (additions.flow_control is not None) == viewed.has("flow_control")
        assert (additions.cancellation is not None) == viewed.has("cancellation")
        assert (additions.continuation is not None) == viewed.has("partitions")


def test_the_viewers_connections_refuse_to_write(
    lesson: tuple[ViewedLesson, LessonDatabase], read_only_pool: ConnectionPool
) -> None:
    """The pool the pages read on is read-only on the server: a write is refused."""
    with read_only_pool.connection() as conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        conn.execute("UPDATE tasks SET priority = 1")
