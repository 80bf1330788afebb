"""When to look again: the engine's notifications at once, a poll in any case.

The engine NOTIFYs when a task is queued (enqueued, retried, reassigned, or a
suspended task given a new wake-up time) and, from lesson 13 on, when one is
cancelled. A page that listens to those changes as soon as they commit. Other
changes (a step recorded, a task completed) send no notification: the engine
does not pay a NOTIFY on its hot path for a viewer that may not be open (each
one takes the server's commit lock: lesson 15 measured the cost). So each
live page also looks again every `poll_interval` seconds, and that poll is the
fallback for everything, a lost LISTEN connection included.

One thread holds the LISTEN connection; each page's stream, on the event
loop, waits on an asyncio.Event of its own, which the thread sets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence

import psycopg
from psycopg import sql

from .reading import first_line

log = logging.getLogger(__name__)

# How long the listener waits between two attempts to connect again.
RECONNECT_SECONDS = 1.0


class ChangeFeed:
    """Wakes the live pages when the engine notifies a change."""

    def __init__(self, url: str, channels: Sequence[str]) -> None:
        self.url = url
        self.channels = list(channels)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribers: set[asyncio.Event] = set()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="viewer-listener", daemon=True)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)

    def subscribe(self) -> asyncio.Event:
        """An event set at each notification, for one stream to wait on and clear."""
        changed = asyncio.Event()
        self._subscribers.add(changed)
        return changed

    def unsubscribe(self, changed: asyncio.Event) -> None:
        self._subscribers.discard(changed)

    def _listen(self) -> None:
        # Whether the last attempt listened: an outage is logged once, not at every try.
        listened = True
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=2) as conn:
                    for channel in self.channels:
                        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    if not listened:
                        log.warning("viewer: listening again")
                    listened = True
                    while not self._stopping.is_set():
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            self._notify_pages()
            except psycopg.Error as error:
                # The pages go on polling; the listener tries again.
                if listened:
                    log.warning(
                        "viewer: listening stopped (%s); polling meanwhile", first_line(error)
                    )
                listened = False
                self._stopping.wait(RECONNECT_SECONDS)

    def _notify_pages(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._set_all)

    def _set_all(self) -> None:
        for changed in self._subscribers:
            changed.set()


async def wait_for_change(changed: asyncio.Event, timeout: float) -> None:
    """Return when `changed` is set, or after `timeout` seconds; clear it."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(changed.wait(), timeout)
    changed.clear()
