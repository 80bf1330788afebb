"""Where the pages read: a read-only pool, made again after the database was out of reach,
and what a failed read says on the page.

psycopg's pool reconnects by itself, but each failed attempt doubles the wait
before the next (1 s, 2 s, 4 s... for up to five minutes): a viewer left open
through a 70 s outage had not come back 150 s after the database had. A page
should come back within a poll of the database's return, so a read that finds
the database out of reach closes the pool, and the next read makes a new one,
which connects at once (or says at once that it cannot).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from lessons.common.database import DatabaseUnavailable, create_pool

from .lessons import ViewedLesson

# How long a read waits for a connection: a page says it is offline after that.
READ_TIMEOUT_SECONDS = 5.0

# The errors of a schema that does not hold the lesson's tables: never made (its
# main.py never ran), or made by another lesson (a --schema of an earlier one).
NOT_THE_LESSONS_TABLES = (
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedColumn,
    psycopg.errors.UndefinedFunction,
    psycopg.errors.UndefinedObject,
)

Value = TypeVar("Value")


class ReadFailed(Exception):
    """A read the pages could not make; the message says why, in one line, for the page."""


class ReadPool:
    """The pages' read-only connections to the lesson's schema."""

    def __init__(self, lesson: ViewedLesson, url: str) -> None:
        self.lesson = lesson
        self.url = url
        self._lock = threading.Lock()
        self._pool: ConnectionPool | None = None
        self._closed = False

    def open(self) -> None:
        """Connect now: a wrong URL fails at start-up, not on the first page."""
        with self._lock:
            self._pool = self._new_pool()

    def close(self) -> None:
        with self._lock:
            pool, self._pool, self._closed = self._pool, None, True
        if pool is not None:
            pool.close()

    def read(self, read: Callable[[psycopg.Connection[Any]], Value]) -> Value:
        """`read` on one of the pool's connections; ReadFailed when it cannot be done."""
        pool = self._current_pool()
        try:
            with pool.connection(timeout=READ_TIMEOUT_SECONDS) as conn:
                return read(conn)
        except NOT_THE_LESSONS_TABLES as error:
            number = f"{self.lesson.number:02d}"
            raise ReadFailed(
                f"schema {self.lesson.schema} does not hold lesson {number}'s tables "
                f"({first_line(error)}): run this lesson's main.py first "
                f"(make lesson N={number}); this page comes back by itself once it has"
            ) from error
        except psycopg.OperationalError as error:
            self._discard(pool)
            raise out_of_reach(error) from error
        except psycopg.Error as error:
            raise ReadFailed(f"the database refused the read ({first_line(error)})") from error

    def _current_pool(self) -> ConnectionPool:
        with self._lock:
            if self._closed:
                raise ReadFailed("the viewer is stopping")
            if self._pool is None:
                try:
                    self._pool = self._new_pool()
                except DatabaseUnavailable as error:
                    # The driver's reason, without the advice for a first start (which
                    # can be to delete the embedded server's data): here it ran before.
                    raise out_of_reach(error.__cause__ or error) from error
                except psycopg.OperationalError as error:
                    raise out_of_reach(error) from error
            return self._pool

    def _new_pool(self) -> ConnectionPool:
        # create_pool tries one direct connection first: it fails at once, in words.
        return create_pool(self.lesson.schema, url=self.url, name="viewer", read_only=True)

    def _discard(self, pool: ConnectionPool) -> None:
        """Close `pool`, unless another read has put a new one in its place already."""
        with self._lock:
            if self._pool is not pool:
                return
            self._pool = None
        # Its connections in use are closed as they come back; a read waiting for one
        # gets PoolClosed, and says offline too.
        pool.close()


def out_of_reach(error: BaseException) -> ReadFailed:
    return ReadFailed(f"the database is out of reach ({first_line(error)})")


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
