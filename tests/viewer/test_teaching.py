"""The viewer on a projector, beside a lesson's main.py: what a teacher would trip over.

A stopped worker says when it stopped, with no slots, and an overview where
nothing moves stays still (no count that grows at every poll). Long JSON and long
names wrap or scroll inside the page. A task with more children than a page lists
says it shows the first of them, and its timeline the newest events. A fork's
timeline says where the copies end and its own run begins; a replayed task's, that
it was replayed, and its attempts count from the replay. An output a reader has
opened stays open while the task goes on. A hidden tab lets go of its stream, so
that a seventh tab of the viewer still loads (a browser holds six connections to a
server, and each live page one).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from lessons.lesson11_retries_replays_forks.engine.client import enqueue, push_event, wait_for_task
from lessons.lesson11_retries_replays_forks.engine.reruns import fork, replay
from lessons.lesson11_retries_replays_forks.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.viewer.conftest import open_live, serve_viewer
from tests.waiting import wait_until
from viewer.pages import MAX_TIMELINE_EVENTS, MAX_TREE_NODES

LESSON = "lesson11_retries_replays_forks"
ORDER = {"order_id": "T-1", "card": "4242", "amount_cents": 4200, "email": "ada@example.org"}

# How many connections Chromium keeps open to one server over HTTP/1.1.
BROWSER_CONNECTIONS_PER_SERVER = 6


@pytest.fixture
def database(lesson_database: Any) -> LessonDatabase:
    database: LessonDatabase = lesson_database(LESSON)
    return database


def worker_process(database: LessonDatabase) -> WorkerProcess:
    return WorkerProcess(
        schema=database.schema,
        queues=["orders"],
        functions="tests.viewer.functions_lesson11",
        slots=4,
        poll_interval=0.05,
        heartbeat_interval=0.1,
        inactivity_threshold=1.0,
        environment={"DATABASE_URL": database.url},
    )


def enqueue_task(database: LessonDatabase, name: str, input: Any, **options: Any) -> int:
    with database.pool.connection() as conn:
        return enqueue(conn, name, input, queue="orders", **options)


def task_status(database: LessonDatabase, task_id: int) -> str | None:
    with database.pool.connection() as conn:
        row = conn.execute("SELECT status::text FROM tasks WHERE id = %s", (task_id,)).fetchone()
    return None if row is None else str(row[0])


def test_a_stopped_worker_says_when_it_stopped_and_a_still_overview_stays_still(
    database: LessonDatabase, page: Page
) -> None:
    """A worker that stopped shows `stopped at` its time, no lease and no slots; once
    nothing moves, the overview's live part is not replaced at every poll."""
    with worker_process(database) as worker:
        worker_id = worker.start()
        wait_for_task(database.pool, enqueue_task(database, "echo", {"n": 1}))
        worker.stop()
    with serve_viewer(11, database.schema, database.url) as url:
        open_live(page, f"{url}/")
        row = page.locator(f"tr[data-worker='{worker_id}']")
        expect(row.locator(".state")).to_have_text("stopped")
        expect(row).to_contain_text("stopped at ")
        expect(row).not_to_contain_text("ago")
        expect(row.locator(".slots")).to_have_count(0)
        updates = page.evaluate("window.liveUpdates")
        time.sleep(1.5)  # five polls and more: what they would change, they do
        assert page.evaluate("window.liveUpdates") == updates


def test_long_json_and_long_names_stay_inside_the_page(
    database: LessonDatabase, page: Page
) -> None:
    """An input of one 20,000-character line and a 300-character name without a space:
    the page is no wider than the window, and the input says how much of it is cut.
    A line separator (U+2028) in the input comes through the live stream as it is."""
    name = "n" * 300
    task = enqueue_task(database, name, {"line": "x" * 20_000, "a_separated": "a\u2028b"})
    with serve_viewer(11, database.schema, database.url) as url:
        for path in (f"/tasks/{task}", "/tasks"):
            page.goto(f"{url}{path}")
            expect(page.locator("#live")).to_contain_text(name)
            widths = page.evaluate(
                "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
            )
            assert widths[0] <= widths[1], f"{path}: {widths[0]} px wide in {widths[1]}"
        open_live(page, f"{url}/tasks/{task}")
        expect(page.locator("#task-input")).to_contain_text("more characters)")
        # Read as it is: an assertion on text would take U+2028 and a line end for spaces.
        assert '"a_separated": "a\u2028b"' in (page.locator("#task-input").text_content() or "")


def test_a_task_with_more_children_than_a_page_lists_says_so(
    database: LessonDatabase, page: Page
) -> None:
    """A durable task spawns 510 children: its page lists the first 500, and says so,
    and its timeline shows the newest 500 events, and says which it leaves out."""
    children = MAX_TREE_NODES + 10
    with worker_process(database) as worker:
        worker.start()
        task = enqueue_task(database, "spawn_children", {"children": children}, durable=True)
        wait_for_task(database.pool, task, timeout=60.0)
    with serve_viewer(11, database.schema, database.url) as url:
        page.goto(f"{url}/tasks/{task}")
        expect(page.locator("#children li[data-task]")).to_have_count(MAX_TREE_NODES)
        expect(page.locator("#live")).to_contain_text(f"The first {MAX_TREE_NODES} descendants")
        expect(page.locator("#timeline li.event")).to_have_count(MAX_TIMELINE_EVENTS)
        hidden = children - MAX_TIMELINE_EVENTS
        expect(page.locator("#timeline li.marker-cut")).to_have_text(
            f"events 1 to {hidden} are not shown, only the newest {MAX_TIMELINE_EVENTS} "
            f"(history_tool history {task} lists them all)"
        )
        expect(page.locator("#timeline li.event").first).to_have_attribute(
            "data-event", str(hidden + 1)
        )


def test_a_forks_and_a_replays_timelines_say_what_happened(
    database: LessonDatabase, page: Page
) -> None:
    """An order, approved, completes with three events (its wait and two children); it
    is forked at event 3 and then replayed. The fork's timeline
    says its first two events are copies from the order, then that its own attempt 1
    runs on from event 3; the order's says it was replayed after attempt 1, shows
    attempt 2, and counts it as the first of the attempts it may make since."""
    with worker_process(database) as worker:
        worker.start()
        order = enqueue_task(database, "process_order", ORDER, durable=True)
        wait_until(lambda: task_status(database, order) == "suspended")
        with database.pool.connection() as conn:
            push_event(conn, "approval:T-1", {"approved": True, "by": "ada"})
        wait_for_task(database.pool, order)
        with database.pool.connection() as conn:
            forked = fork(conn, order, at_event=3).id
        wait_for_task(database.pool, forked)
        with database.pool.connection() as conn:
            replay(conn, order)
        # Run from scratch, it waits for its approval again.
        wait_until(lambda: task_status(database, order) == "suspended")
        with database.pool.connection() as conn:
            push_event(conn, "approval:T-1", {"approved": True, "by": "ada"})
        assert wait_for_task(database.pool, order).attempt == 2
    with serve_viewer(11, database.schema, database.url) as url:
        page.goto(f"{url}/tasks/{forked}")
        timeline = page.locator("#timeline > li")
        expect(timeline.nth(0)).to_have_text(
            f"copied from task {order}, where attempt 1 recorded it: "
            "the history this fork starts from"
        )
        expect(page.locator("#timeline li.marker-attempt")).to_have_count(2)
        own_run = page.locator("#timeline li.marker-attempt").nth(1)
        expect(own_run).to_have_text(
            "attempt 1 of this fork: it replayed the copies above, and runs on from here"
        )
        expect(page.locator("#timeline li.event[data-event='3'] .meta")).not_to_contain_text(
            "copied"
        )
        page.goto(f"{url}/tasks/{order}")
        expect(timeline.nth(0)).to_have_text(
            "replayed after attempt 1: its history was deleted, and it runs again from scratch"
        )
        expect(timeline.nth(1)).to_have_text("attempt 2")
        expect(page.locator("#task-attempt")).to_have_text(
            "2: 1 of the 4 it may make since its replay"
        )


def test_an_output_a_reader_opened_stays_open_while_the_task_goes_on(
    database: LessonDatabase, page: Page
) -> None:
    """A task records a step and waits; the reader opens the step's output. The event
    comes, and the page updates live to completed: the output is still open, and the
    wait's, which the reader did not open, is closed."""
    with worker_process(database) as worker, serve_viewer(11, database.schema, database.url) as url:
        worker.start()
        task = enqueue_task(
            database, "step_then_wait", {"data": {"prepared": "yes"}, "key": "go"}, durable=True
        )
        page.goto(f"{url}/tasks/{task}")
        expect(page.locator("#task-status")).to_have_text("suspended")
        step_output = page.locator("li[data-event='1'] details:has(summary:text-is('output'))")
        step_output.locator("summary").click()
        expect(step_output).to_have_attribute("open", "")
        with database.pool.connection() as conn:
            push_event(conn, "go", {"went": True})
        expect(page.locator("#task-status")).to_have_text("completed")
        expect(step_output).to_have_attribute("open", "")
        expect(step_output).to_contain_text('"prepared": "yes"')
        received = page.locator("li[data-event='2'] details:has(summary:text-is('received'))")
        expect(received).not_to_have_attribute("open", "")


def hide(page: Page) -> None:
    """What the browser does to a tab the user leaves (headless Chromium shows them all)."""
    page.evaluate(
        "Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )


def show(page: Page) -> None:
    page.evaluate(
        "Object.defineProperty(document, 'hidden', {configurable: true, get: () => false});"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )


def test_a_hidden_tab_lets_go_of_its_stream_so_that_another_tab_still_loads(
    database: LessonDatabase, browser: Browser
) -> None:
    """Six tabs of the viewer are live, and hidden one after the other: a seventh loads
    and is live. A hidden tab shown again is live again, with the task enqueued while
    it was hidden."""
    context = browser.new_context()
    try:
        with serve_viewer(11, database.schema, database.url) as url:
            tabs = []
            for _ in range(BROWSER_CONNECTIONS_PER_SERVER):
                tab = context.new_page()
                tab.goto(f"{url}/tasks")
                expect(tab.locator("#live-state")).to_have_text("live")
                tabs.append(tab)
            for tab in tabs:
                hide(tab)
                expect(tab.locator("#live-state")).to_have_text("paused while hidden")
            seventh = context.new_page()
            seventh.goto(f"{url}/")
            expect(seventh.locator("#live-state")).to_have_text("live")
            task = enqueue_task(database, "echo", {"n": 1})
            show(tabs[0])
            expect(tabs[0].locator("#live-state")).to_have_text("live")
            expect(tabs[0].locator(f"tr[data-task='{task}']")).to_have_count(1)
    finally:
        context.close()
