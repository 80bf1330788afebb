"""The viewer is safe by default: what a page elsewhere, a forged request or a task's
own data can make it do.

A request addressed to another host name is refused (a DNS name pointed at
127.0.0.1 reaches no page); an operation posted from another origin, by a real
form in Chromium on a page of another server, is refused and changes nothing; no
page elsewhere can frame the viewer; a filter's value is a query parameter, never
SQL; and markup in every place a task's data reaches a page, on lesson 15's
schema (which shows them all), is shown as text on the page and in its live
updates, and makes no element.
"""

from __future__ import annotations

import http.client
import importlib
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from playwright.sync_api import Browser, Page, expect
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from lessons.lesson11_retries_replays_forks.engine.client import enqueue, wait_for_task
from lessons.lesson11_retries_replays_forks.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.viewer.conftest import open_live, serve_on_free_port, serve_viewer
from tests.waiting import wait_until

LESSON_11 = "lesson11_retries_replays_forks"
LESSON_15 = "lesson15_operating_at_scale"

ORDER = {"order_id": "S-1", "card": "4242", "amount_cents": 4200, "email": "ada@example.org"}


def markup(place: str) -> str:
    """Markup that would make an element, and run a handler, if it were not escaped."""
    # Single quotes only: JSON shows them as they are (a double quote gets a backslash).
    return f"<img src=x alt={place} onerror='window.injected = 1'>"


def request(
    base_url: str, method: str, path: str, headers: dict[str, str], body: str = ""
) -> http.client.HTTPResponse:
    """One request with exactly these headers (a browser would not send a foreign Host)."""
    address = urlsplit(base_url)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=20)
    connection.request(method, path, body=body or None, headers=headers)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


@contextmanager
def other_site(viewer_url: str, task_id: int) -> Iterator[str]:
    """A page of another server, another origin: two forms that post the viewer's
    operations on `task_id`, and a frame of its task page."""
    target = f"{viewer_url}/tasks/{task_id}"

    async def decoy(request: Request) -> HTMLResponse:
        return HTMLResponse(
            f"""<!doctype html><title>decoy</title>
            <form id="replay" method="post" action="{target}/replay"><button>win</button></form>
            <form id="fork" method="post" action="{target}/fork">
              <input name="at" value="1"><button>win too</button></form>
            <iframe id="framed" src="{target}" onload="window.framedLoaded = true"></iframe>"""
        )

    with serve_on_free_port(Starlette(routes=[Route("/", decoy)])) as url:
        yield url


@pytest.fixture
def lesson11(lesson_database: Any) -> LessonDatabase:
    database: LessonDatabase = lesson_database(LESSON_11)
    return database


@pytest.fixture
def lesson15(lesson_database: Any) -> LessonDatabase:
    database: LessonDatabase = lesson_database(LESSON_15)
    return database


def finished_order(database: LessonDatabase) -> int:
    """A durable order that completed (its approval timed out): one a replay or fork takes."""
    with WorkerProcess(
        schema=database.schema,
        queues=["orders"],
        functions="tests.lesson11.functions",
        poll_interval=0.05,
        environment={"DATABASE_URL": database.url},
    ) as worker:
        worker.start()
        with database.pool.connection() as conn:
            order = enqueue(
                conn,
                "process_order",
                {**ORDER, "approval_timeout": 0.01},
                queue="orders",
                durable=True,
            )
        wait_for_task(database.pool, order)
    return order


def test_a_request_for_another_host_name_is_refused(lesson11: LessonDatabase) -> None:
    """Host: evil.example (what a browser sends after a DNS rebinding) gets 400 on a
    page, on a live stream and on an operation; 127.0.0.1 and localhost are served,
    but not a live stream asked for by a page of another origin (403)."""
    with serve_viewer(11, lesson11.schema, lesson11.url, allow_operations=True) as url:
        port = urlsplit(url).port
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}"):
            assert request(url, "GET", "/", {"Host": host}).status == 400
            stream = {"Host": host, "Accept": "text/event-stream"}
            assert request(url, "GET", "/tasks", stream).status == 400
            assert request(url, "POST", "/tasks/1/replay", {"Host": host}).status == 400
        for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
            assert request(url, "GET", "/", {"Host": host}).status == 200
        # The right host, from a page elsewhere: a stream it could not read is not started.
        foreign = {"Accept": "text/event-stream", "Origin": "http://evil.example"}
        assert request(url, "GET", "/", {"Host": f"127.0.0.1:{port}", **foreign}).status == 403


def test_an_operation_posted_from_another_site_is_refused_and_changes_nothing(
    lesson11: LessonDatabase, page: Page
) -> None:
    """With operations allowed, a page of another server posts the viewer's replay and
    fork forms in Chromium (the browser sends its own Origin): both get 403, the task
    is as it was and no fork is made. Its frame of the viewer's task page is refused
    by the browser: no page elsewhere can put the viewer's buttons under a decoy."""
    order = finished_order(lesson11)

    def state() -> tuple[Any, ...]:
        with lesson11.pool.connection() as conn:
            row = conn.execute(
                "SELECT status, attempt, attempts_before_replay,"
                " (SELECT count(*) FROM tasks), (SELECT count(*) FROM task_events)"
                " FROM tasks WHERE id = %s",
                (order,),
            ).fetchone()
        assert row is not None
        return tuple(row)

    before = state()
    with (
        serve_viewer(11, lesson11.schema, lesson11.url, allow_operations=True) as url,
        other_site(url, order) as decoy,
    ):
        for form in ("replay", "fork"):
            page.goto(decoy)
            with page.expect_response(f"{url}/tasks/{order}/{form}") as answer:
                page.click(f"#{form} button")
            assert answer.value.status == 403
            expect(page.locator("#live [role=alert]")).to_contain_text("the viewer's own pages")
        page.goto(decoy)
        page.wait_for_function("window.framedLoaded === true")
        framed = page.frame_locator("#framed")
        expect(framed.locator("body")).not_to_contain_text("process_order")
        assert framed.locator("#live").count() == 0
        # Without an Origin (not a browser's form), or with another, a POST changes nothing.
        headers = {
            "Origin": "http://evil.example",
            "Content-Type": "application/x-www-form-urlencoded",
        }
        assert request(url, "POST", f"/tasks/{order}/fork", headers, "at=1").status == 403
        assert request(url, "POST", f"/tasks/{order}/replay", {"Origin": "null"}).status == 403
    assert state() == before


def test_every_answer_forbids_frames_and_scripts_but_the_viewers_own(
    lesson11: LessonDatabase,
) -> None:
    """Pages, error pages and streams say no page elsewhere may frame them, and that no
    script but the viewer's own file may run on them."""
    with serve_viewer(11, lesson11.schema, lesson11.url) as url:
        host = {"Host": urlsplit(url).netloc}
        for path, headers in (
            ("/", host),
            ("/tasks?status=bogus", host),
            ("/tasks/12345", host),
            ("/no-such-page", host),
        ):
            response = request(url, "GET", path, headers)
            policy = response.getheader("content-security-policy") or ""
            assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy, path
            assert response.getheader("x-frame-options") == "DENY", path


def test_a_filter_is_a_value_never_sql(lesson11: LessonDatabase, page: Page) -> None:
    """Filters that would change a query built from them match nothing (they are query
    parameters, compared as text), and the tasks are all still there; a status the
    list does not know is a 400 that says which there are."""
    with lesson11.pool.connection() as conn:
        task = enqueue(conn, "echo", {"n": 1}, queue="orders")
    with serve_viewer(11, lesson11.schema, lesson11.url) as url:
        for query in (
            "name=' OR ''='",
            "queue=orders' OR '1'='1",
            f"name={quote('echo; DROP TABLE tasks; --')}",
            "queue=orders&name=echo' --",
        ):
            page.goto(f"{url}/tasks?{query}")
            expect(page.locator("#live")).to_contain_text("No task matches.")
        page.goto(f"{url}/tasks?queue=orders&name=echo")
        expect(page.locator(f"tr[data-task='{task}']")).to_have_count(1)
        response = page.goto(f"{url}/tasks?status={quote('queued OR 1=1')}")
        assert response is not None and response.status == 400
        expect(page.locator("#live [role=alert]")).to_contain_text(
            "no status 'queued OR 1=1': choose one of queued, running"
        )


def assert_no_markup_ran(page: Page) -> None:
    assert page.locator("#live img, #live script, .result img").count() == 0
    assert page.evaluate("window.injected === undefined")


def test_markup_in_every_place_a_later_lesson_shows_is_text(
    lesson15: LessonDatabase, browser: Browser
) -> None:
    """On lesson 15's schema, markup in a concurrency key, a rate limit's, a schedule's
    and a task's names, a queue, an idempotency key, a code version, a step's name, a
    wait's key, an input, an output, a received event, an error message, and the who
    and why of a cancellation made from the page's own form: each shows as text, on
    its page and after the page's live updates, and no element is made of it. The
    browser ignores the viewer's script policy here: the escaping alone must hold."""
    client = importlib.import_module(f"lessons.{LESSON_15}.engine.client")
    tools = importlib.import_module(f"lessons.{LESSON_15}.tools.worker_process")
    schedule_task, queue, task_name = markup("schedule-task"), markup("queue"), markup("name")
    with lesson15.pool.connection() as conn:
        client.set_concurrency_limit(conn, "default", 2)
        client.set_rate_limit(conn, markup("rate-limit"), 5, 60.0)
        client.set_schedule(conn, markup("schedule"), schedule_task, {}, every=3600.0)
        waiting = {"step": markup("step"), "key": markup("key"), "note": markup("input")}
        cancelled = client.enqueue(
            conn,
            "named_step_then_wait",
            waiting,
            durable=True,
            concurrency_key=markup("concurrency-key"),
            idempotency_key=markup("idempotency-key"),
        )
        answered = client.enqueue(
            conn, "named_step_then_wait", {**waiting, "key": "answer"}, durable=True
        )
        failed = client.enqueue(conn, "refuse", {"why": markup("error")}, max_retries=0)
        never_run = client.enqueue(conn, task_name, {}, queue=queue)
    version = "<img/src=x/alt=version>"  # the worker's ready line reads it up to a space
    with (
        tools.WorkerProcess(
            schema=lesson15.schema,
            functions="tests.viewer.functions_lesson15",
            slots=4,
            poll_interval=0.05,
            heartbeat_interval=0.1,
            code_version=version,
            environment={"DATABASE_URL": lesson15.url},
        ) as worker,
        serve_viewer(15, lesson15.schema, lesson15.url, allow_operations=True) as url,
        closing(browser.new_context(bypass_csp=True)) as context,
    ):
        page = context.new_page()
        worker.start()

        def status(task_id: int) -> str:
            with lesson15.pool.connection() as conn:
                row = conn.execute("SELECT status FROM tasks WHERE id = %s", (task_id,)).fetchone()
            return str(row[0]) if row else "gone"

        wait_until(lambda: status(cancelled) == "suspended" and status(answered) == "suspended")
        with lesson15.pool.connection() as conn:
            client.push_event(conn, "answer", {"said": markup("payload")})
        wait_until(lambda: status(answered) == "completed" and status(failed) == "failed")

        open_live(page, f"{url}/")
        for place in ("concurrency-key", "rate-limit", "schedule", "schedule-task", "queue"):
            expect(page.locator("#live")).to_contain_text(markup(place))
        expect(page.locator(f"tr[data-worker='{worker.ids[0]}'] .version")).to_have_text(version)
        assert_no_markup_ran(page)

        open_live(page, f"{url}/tasks")
        expect(page.locator(f"tr[data-task='{never_run}']")).to_contain_text(task_name)
        assert_no_markup_ran(page)

        open_live(page, f"{url}/tasks/{cancelled}")
        page.fill("input[name=by]", markup("by"))
        page.fill("input[name=reason]", markup("reason"))
        page.click("button:has-text('cancel')")
        expect(page.locator("#task-status")).to_have_text("cancelled")
        cancellation = page.locator("#task-cancellation")
        expect(cancellation).to_contain_text(markup("by"))
        expect(cancellation).to_contain_text(markup("reason"))
        for place in ("concurrency-key", "idempotency-key", "step", "key", "input"):
            expect(page.locator("#live")).to_contain_text(markup(place))
        expect(page.locator("#timeline")).to_contain_text(f"waits for {markup('key')!r}")
        expect(page.locator("#task-version")).to_have_text(version)
        assert_no_markup_ran(page)

        open_live(page, f"{url}/tasks/{answered}")
        expect(page.locator("#task-output")).to_contain_text(markup("payload"))
        expect(page.locator("#timeline li.kind-wait")).to_contain_text(markup("payload"))
        assert_no_markup_ran(page)

        open_live(page, f"{url}/tasks/{failed}")
        expect(page.locator("#task-error")).to_contain_text(markup("error"))
        assert_no_markup_ran(page)

        # The history tool's refusal names the task: a fork of a task that never ran.
        open_live(page, f"{url}/tasks/{never_run}")
        page.fill("input[name=at]", "1")
        page.click("button:has-text('fork')")
        expect(page.locator(".result.refusal")).to_contain_text(task_name)
        assert_no_markup_ran(page)

        for path in (f"/tasks?status={quote(markup('status'))}", f"/{quote(markup('path'))}"):
            page.goto(f"{url}{path}")
            expect(page.locator("#live [role=alert]")).to_contain_text("<img src=x alt=")
            assert_no_markup_ran(page)
