"""Deleting finished work: what each row costs, with and without indexes on the foreign keys.

A PostgreSQL foreign key is checked on the referencing side's index, if there is one:
deleting a row of `tasks` runs, for each foreign key that points at `tasks`, the query
`SELECT 1 FROM <referencing table> WHERE <column> = <the deleted id> FOR KEY SHARE`
(PostgreSQL's ri_triggers.c), once per deleted row. Without an index on the column it is
a sequential scan of the whole referencing table, per row deleted: a retention job that
deletes a thousand trees scans the table thousands of times.

`DeleteTrees` builds a table of finished orders, each a tree as lesson 14's shop leaves
it (a durable parent, completed; its two children, completed; the parent's history of
three events, a child, a wait for an external event and a child; the wait's row in
`event_waits`; the external event that ended it), on a schema of the lesson's choosing
plus indexes of the benchmark's, then deletes the oldest trees in batches: each batch in
one transaction, leaves first (the waits, their external events, the histories, the
children, the parents), so that every foreign key is checked and none fails.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from lessons.common.database import connect, drop_schema, reset_schema

from .scale import checkpoint

TABLES = ("tasks", "task_events", "event_waits", "external_events")
# The rows one tree has: 3 tasks, 3 events, 1 wait, 1 external event.
TASKS_PER_TREE = 3
ROWS_PER_TREE = 8
# "Trigger for constraint task_events_child_task_id_fkey: time=812.301 calls=2000"
TRIGGER_LINE = re.compile(r"Trigger for constraint (\S+)(?: on \S+)?: time=([\d.]+) calls=(\d+)")


@dataclass(frozen=True)
class ForeignKeyIndex:
    """An index on a referencing column, which the benchmark creates unless the lesson has
    one already (an index whose first column it is)."""

    table: str
    column: str
    # Most rows have none (only a fork's copied events name a task they were copied from):
    # index only the rows that have one, as the lessons' own partial indexes do.
    partial: bool = False

    def describe(self) -> str:
        return f"{self.table} ({self.column})"

    def ensure(self, conn: psycopg.Connection[Any]) -> bool:
        """Create the index unless the lesson's schema has one (or has no such table);
        whether it was created."""
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (self.table,)).fetchone()
        if exists is None or not exists[0]:
            return False
        if has_index_on(conn, self.table, self.column):
            return False
        where = sql.SQL(" WHERE {} IS NOT NULL").format(sql.Identifier(self.column))
        conn.execute(
            sql.SQL("CREATE INDEX {name} ON {table} ({column}){where}").format(
                name=sql.Identifier(f"{self.table}_{self.column}_bench_idx"),
                table=sql.Identifier(self.table),
                column=sql.Identifier(self.column),
                where=where if self.partial else sql.SQL(""),
            )
        )
        return True


@dataclass(frozen=True)
class TreeSchema:
    """What the table is built on: a lesson's schema, and indexes the benchmark adds."""

    label: str  # "lesson 12", "lesson 14 + event_waits (external_event_id)"
    schema: str
    schema_sql: Path
    indexes: tuple[ForeignKeyIndex, ...] = ()


@dataclass
class DeleteBatch:
    trees: int
    seconds: float  # the whole transaction, commit included, on this process's clock
    statements: dict[str, float]  # seconds of each statement
    seq_scans: dict[str, int]  # sequential scans of each table during the batch

    @property
    def rows(self) -> int:
        return self.trees * ROWS_PER_TREE

    @property
    def per_row(self) -> float:
        return self.seconds / self.rows

    @property
    def per_tree(self) -> float:
        return self.seconds / self.trees


@dataclass
class DeleteTrees:
    """A table of `tasks` tasks in finished trees, in `tree_schema`; batches of `trees` deleted.

    The table is built once, by the first batch; each batch deletes the oldest trees
    left. `explain()` deletes one more batch under EXPLAIN (ANALYZE, BUFFERS) and rolls
    it back: its plans say how long each foreign key's checks took.
    """

    tree_schema: TreeSchema
    tasks: int
    trees: int
    built: bool = field(default=False, init=False)
    # The indexes of `tree_schema.indexes` this benchmark created, and the foreign keys
    # left with no index (each of their checks scans the referencing table).
    added: list[str] = field(default_factory=list, init=False)
    unindexed: list[str] = field(default_factory=list, init=False)

    @property
    def schema(self) -> str:
        return self.tree_schema.schema

    def build(self) -> None:
        reset_schema(self.schema, self.tree_schema.schema_sql)
        with connect(schema=self.schema) as conn:
            for index in self.tree_schema.indexes:
                if index.ensure(conn):
                    self.added.append(index.describe())
            self.unindexed = unindexed_foreign_keys(conn)
            fill_trees(conn, self.tasks // TASKS_PER_TREE)
            for table in TABLES:
                # A table that has been in use is vacuumed and has statistics.
                conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))
            checkpoint(conn)
        self.built = True

    def delete_batch(self) -> DeleteBatch:
        if not self.built:
            self.build()
        with connect(schema=self.schema) as conn:
            before = seq_scans(conn)
            statements: dict[str, float] = {}
            started = time.perf_counter()
            with conn.transaction():
                ids = oldest_trees(conn, self.trees)
                for name, statement, deleted_by in DELETE_STATEMENTS:
                    began = time.perf_counter()
                    conn.execute(statement, (ids[deleted_by],))
                    statements[name] = time.perf_counter() - began
            seconds = time.perf_counter() - started
            # This session's counters reach the shared statistics once it goes idle.
            conn.execute("SELECT pg_stat_force_next_flush()")
            after = seq_scans(conn)
        scans = {table: after[table] - before[table] for table in TABLES}
        return DeleteBatch(len(ids["parents"]), seconds, statements, scans)

    def explain(self, trees: int) -> str:
        """`trees` deleted under EXPLAIN (ANALYZE, BUFFERS), rolled back; and each foreign
        key's check, for one row, as PostgreSQL runs it."""
        if not self.built:
            self.build()
        parts: list[str] = []
        with connect(schema=self.schema) as conn:
            with conn.transaction(force_rollback=True):
                ids = oldest_trees(conn, trees)
                for name, statement, deleted_by in DELETE_STATEMENTS:
                    plan = conn.execute(
                        b"EXPLAIN (ANALYZE, BUFFERS) " + statement, (ids[deleted_by],)
                    ).fetchall()
                    rows = len(ids[deleted_by])
                    parts.append(f"-- delete {name}: {rows:,} rows\n" + plan_text(plan))
            parts.append("(rolled back)")
            parts.append(
                foreign_key_checks(conn, child_id=ids["children"][0], event_id=ids["external"][0])
            )
        return "\n\n".join(parts)

    def drop(self) -> None:
        drop_schema(self.schema)


# A batch, leaves first: (what, statement, which ids it deletes by).
DELETE_STATEMENTS: list[tuple[str, bytes, str]] = [
    ("event_waits", b"DELETE FROM event_waits WHERE task_id = ANY(%s::bigint[])", "parents"),
    ("external_events", b"DELETE FROM external_events WHERE id = ANY(%s::bigint[])", "external"),
    ("task_events", b"DELETE FROM task_events WHERE task_id = ANY(%s::bigint[])", "parents"),
    ("children", b"DELETE FROM tasks WHERE id = ANY(%s::bigint[])", "children"),
    ("parents", b"DELETE FROM tasks WHERE id = ANY(%s::bigint[])", "parents"),
]


def oldest_trees(conn: psycopg.Connection[Any], trees: int) -> dict[str, list[int]]:
    """The ids of the `trees` oldest finished parents, of their children, and of the
    external events that ended their waits."""
    parents = [
        row[0]
        for row in conn.execute(
            "SELECT id FROM tasks WHERE parent_id IS NULL"
            " AND status IN ('completed', 'failed') ORDER BY id LIMIT %s",
            (trees,),
        ).fetchall()
    ]
    children = [
        row[0]
        for row in conn.execute(
            "SELECT id FROM tasks WHERE parent_id = ANY(%s::bigint[]) ORDER BY id", (parents,)
        ).fetchall()
    ]
    external = [
        row[0]
        for row in conn.execute(
            "SELECT external_event_id FROM event_waits"
            " WHERE task_id = ANY(%s::bigint[]) AND external_event_id IS NOT NULL",
            (parents,),
        ).fetchall()
    ]
    return {"parents": parents, "children": children, "external": external}


def fill_trees(conn: psycopg.Connection[Any], trees: int) -> None:
    """`trees` finished orders, the rows a run of lesson 14's shop leaves, tree after tree.

    Ids are given so that each tree's rows sit together, as they would: parent 3n + 1,
    its children 3n + 2 and 3n + 3; the identities then go on after them.
    """
    with conn.transaction():
        conn.execute(
            """
            INSERT INTO tasks (id, queue, task_name, display_name, input, output, status,
                               durable, attempt, parent_id, started_at)
            OVERRIDING SYSTEM VALUE
            SELECT 3 * n + k, 'orders',
                   (ARRAY['process_order', 'charge_payment', 'send_confirmation_email'])[k],
                   (ARRAY['process_order', 'charge_payment', 'send_confirmation_email'])[k],
                   jsonb_build_object('order_id', 'R-' || n), '{"done": true}', 'completed',
                   k = 1, 1, CASE WHEN k > 1 THEN 3 * n + 1 END, now()
            FROM generate_series(0, %(trees)s - 1) AS n, generate_series(1, 3) AS k
            ORDER BY 3 * n + k
            """,
            {"trees": trees},
        )
        conn.execute(
            """
            INSERT INTO task_events (task_id, event_number, kind, name, input, key, output,
                                     child_task_id, wake_at, attempt)
            SELECT 3 * n + 1, e,
                   (ARRAY['child', 'wait', 'child'])[e]::event_kind,
                   (ARRAY['charge_payment', 'approval:R-' || n, 'send_confirmation_email'])[e],
                   jsonb_build_object('order_id', 'R-' || n), md5(n::text || ':' || e), NULL,
                   CASE e WHEN 1 THEN 3 * n + 2 WHEN 3 THEN 3 * n + 3 END,
                   CASE WHEN e = 2 THEN now() + interval '1 day' END, 1
            FROM generate_series(0, %(trees)s - 1) AS n, generate_series(1, 3) AS e
            ORDER BY n, e
            """,
            {"trees": trees},
        )
        conn.execute(
            """
            INSERT INTO external_events (id, key, payload)
            OVERRIDING SYSTEM VALUE
            SELECT n + 1, 'approval:R-' || n, '{"approved_by": "bench"}'
            FROM generate_series(0, %(trees)s - 1) AS n
            """,
            {"trees": trees},
        )
        conn.execute(
            """
            INSERT INTO event_waits (task_id, event_number, key, timeout_at, external_event_id,
                                     payload, ended_at)
            SELECT 3 * n + 1, 2, 'approval:R-' || n, now() + interval '1 day', n + 1,
                   '{"approved_by": "bench"}', now()
            FROM generate_series(0, %(trees)s - 1) AS n
            """,
            {"trees": trees},
        )
        for table in ("tasks", "external_events"):
            conn.execute(
                sql.SQL(
                    "SELECT setval(pg_get_serial_sequence({table}, 'id'), max(id)) FROM {name}"
                ).format(table=sql.Literal(table), name=sql.Identifier(table))
            )


def seq_scans(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """pg_stat_user_tables.seq_scan of each table of this schema."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = conn.execute(
        "SELECT relname, seq_scan FROM pg_stat_user_tables"
        " WHERE schemaname = current_schema() AND relname = ANY(%s)",
        (list(TABLES),),
    ).fetchall()
    counts = {str(name): int(count) for name, count in rows}
    return {table: counts.get(table, 0) for table in TABLES}


def foreign_keys(conn: psycopg.Connection[Any]) -> list[tuple[str, str, list[str], str]]:
    """Every foreign key that points at tasks or external_events: (name, table, columns,
    the table it points at)."""
    rows = conn.execute(
        """
        SELECT c.conname, c.conrelid::regclass::text, c.confrelid::regclass::text,
               array_agg(a.attname::text ORDER BY k.position)
        FROM pg_constraint AS c
        CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k (attnum, position)
        JOIN pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
        WHERE c.contype = 'f' AND c.connamespace = current_schema()::regnamespace
          AND c.confrelid IN ('tasks'::regclass, 'external_events'::regclass)
        GROUP BY c.conname, c.conrelid, c.confrelid
        ORDER BY c.confrelid::regclass::text, c.conname
        """
    ).fetchall()
    return [
        (str(name), str(table), list(columns), str(target)) for name, table, target, columns in rows
    ]


def unindexed_foreign_keys(conn: psycopg.Connection[Any]) -> list[str]:
    """The foreign keys pointing at tasks or external_events whose referencing column is
    the first column of no index: "table (column)"."""
    unindexed = []
    for _, table, columns, _ in foreign_keys(conn):
        if not has_index_on(conn, table, columns[0]):
            unindexed.append(f"{table} ({columns[0]})")
    return unindexed


def has_index_on(conn: psycopg.Connection[Any], table: str, column: str) -> bool:
    """Whether an index of `table` has `column` first: a foreign key's check can use it."""
    row = conn.execute(
        "SELECT EXISTS (SELECT FROM pg_index AS i"
        " JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
        " WHERE i.indrelid = %s::regclass AND a.attname = %s)",
        (table, column),
    ).fetchone()
    return bool(row and row[0])


def foreign_key_checks(conn: psycopg.Connection[Any], *, child_id: int, event_id: int) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the check each foreign key runs for one deleted row.

    The query is the one PostgreSQL's RI trigger runs (`SELECT 1 FROM ONLY <table> x
    WHERE <column> = $1 FOR KEY SHARE OF x`), for a task that is a child (whose id
    appears in task_events.child_task_id) and for an external event that ended a wait.
    Only the scan node matters: index, or the whole table.
    """
    parts = ["-- Each foreign key's check, for one deleted row (rolled back)"]
    for name, table, columns, target in foreign_keys(conn):
        if len(columns) > 1:
            continue  # event_waits -> task_events (task_id, event_number): its primary key
        value = event_id if target == "external_events" else child_id
        query = sql.SQL("SELECT 1 FROM ONLY {table} x WHERE {column} = {value} FOR KEY SHARE OF x")
        statement = query.format(
            table=sql.Identifier(table),
            column=sql.Identifier(columns[0]),
            value=sql.Literal(value),
        )
        with conn.transaction(force_rollback=True):
            plan = conn.execute(
                sql.SQL("EXPLAIN (ANALYZE, BUFFERS) {}").format(statement)
            ).fetchall()
        parts.append(f"-- {name}: {table} ({columns[0]}) -> {target}\n" + plan_text(plan))
    return "\n\n".join(parts)


def plan_text(plan: Sequence[Any]) -> str:
    """EXPLAIN's lines, with its long lists of ids cut short."""
    return "\n".join(ID_LIST.sub(shorten, str(row[0])) for row in plan)


ID_LIST = re.compile(r"'\{([\d,]+)\}'")


def shorten(match: re.Match[str]) -> str:
    ids = match[1].split(",")
    if len(ids) <= 4:
        return match[0]
    return f"'{{{','.join(ids[:3])},...}}' ({len(ids):,} ids)"


def trigger_times(explained: str) -> dict[str, tuple[float, int]]:
    """The foreign keys' checks in an EXPLAIN ANALYZE of deletes: name -> (ms, calls)."""
    times: dict[str, tuple[float, int]] = {}
    for name, ms, calls in TRIGGER_LINE.findall(explained):
        spent, count = times.get(name, (0.0, 0))
        times[name] = (spent + float(ms), count + int(calls))
    return times
