"""The viewer when the database, the schema or the page asked for is not there.

The database goes away under an open page (every connection through a proxy is
cut, new ones refused, the way a restart looks to the viewer): the page says it
is offline, keeps what it showed, and comes back by itself, promptly, once the
database is back. A schema dropped under an open page, and made again the way a
lesson's main.py makes it, says what to do and comes back too. A schema without
the lesson's tables gets a page that says to run the lesson's main.py, and that
loads itself once there are tables. A missing task, a page that does not exist
and a bad filter get pages that say so, with the right status.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from lessons.common.database import connect, drop_schema, reset_schema
from lessons.lesson11_retries_replays_forks.engine.client import enqueue
from tests.conftest import LESSONS_DIRECTORY, LessonDatabase
from tests.database_proxy import DatabaseProxy
from tests.viewer.conftest import serve_viewer

LESSON = "lesson11_retries_replays_forks"
SCHEMA_SQL: Path = LESSONS_DIRECTORY / LESSON / "sql" / "schema.sql"

# Long enough for psycopg's pool, left to itself, to have doubled its wait between
# two attempts to connect to 8 s: it would come back 4 to 6 s after the database.
OUTAGE_SECONDS = 10.0
# How soon after the database is back a page must be live again: a few polls.
BACK_WITHIN_MILLISECONDS = 4_000


@pytest.fixture
def database(lesson_database: Any) -> LessonDatabase:
    database: LessonDatabase = lesson_database(LESSON)
    return database


def enqueue_echo(database: LessonDatabase, n: int) -> int:
    with database.pool.connection() as conn:
        return enqueue(conn, "echo", {"n": n}, queue="orders")


def mark_window(page: Page) -> None:
    page.evaluate("window.notReloaded = true")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.notReloaded === true"), "the page was reloaded"


def test_a_page_says_it_is_offline_while_the_database_is_away_and_comes_back_by_itself(
    database: LessonDatabase, page: Page
) -> None:
    """The viewer reaches the database through a proxy, which cuts every connection.
    The open task list says it is offline, why, and keeps its rows; a task enqueued
    meanwhile (directly, not through the proxy) appears within a few polls of the
    database's return, without a reload."""
    first = enqueue_echo(database, 1)
    with (
        DatabaseProxy(database.url) as proxy,
        serve_viewer(11, database.schema, proxy.url) as url,
    ):
        page.goto(f"{url}/tasks")
        expect(page.locator("#live-state")).to_have_text("live")
        mark_window(page)
        proxy.cut()
        expect(page.locator("#live-state")).to_have_text("offline")
        expect(page.locator("#offline")).to_contain_text("the database is out of reach")
        expect(page.locator("#offline")).to_contain_text("the page below is as it was at")
        expect(page.locator(f"tr[data-task='{first}']")).to_have_count(1)
        second = enqueue_echo(database, 2)
        time.sleep(OUTAGE_SECONDS)  # the outage itself: nothing to wait for
        expect(page.locator("#live-state")).to_have_text("offline")
        proxy.restore()
        expect(page.locator(f"tr[data-task='{second}']")).to_have_count(
            1, timeout=BACK_WITHIN_MILLISECONDS
        )
        expect(page.locator("#live-state")).to_have_text("live")
        expect(page.locator("#offline")).to_be_hidden()
        assert_not_reloaded(page)


def test_a_schema_dropped_under_an_open_page_says_so_and_comes_back_once_made_again(
    database: LessonDatabase, page: Page
) -> None:
    """The schema is dropped while the overview is open: the page says the schema does
    not hold the lesson's tables and to run its main.py; made again (as main.py makes
    it) with a task in it, the page shows its queue, without a reload."""
    enqueue_echo(database, 1)
    with serve_viewer(11, database.schema, database.url) as url:
        page.goto(f"{url}/")
        expect(page.locator("tr[data-queue='orders']")).to_have_count(1)
        mark_window(page)
        drop_schema(database.schema, url=database.url)
        offline = page.locator("#offline")
        expect(offline).to_contain_text(f"schema {database.schema} does not hold lesson 11's")
        expect(offline).to_contain_text("run this lesson's main.py first (make lesson N=11)")
        reset_schema(database.schema, SCHEMA_SQL, url=database.url)
        with database.pool.connection() as conn:
            enqueue(conn, "echo", {"n": 2}, queue="made-again")
        expect(page.locator("tr[data-queue='made-again']")).to_have_count(1)
        expect(page.locator("tr[data-queue='orders']")).to_have_count(0)
        expect(offline).to_be_hidden()
        assert_not_reloaded(page)


def test_a_schema_without_the_lessons_tables_says_to_run_main_and_loads_once_they_are_there(
    database_url: str, page: Page
) -> None:
    """The viewer of a schema its lesson's main.py never made: every page is a 503 that
    says to run the lesson's main.py; the open page loads itself once the schema has
    the lesson's tables, with the task enqueued in them."""
    schema = f"test_never_{uuid.uuid4().hex[:10]}"
    try:
        with serve_viewer(11, schema, database_url) as url:
            for path in ("/tasks", "/tasks/1"):
                response = page.goto(f"{url}{path}")
                assert response is not None and response.status == 503
            response = page.goto(f"{url}/")
            assert response is not None and response.status == 503
            alert = page.locator("#live [role=alert]")
            expect(alert).to_contain_text(f"schema {schema} does not hold lesson 11's tables")
            expect(alert).to_contain_text("run this lesson's main.py first (make lesson N=11)")
            reset_schema(schema, SCHEMA_SQL, url=database_url)
            with connect(database_url, schema=schema) as conn:
                enqueue(conn, "echo", {"n": 1}, queue="orders")
            expect(page.locator("tr[data-queue='orders']")).to_have_count(1)
            expect(page.locator("#live-state")).to_have_text("live")
    finally:
        drop_schema(schema, url=database_url)


def test_what_is_not_there_gets_a_page_that_says_so(database: LessonDatabase, page: Page) -> None:
    """A task id no task has: 404, in words. An address the viewer has no page for:
    404, the viewer's own page (its header and links). A filter it cannot apply: 400,
    which says what it can."""
    with serve_viewer(11, database.schema, database.url) as url:
        for path, status, words in (
            ("/tasks/999999", 404, "there is no task 999999 (never made, or removed by retention)"),
            ("/tasks/abc", 404, "the viewer has no page at /tasks/abc"),
            ("/workers", 404, "the viewer has no page at /workers"),
            ("/tasks?durable=maybe", 400, "durable is yes or no"),
            ("/tasks?status=done", 400, "no status 'done': choose one of queued, running"),
        ):
            response = page.goto(f"{url}{path}")
            assert response is not None and response.status == status, path
            expect(page.locator("#live [role=alert]")).to_contain_text(words)
            expect(page.locator("header nav a")).to_have_count(2)
