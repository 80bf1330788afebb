"""The harness's own proof: a real Chromium loads a page served by uvicorn, runs its
script on a click, and receives server-sent events, as the viewer's pages will."""

from __future__ import annotations

from collections.abc import AsyncIterator

from playwright.sync_api import Page
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, StreamingResponse
from starlette.routing import Route

from tests.viewer.conftest import serve_on_free_port

# The page closes its EventSource after the second message: a stream that ends is otherwise
# reconnected to, and the two messages would come again.
PAGE = """<!doctype html>
<button id="change">Change</button>
<p id="text">before</p>
<script>
  document.getElementById("change").addEventListener("click", () => {
    document.getElementById("text").textContent = "after";
  });
  window.received = [];
  const source = new EventSource("/events");
  source.onmessage = (event) => {
    window.received.push(event.data);
    if (window.received.length === 2) source.close();
  };
</script>
"""


async def home(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE)


async def events(request: Request) -> StreamingResponse:
    async def messages() -> AsyncIterator[str]:
        yield "data: first\n\n"
        yield "data: second\n\n"

    return StreamingResponse(messages(), media_type="text/event-stream")


def test_a_click_runs_the_page_script_and_an_event_source_receives_both_messages(
    page: Page,
) -> None:
    app = Starlette(routes=[Route("/", home), Route("/events", events)])
    with serve_on_free_port(app) as base_url:
        page.goto(base_url)
        page.click("#change")
        assert page.text_content("#text") == "after"
        page.wait_for_function("window.received.length === 2")
        assert page.evaluate("window.received") == ["first", "second"]
