"""The viewer's web application: pages, their live streams, and the operations.

Each page is one URL. Asked for HTML, it answers the whole page; asked for
`text/event-stream` (what the page's EventSource asks for), it streams the
page's live part again each time it changes, so the page updates without a
reload. Reads run on a read-only pool; the operations (replay, fork, cancel),
offered only when the viewer was started with them allowed, call the lesson's
own history tool on a connection of their own.

Safe by default: it answers only requests addressed to 127.0.0.1 or localhost
(a page elsewhere cannot reach it by a DNS name that points here), refuses an
operation or a live stream asked for by a page of another origin, lets no page
elsewhere frame it (where its buttons could be clicked through a decoy), escapes
every value it shows (inputs and outputs are user data), runs no script but its
own (the escaping's second line), and builds no SQL from a request: every read
is a generated query with the request's values as parameters.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import psycopg
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lessons.common.database import connect

from .additions import read_overview_additions, read_task_additions
from .lessons import ViewedLesson
from .live import ChangeFeed, wait_for_change
from .operations import Operations
from .pages import (
    MAX_TASKS_LISTED,
    MAX_TREE_NODES,
    STATUSES,
    TaskFilters,
    clock,
    pretty_json,
    read_overview,
    read_task,
    read_tasks,
)
from .reading import ReadFailed, ReadPool

HERE = Path(__file__).parent

# The host names the viewer answers to: it listens on 127.0.0.1 only.
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

# A page's live part, read again at each notification and at least this often.
DEFAULT_POLL_SECONDS = 1.0

# And at most this often: a burst of enqueues notifies once a task, and each
# notification would otherwise read every open page again at once.
MIN_SECONDS_BETWEEN_READS = 0.25

# Every answer's: no page elsewhere may frame the viewer (X-Frame-Options for
# browsers without frame-ancestors), and no script runs but viewer.js, so that a
# value the escaping missed could not run either. Inline styles stay allowed:
# the trees indent by a style attribute.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; "
        b"form-action 'self'; base-uri 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
]

# Server-sent events end a line at CR, LF or CRLF, and only there (str.splitlines
# would also split at U+2028 and the like, which an input may hold).
EVENT_STREAM_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class ViewerSettings:
    lesson: ViewedLesson
    url: str
    poll_interval: float = DEFAULT_POLL_SECONDS
    allow_operations: bool = False


# What a page reads: a function of a connection, returning the template's values.
Read = Callable[[psycopg.Connection[Any]], dict[str, Any]]


class Viewer:
    """The application's state: settings, the read-only pool, the change feed."""

    def __init__(self, settings: ViewerSettings) -> None:
        self.settings = settings
        self.lesson = settings.lesson
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.globals.update(clock=clock, pretty_json=pretty_json, lesson=self.lesson)
        self.templates.globals.update(
            max_tasks_listed=MAX_TASKS_LISTED, max_tree_nodes=MAX_TREE_NODES
        )
        self.templates.globals["operations_allowed"] = settings.allow_operations
        self.templates.globals["statuses"] = self.statuses
        channels = [f"{self.lesson.schema}.task_queued"]
        if self.lesson.has("cancellation"):
            channels.append(f"{self.lesson.schema}.task_cancelled")
        self.feed = ChangeFeed(settings.url, channels)
        self.operations = Operations(settings.lesson, self.write_connection)
        self.reads = ReadPool(self.lesson, settings.url)
        # Set when the server stops: the live streams end (a stream never ends by itself,
        # and a server waits for its responses to end before it stops).
        self._stopping = threading.Event()

    @property
    def statuses(self) -> list[str]:
        return [*STATUSES, *(["cancelled"] if self.lesson.has("cancellation") else [])]

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(self.reads.open)
        self.feed.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            self._stopping.set()
            self.feed.stop()
            self.reads.close()

    def stop_streams(self) -> None:
        """End every live stream within a poll interval: call it before stopping the server."""
        self._stopping.set()

    def write_connection(self) -> psycopg.Connection[Any]:
        """A connection that may write, for one operation."""
        return connect(self.settings.url, schema=self.lesson.schema)

    def render(self, template: str, values: dict[str, Any]) -> str:
        return self.templates.get_template(template).render(**values)

    async def page(self, request: Request, name: str, read: Read, **values: Any) -> Response:
        """The page `name` (templates name.html, with its live part name_live.html),
        or, for an EventSource, the stream of its live part."""
        if request.headers.get("accept") == "text/event-stream":
            # A page elsewhere could not read the stream, but would keep it reading.
            if from_another_origin(request):
                return self.error_page(403, "a live stream is for the viewer's own pages")
            return StreamingResponse(
                self.live_stream(request, f"{name}_live.html", read),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-store"},
            )
        # The page's own address, which its script streams from: an operation's
        # answer (a POST to another address) names the task page's.
        query = f"?{request.url.query}" if request.url.query else ""
        values.setdefault("live_url", request.url.path + query)
        try:
            read_values = await run_in_threadpool(self.reads.read, read)
        except ReadFailed as failure:
            # Live all the same: the page loads again once its read succeeds.
            return self.error_page(503, str(failure), live_url=values["live_url"])
        if read_values.get("missing"):
            return self.error_page(404, read_values["missing"])
        html = self.render(f"{name}.html", {"request": request, **values, **read_values})
        return HTMLResponse(html)

    async def live_stream(self, request: Request, template: str, read: Read) -> AsyncIterator[str]:
        changed = self.feed.subscribe()
        last = ""
        try:
            while not self._stopping.is_set():
                try:
                    values = await run_in_threadpool(self.reads.read, read)
                    fragment = self.render(template, {"request": request, **values})
                    event = "update"
                except ReadFailed as failure:
                    fragment = f"{failure}: trying again"
                    event = "offline"
                if fragment != last:
                    yield server_sent_event(event, fragment)
                    last = fragment
                # Notifications that come meanwhile are kept: they end the wait at once.
                await asyncio.sleep(MIN_SECONDS_BETWEEN_READS)
                await wait_for_change(
                    changed, max(0.0, self.settings.poll_interval - MIN_SECONDS_BETWEEN_READS)
                )
        finally:
            self.feed.unsubscribe(changed)

    def error_page(self, status: int, message: str, *, live_url: str = "") -> HTMLResponse:
        """A page that says what went wrong; with `live_url` (the page's own address),
        one that streams from there, and loads the page again once a read succeeds."""
        values = {"status": status, "message": message, "live_url": live_url}
        html = self.render("error.html", {**values, "reload_when_live": bool(live_url)})
        return HTMLResponse(html, status_code=status)


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every answer, streams included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def server_sent_event(event: str, data: str) -> str:
    """One server-sent event; each line of `data` is a `data:` line."""
    lines = "".join(f"data: {line}\n" for line in EVENT_STREAM_LINE_END.split(data))
    return f"event: {event}\n{lines}\n"


def create_app(settings: ViewerSettings) -> Starlette:
    viewer = Viewer(settings)

    async def overview(request: Request) -> Response:
        return await viewer.page(
            request,
            "overview",
            lambda conn: {
                "overview": read_overview(conn),
                "additions": read_overview_additions(conn, viewer.lesson),
            },
        )

    async def tasks(request: Request) -> Response:
        try:
            filters = TaskFilters.from_query(dict(request.query_params), viewer.statuses)
        except ValueError as error:
            return viewer.error_page(400, str(error))
        return await viewer.page(
            request,
            "tasks",
            lambda conn: {"tasks": read_tasks(conn, filters)},
            filters=filters,
            statuses=viewer.statuses,
        )

    async def task(request: Request) -> Response:
        task_id = request.path_params["task_id"]
        return await viewer.page(
            request,
            "task",
            lambda conn: task_values(conn, viewer.lesson, task_id),
            task_id=task_id,
            result=None,
        )

    async def operate(request: Request) -> Response:
        task_id = request.path_params["task_id"]
        operation = request.path_params["operation"]
        if not settings.allow_operations:
            return viewer.error_page(
                403, "operations are off: start the viewer with --allow-operations"
            )
        if from_another_origin(request):
            return viewer.error_page(403, "an operation must come from the viewer's own pages")
        form = await request.form()
        result = await run_in_threadpool(
            viewer.operations.run, operation, task_id, {k: str(v) for k, v in form.items()}
        )
        return await viewer.page(
            request,
            "task",
            lambda conn: task_values(conn, viewer.lesson, task_id),
            task_id=task_id,
            result=result,
            live_url=f"/tasks/{task_id}",
        )

    async def not_found(request: Request, exc: Exception) -> Response:
        return viewer.error_page(404, f"the viewer has no page at {request.url.path}")

    routes = [
        Route("/", overview),
        Route("/tasks", tasks),
        Route("/tasks/{task_id:int}", task),
        Route("/tasks/{task_id:int}/{operation:str}", operate, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=viewer.lifespan,
        middleware=[
            Middleware(TrustedHostMiddleware, allowed_hosts=ALLOWED_HOSTS),
            Middleware(SecurityHeaders),
        ],
        exception_handlers={404: not_found},
    )
    app.state.viewer = viewer
    return app


def task_values(
    conn: psycopg.Connection[Any], lesson: ViewedLesson, task_id: int
) -> dict[str, Any]:
    page = read_task(conn, task_id)
    if page is None:
        return {
            "missing": f"there is no task {task_id} (never made, or removed by retention)",
            "page": None,
            "additions": None,
        }
    return {"missing": None, "page": page, "additions": read_task_additions(conn, lesson, task_id)}


def from_another_origin(request: Request) -> bool:
    """Whether a browser sent the request from a page of another origin (it names the
    page's origin in Origin on every POST, and on a cross-origin EventSource)."""
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    return request.headers.get("origin") not in (None, own)
