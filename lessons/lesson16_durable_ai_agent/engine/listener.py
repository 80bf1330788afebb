"""One connection that LISTENs, on a thread of its own, and passes on what it hears.

PostgreSQL delivers a notification to every session that has run `LISTEN` on
its channel, when the transaction that sent it commits. A session only hears
while it is connected: a notification sent while the listener is reconnecting
is lost for good. So a notification is a *hint* ("there may be work"), never
the work itself, and the listener says when it has just (re)connected, so that
its owner can look for anything it missed.

The connection is a dedicated one, not a pool's:

- it is in autocommit mode: notifications are delivered between transactions,
  and a listener inside an open transaction would hear nothing until it ended;
- it is busy for as long as the worker lives, waiting for the server to speak,
  which would take a pooled connection away from everyone else for good;
- the LISTEN belongs to the session, and a pool would hand the connection to
  some other code that neither expects nor reads the notifications.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from .shared import first_line

log = logging.getLogger(__name__)

# What to do with a notification's payload.
NotificationHandler = Callable[[str], None]


class Listener:
    """LISTENs on some channels and calls a handler for each notification, until stopped.

    When its connection dies (the server restarted, someone ran
    `pg_terminate_backend`), it connects again, every `reconnect_interval`
    until it succeeds, LISTENs again, and calls `on_connected` once more.
    """

    def __init__(
        self,
        conninfo: str,
        handlers: Mapping[str, NotificationHandler],
        *,
        on_connected: Callable[[], None],
        application_name: str,
        reconnect_interval: float = 1.0,
        stop_check_interval: float = 0.1,
    ) -> None:
        self.conninfo = conninfo
        # The channels to LISTEN on, each with what to do with its payloads.
        self.handlers = dict(handlers)
        # Called after every successful (re)connection: something may have been
        # sent while nobody listened.
        self.on_connected = on_connected
        # Shown in pg_stat_activity, so that people (and tests) can find it.
        self.application_name = application_name
        self.reconnect_interval = reconnect_interval
        # Waiting for notifications holds the connection's lock, so the thread
        # wakes up this often to see whether it should stop.
        self.stop_check_interval = stop_check_interval
        # How many times the connection was lost.
        self.disconnections = 0
        self._backend_pid: int | None = None
        self._listened_once = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=application_name, daemon=True)

    @property
    def backend_pid(self) -> int | None:
        """The server process of the listening connection, or None while disconnected."""
        return self._backend_pid

    def start(self) -> None:
        self._thread.start()

    def wait_until_listening(self, timeout: float) -> bool:
        """Wait until the first LISTEN is done; False if it took longer than `timeout`."""
        return self._listened_once.wait(timeout)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                conn = self._connect()
            except psycopg.OperationalError as error:
                log.warning(
                    "%s cannot connect, trying again in %s s: %s",
                    self.application_name,
                    self.reconnect_interval,
                    first_line(error),
                )
                self._stopping.wait(self.reconnect_interval)
                continue
            try:
                with conn:
                    self._listen(conn)
                    self.on_connected()
                    self._receive(conn)
            except psycopg.Error as error:
                self._backend_pid = None
                if self._stopping.is_set():
                    return
                self.disconnections += 1
                # Wait a little: a server that is restarting would refuse us anyway.
                log.warning(
                    "%s lost its connection, reconnecting in %s s (polling covers the gap): %s",
                    self.application_name,
                    self.reconnect_interval,
                    first_line(error),
                )
                self._stopping.wait(self.reconnect_interval)
        self._backend_pid = None

    def _connect(self) -> psycopg.Connection[TupleRow]:
        return psycopg.connect(
            self.conninfo,
            autocommit=True,
            application_name=self.application_name,
            connect_timeout=10,
            # Over TCP, a peer that vanishes without closing the connection (a
            # machine powered off, a network partition) is noticed within about
            # 20 s; without keepalives the listener would wait for it forever.
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=2,
        )

    def _listen(self, conn: psycopg.Connection[TupleRow]) -> None:
        for channel in self.handlers:
            # A channel is an identifier: quoted, since ours contain a dot.
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        self._backend_pid = conn.info.backend_pid
        self._listened_once.set()
        log.info("%s listening on %s", self.application_name, ", ".join(self.handlers))

    def _receive(self, conn: psycopg.Connection[TupleRow]) -> None:
        while not self._stopping.is_set():
            # Returns after stop_check_interval when nothing arrives; raises
            # OperationalError at once when the server closes the connection.
            for notification in conn.notifies(timeout=self.stop_check_interval):
                handler = self.handlers.get(notification.channel)
                if handler is None:
                    continue
                try:
                    handler(notification.payload)
                except Exception:
                    # Anyone may NOTIFY on any channel: a payload we cannot read
                    # must not stop the listener.
                    log.exception("%s could not handle %r", self.application_name, notification)
