"""The viewer in a real browser, on lesson 11's schema, with real worker processes.

Each test serves the viewer (viewer.app) on this machine's loopback, points it at
a schema of its own, runs real tasks with real worker processes on the real
server, and reads the pages the way a person would, in Chromium. "Live" means
the page changes without a reload: each test that says so marks the page's
window before the change and checks the mark is still there after it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from lessons.lesson11_retries_replays_forks.engine.client import enqueue, push_event, wait_for_task
from lessons.lesson11_retries_replays_forks.engine.reruns import fork
from lessons.lesson11_retries_replays_forks.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.lesson11.functions import arrival_file
from tests.viewer.conftest import serve_viewer
from tests.waiting import wait_until

LESSON = "lesson11_retries_replays_forks"
ORDERS_QUEUE = "orders"
# The README's screenshot is this test's: `UPDATE_VIEWER_SCREENSHOT=1 make test` writes it
# again; otherwise the test takes it all the same, into its own temporary directory.
README_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "viewer.png"

ORDER = {"order_id": "V-1", "card": "4242", "amount_cents": 4200, "email": "ada@example.org"}


@pytest.fixture
def database(lesson_database: Any) -> LessonDatabase:
    database: LessonDatabase = lesson_database(LESSON)
    return database


@contextmanager
def viewer(database: LessonDatabase, *, allow_operations: bool = False) -> Iterator[str]:
    """The viewer of `database`'s schema, polling every 0.2 s; yields its base URL."""
    with serve_viewer(11, database.schema, database.url, allow_operations=allow_operations) as url:
        yield url


def worker_process(database: LessonDatabase) -> WorkerProcess:
    return WorkerProcess(
        schema=database.schema,
        queues=[ORDERS_QUEUE],
        functions="tests.lesson11.functions",
        slots=4,
        poll_interval=0.05,
        heartbeat_interval=0.1,
        inactivity_threshold=1.0,
        environment={"DATABASE_URL": database.url},
    )


def enqueue_task(database: LessonDatabase, name: str, input: Any, **options: Any) -> int:
    with database.pool.connection() as conn:
        return enqueue(conn, name, input, queue=ORDERS_QUEUE, **options)


def mark_window(page: Page) -> None:
    """Mark the page's window: a reload would start a new one, without the mark."""
    page.evaluate("window.notReloaded = true")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.notReloaded === true"), "the page was reloaded"


def event_rows(page: Page) -> list[str]:
    """The timeline's events as `number kind name`."""
    rows = page.locator("#timeline li.event")
    return [
        " ".join(
            rows.nth(index).locator(part).text_content() or ""
            for part in (".number", ".kind", ".event-name")
        )
        for index in range(rows.count())
    ]


def test_a_durable_orders_page_shows_its_events_in_order_and_goes_from_suspended_to_completed_live(
    database: LessonDatabase, page: Page, tmp_path: Path
) -> None:
    """The order waits for its approval (suspended, with its wait event); the approval
    is pushed while the page is open; without a reload the page shows the two
    children spawned, in order, and the order completed with its output."""
    with worker_process(database) as worker, viewer(database) as url:
        worker.start()
        order = enqueue_task(database, "process_order", ORDER, durable=True)
        page.goto(f"{url}/tasks/{order}")
        expect(page.locator("#task-status")).to_have_text("suspended")
        expect(page.locator("#live-state")).to_have_text("live")
        assert event_rows(page) == ["1 wait approval:V-1"]
        mark_window(page)
        with database.pool.connection() as conn:
            push_event(conn, "approval:V-1", {"approved": True, "by": "ada"})
        expect(page.locator("#task-status")).to_have_text("completed")
        assert event_rows(page) == [
            "1 wait approval:V-1",
            "2 child charge_payment",
            "3 child send_confirmation_email",
        ]
        expect(page.locator("#timeline")).to_contain_text("ended by external event")
        expect(page.locator("#task-output")).to_contain_text('"status": "confirmed"')
        expect(page.locator("#children li[data-task]")).to_have_count(2)
        assert_not_reloaded(page)
        update = os.environ.get("UPDATE_VIEWER_SCREENSHOT") == "1"
        page.screenshot(
            path=README_SCREENSHOT if update else tmp_path / "viewer.png", full_page=True
        )


def test_a_fork_appears_in_the_tree_with_its_fork_point_and_an_operation_is_refused_in_words(
    database: LessonDatabase, page: Page
) -> None:
    """With operations allowed, the task page's fork form forks a finished order at
    event 3: the history tool's own lines say so, and the fork tree shows the fork
    with its fork point; a fork of a fork shows under it. A fork at an event the
    history does not have is refused with the history tool's words, and nothing is
    made."""
    with worker_process(database) as worker:
        worker.start()
        order = enqueue_task(
            database, "process_order", {**ORDER, "approval_timeout": 0.01}, durable=True
        )
        wait_for_task(database.pool, order)
        with database.pool.connection() as conn:
            nested = fork(conn, order, at_event=1).id
        wait_for_task(database.pool, nested)
        with database.pool.connection() as conn:
            fork(conn, nested, at_event=1)
    with viewer(database, allow_operations=True) as url:
        page.goto(f"{url}/tasks/{order}")
        page.fill("input[name=at]", "99")
        page.click("button:has-text('fork')")
        expect(page.locator(".result.refusal")).to_contain_text("event 99")
        page.fill("input[name=at]", "1")
        page.click("button:has-text('fork')")
        done = page.locator(".result.done")
        expect(done).to_contain_text(f"is a fork of task {order} at event 1")
        forks = page.locator("#forks li[data-task]")
        expect(forks).to_have_count(3)
        labels = [forks.nth(index).inner_text() for index in range(3)]
        assert labels[0].startswith(f"└ fork at event 1: task {nested}")
        assert re.match(r"└ fork at event 1: task \d+", labels[1])
        assert page.locator("#forks li[data-task]").nth(1).evaluate(
            "node => getComputedStyle(node).paddingLeft"
        ) != forks.nth(0).evaluate("node => getComputedStyle(node).paddingLeft")


def test_operations_are_off_unless_the_viewer_is_started_with_them(
    database: LessonDatabase, page: Page
) -> None:
    """Read-only by default: no operation form on the page, and a POST is refused (403)."""
    task = enqueue_task(database, "echo", {"n": 1})
    with viewer(database) as url:
        page.goto(f"{url}/tasks/{task}")
        expect(page.locator("#task-status")).to_have_text("queued")
        expect(page.locator("form[method=post]")).to_have_count(0)
        response = page.request.post(f"{url}/tasks/{task}/replay")
        assert response.status == 403


def test_markup_in_a_tasks_input_and_name_is_shown_as_text(
    database: LessonDatabase, page: Page
) -> None:
    """A task whose input holds <script> and whose name is an <img onerror> shows both as
    text, on its page and in the list: neither runs."""
    script = "<script>window.injected = true</script>"
    name = "<img src=x onerror='window.injected = true'>"
    task = enqueue_task(database, name, {"note": script})
    with viewer(database) as url:
        page.goto(f"{url}/tasks/{task}")
        expect(page.locator("#task-input")).to_contain_text(script)
        expect(page.locator("h1 .name")).to_have_text(name)
        page.goto(f"{url}/tasks")
        expect(page.locator(f"tr[data-task='{task}']")).to_contain_text(name)
        page.goto(f"{url}/tasks?name={name}")
        expect(page.locator(f"tr[data-task='{task}']")).to_have_count(1)
        assert page.locator("input[name=name]").input_value() == name
        assert page.evaluate("window.injected === undefined")


def test_a_failed_task_shows_its_error(database: LessonDatabase, page: Page) -> None:
    """A task whose function raises, with no retries left, shows failed and its error's
    type and message; the list filtered by status failed shows it."""
    with worker_process(database) as worker, viewer(database) as url:
        worker.start()
        task = enqueue_task(database, "refuse", {"why": "test"}, max_retries=0)
        page.goto(f"{url}/tasks/{task}")
        expect(page.locator("#task-status")).to_have_text("failed")
        expect(page.locator("#task-error")).to_contain_text("ValueError")
        expect(page.locator("#task-error")).to_contain_text("refused")
        page.goto(f"{url}/tasks?status=failed")
        expect(page.locator("tr[data-task]")).to_have_count(1)


def test_the_page_follows_a_task_whose_worker_is_killed_mid_run(
    database: LessonDatabase, page: Page, tmp_path: Path
) -> None:
    """An order runs its first step on worker A, which is SIGKILLed there. Without a
    reload the task page shows it taken over by worker B, at attempt 2 (the
    timeline says attempt 1 ended without finishing), the overview shows A lost,
    and once the step's gate opens the order completes on B, every event at
    attempt 2."""
    gate = str(tmp_path / "gate")
    order_input = {**ORDER, "gate": gate}
    with worker_process(database) as first, worker_process(database) as second:
        first_id = first.start()
        order = enqueue_task(database, "order_at_gate", order_input, durable=True)
        wait_until(lambda: Path(arrival_file(gate, "V-1")).exists(), message="never at the gate")
        with viewer(database) as url:
            page.goto(f"{url}/tasks/{order}")
            expect(page.locator("#task-status")).to_have_text("running")
            expect(page.locator("#live")).to_contain_text(f"on worker {first_id}")
            mark_window(page)
            Path(arrival_file(gate, "V-1")).unlink()
            first.kill()
            second_id = second.start()
            taken_over = f"running attempt 2 on worker {second_id}"
            expect(page.locator("#live")).to_contain_text(taken_over)
            wait_until(lambda: Path(arrival_file(gate, "V-1")).exists(), message="B never ran it")
            Path(gate).touch()
            expect(page.locator("#task-status")).to_have_text("completed")
            expect(page.locator("#timeline")).to_contain_text("attempt 2")
            attempts = page.locator("#timeline li.event .meta").all_inner_texts()
            assert len(attempts) == 3 and all(text.startswith("attempt 2 ") for text in attempts)
            assert_not_reloaded(page)
            page.goto(f"{url}/")
            expect(page.locator(f"tr[data-worker='{first_id}'] .state")).to_have_text("lost")
            expect(page.locator(f"tr[data-worker='{second_id}'] .state")).to_have_text("alive")
