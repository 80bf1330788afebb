"""A real browser for the viewer's tests: the system's Chromium driven by Playwright, and
the app under test served by uvicorn on this machine's loopback.

The browser is Debian's `chromium` (CI installs it when it is missing), never a build of
Playwright's own: `playwright install` downloads one, and downloads are not to be had here.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import uvicorn
from playwright.sync_api import Browser, Page, expect, sync_playwright
from starlette.types import ASGIApp

from tests.waiting import wait_until

DEFAULT_CHROMIUM = "/usr/bin/chromium"

# Headless on a machine with no GPU, no display and no network but the loopback: root
# cannot use Chromium's sandbox, and every flag after --disable-gpu stops a request the
# browser would make on its own (to Google's services) and that could only fail here.
CHROMIUM_ARGUMENTS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# For every wait and action of a page: generous, since a loaded machine starts pages slowly,
# but short of pytest's patience, so that a page that never shows what it should fails.
PAGE_TIMEOUT_MILLISECONDS = 15_000
expect.set_options(timeout=PAGE_TIMEOUT_MILLISECONDS)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """One Chromium for the session; VIEWER_CHROMIUM names another binary than Debian's."""
    executable = os.environ.get("VIEWER_CHROMIUM", DEFAULT_CHROMIUM)
    if not os.access(executable, os.X_OK):
        pytest.skip(
            f"no Chromium at {executable}: `apt-get install chromium` (Debian's package), "
            "or set VIEWER_CHROMIUM to a Chromium binary"
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGUMENTS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page in a context of its own: no cookie or storage of one test reaches the next."""
    context = browser.new_context()
    context.set_default_timeout(PAGE_TIMEOUT_MILLISECONDS)
    try:
        yield context.new_page()
    finally:
        context.close()


@contextmanager
def serve_on_free_port(app: ASGIApp) -> Iterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 in a background thread; yield its base URL.

    The socket is bound here, on a port the kernel picks, and handed to uvicorn, so no other
    process can take the port between choosing it and listening on it.
    """
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listening.bind(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [listening]}, name="uvicorn", daemon=True
    )
    thread.start()
    try:
        # A server that failed to start ends its thread: stop waiting then, not at the deadline.
        wait_until(
            lambda: server.started or not thread.is_alive(),
            timeout=20.0,
            message="uvicorn did not start",
        )
        if not server.started:
            raise RuntimeError("uvicorn stopped before it started serving (its log says why)")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20.0)
        listening.close()


@contextmanager
def serve_viewer(
    number: int, schema: str, url: str, *, allow_operations: bool = False
) -> Iterator[str]:
    """The viewer of lesson `number` in `schema`, polling every 0.2 s; yields its base URL."""
    # Imported here: the harness's own test needs no viewer.
    from viewer.app import ViewerSettings, create_app
    from viewer.lessons import view_lesson

    settings = ViewerSettings(
        lesson=view_lesson(number, schema),
        url=url,
        poll_interval=0.2,
        allow_operations=allow_operations,
    )
    app = create_app(settings)
    with serve_on_free_port(app) as base_url:
        try:
            yield base_url
        finally:
            app.state.viewer.stop_streams()


def open_live(page: Page, url: str) -> None:
    """Open `url` and wait until the stream has replaced its live part once: what the test
    reads then went through the page's script, not only through the server's page."""
    page.add_init_script(
        "window.liveUpdates = 0;"
        "document.addEventListener('DOMContentLoaded', () => new MutationObserver("
        "() => { window.liveUpdates += 1; }).observe(document.getElementById('live'),"
        " {childList: true}));"
    )
    page.goto(url)
    wait_until(lambda: page.evaluate("window.liveUpdates > 0"), message=f"{url} never went live")
