"""A TCP proxy between worker processes and the test's server, to take the database away.

Tests of outages need the database to vanish for everyone at once while the
server itself stays up (other tests, other schemas, the second CI server
version). Workers connect to the proxy instead of the server; `cut()` closes
every connection through it and refuses new ones, as a restart, a failover or
a broken network would look to the workers; `restore()` lets them back in.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

from psycopg.conninfo import conninfo_to_dict, make_conninfo


def upstream_address(url: str) -> tuple[int, str | tuple[str, int]]:
    """The socket family and address of the server a connection string names."""
    params = conninfo_to_dict(url)
    host = str(params.get("host") or "localhost")
    port = int(params.get("port") or 5432)
    if host.startswith("/"):
        return socket.AF_UNIX, f"{host}/.s.PGSQL.{port}"
    return socket.AF_INET, (host, port)


class DatabaseProxy:
    """Forwards TCP connections on 127.0.0.1 to the server of `url`, until cut."""

    def __init__(self, url: str) -> None:
        self.upstream_url = url
        self._family, self._upstream = upstream_address(url)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut = False
        self._closing = False
        self._accepting = threading.Thread(target=self._accept_loop, daemon=True)

    @property
    def url(self) -> str:
        """The connection string to give the workers: the server's, through the proxy."""
        port = self._listener.getsockname()[1]
        return make_conninfo(self.upstream_url, host="127.0.0.1", port=str(port))

    def start(self) -> DatabaseProxy:
        self._accepting.start()
        return self

    def cut(self) -> None:
        """Close every connection through the proxy, and refuse new ones until `restore()`."""
        with self._lock:
            self._cut = True
            for sock in self._open:
                _close(sock)
            self._open.clear()

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._closing = True
        self.cut()
        _close(self._listener)
        self._accepting.join(timeout=5)

    def __enter__(self) -> DatabaseProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                refused = self._cut
            if refused:
                _close(client)
                continue
            try:
                server = socket.socket(self._family, socket.SOCK_STREAM)
                server.connect(self._upstream)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._open.update((client, server))
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(source, target), daemon=True).start()


def _pump(source: socket.socket, target: socket.socket) -> None:
    """Copy bytes one way until either side closes; then close both."""
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    _close(source)
    _close(target)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
