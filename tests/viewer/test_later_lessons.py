"""The viewer on later lessons, in a real browser: what lessons 13 and 15 add.

Lesson 13: a task cancelled from its page (operations allowed), through the
history tool's own `cancel`, shows live who cancelled it and why, its
cancellation event and its compensation, and ends cancelled. Lesson 15: a
subscription that continues as new shows the chain, page to page, and the
overview lists the ranges of task ids.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import LessonDatabase
from tests.viewer.conftest import serve_viewer

LESSON_13 = "lesson13_cancellation_and_schedules"
LESSON_15 = "lesson15_operating_at_scale"


@contextmanager
def viewer(number: int, database: LessonDatabase, *, allow_operations: bool) -> Iterator[str]:
    with serve_viewer(
        number, database.schema, database.url, allow_operations=allow_operations
    ) as url:
        yield url


def worker_process(lesson: str, database: LessonDatabase, functions: str, **options: Any) -> Any:
    tools = importlib.import_module(f"lessons.{lesson}.tools.worker_process")
    return tools.WorkerProcess(
        schema=database.schema,
        queues=["default"],
        functions=functions,
        slots=4,
        poll_interval=0.05,
        heartbeat_interval=0.1,
        inactivity_threshold=1.0,
        environment={"DATABASE_URL": database.url},
        **options,
    )


def enqueue(lesson: str, database: LessonDatabase, name: str, input: Any) -> int:
    client = importlib.import_module(f"lessons.{lesson}.engine.client")
    with database.pool.connection() as conn:
        task_id: int = client.enqueue(conn, name, input, durable=True)
        return task_id


@pytest.fixture
def lesson13(lesson_database: Any) -> LessonDatabase:
    database: LessonDatabase = lesson_database(LESSON_13)
    return database


@pytest.fixture
def lesson15(lesson_database: Any) -> LessonDatabase:
    database: LessonDatabase = lesson_database(LESSON_15)
    return database


def test_a_task_cancelled_from_its_page_compensates_and_the_page_shows_it_live(
    lesson13: LessonDatabase, page: Page
) -> None:
    """A durable task waits (suspended) after its reserve step. The page's cancel form
    (by, why) says what the history tool says; without a reload the page then shows
    who cancelled it and why, the wait ended by the cancellation, the cancellation
    event, the release step after it, and the task cancelled. Cancelling it again is
    refused in the tool's words."""
    functions = "tests.viewer.functions_lesson13"
    with worker_process(LESSON_13, lesson13, functions) as worker:
        worker.start()
        task = enqueue(LESSON_13, lesson13, "reserve_then_wait", {"item": "lamp"})
        with viewer(13, lesson13, allow_operations=True) as url:
            page.goto(f"{url}/tasks/{task}")
            expect(page.locator("#task-status")).to_have_text("suspended")
            page.fill("input[name=by]", "ada")
            page.fill("input[name=reason]", "changed her mind")
            page.click("button:has-text('cancel')")
            expect(page.locator(".result.done")).to_contain_text("compensates before it ends")
            page.evaluate("window.notReloaded = true")
            expect(page.locator("#task-status")).to_have_text("cancelled")
            expect(page.locator("#task-cancellation")).to_contain_text("by ada at")
            expect(page.locator("#task-cancellation")).to_contain_text("changed her mind")
            kinds = page.locator("#timeline li.event .kind").all_text_contents()
            names = page.locator("#timeline li.event .event-name").all_text_contents()
            assert kinds == ["step", "wait", "cancellation", "step"]
            assert names[0] == "reserve" and names[3] == "release"
            expect(page.locator("#timeline li.kind-wait")).to_contain_text(
                "ended before its deadline by the task's cancellation"
            )
            assert page.evaluate("window.notReloaded === true")
            page.fill("input[name=by]", "ada")
            page.fill("input[name=reason]", "again")
            page.click("button:has-text('cancel')")
            expect(page.locator(".result.done")).to_contain_text("nothing to cancel")


def test_a_subscription_that_continues_as_new_shows_its_chain_and_the_ranges(
    lesson15: LessonDatabase, page: Page
) -> None:
    """A subscription of six renewals with a history limit of four events (two
    renewals) continues as new twice: its page shows, live, the task it continued
    as; following those links reaches the last task, completed, which shows the
    one it continues. The overview lists the ranges of task ids, the first filling."""
    functions = f"lessons.{LESSON_15}.demo.tasks"
    state = {
        "subscription": "S-9",
        "renewals": 0,
        "renewals_wanted": 6,
        "period_seconds": 0.1,
        "amount_cents": 900,
    }
    with worker_process(LESSON_15, lesson15, functions, history_limit=4) as worker:
        worker.start()
        first = enqueue(LESSON_15, lesson15, "subscription", state)
        with viewer(15, lesson15, allow_operations=False) as url:
            page.goto(f"{url}/tasks/{first}")
            seen = [first]
            while True:
                # A task of the chain ends completed, continued as the next, or the last.
                expect(page.locator("#task-status")).to_have_text("completed")
                if not page.locator("#task-continued-as").count():
                    break
                page.click("#task-continued-as a")
                expect(page.locator("h1")).not_to_contain_text(f"task {seen[-1]} ")
                seen.append(int((page.locator("h1").text_content() or "").split()[1]))
            assert len(seen) == 3
            expect(page.locator("#task-output")).to_contain_text('"renewals": 6')
            expect(page.locator("#live")).to_contain_text(f"task {seen[1]}")
            page.goto(f"{url}/")
            expect(page.locator("#partitions tbody tr").first).to_contain_text("filling")
