"""A lesson's queue under a long run, and what vacuum leaves of its tables: lesson 15's bloat.

What `vacuum_bloat.py` measures, on any lesson from 09 on (`lesson_engine.py`), under one
`Regime` of per-table storage parameters at a time:

- **the flow** (`Flow`): `tasks` tasks go through the lesson's own generated queries the way
  its workers take them: worker processes (`work`) claim with `ClaimTasks`, record the one
  step of the durable ones with `AppendEvent`, and complete them with `FinishAttempts`; this
  process keeps `backlog` tasks unfinished, and a thread renews the leases of a fleet of
  workers' rows with `RecordHeartbeat` (`Heartbeats`);
- **the claim** (`Probe`): one `ClaimTasks` of 10 at a time, at a steady pace through the
  run, on two connections set up as the lesson's poller's, in turn: one timed in this
  process, the other explained by auto_explain (`Plan`: the server's duration, the buffers
  of the statement and of its scan of `tasks_queued_idx`);
- **the tables** (`Sampler`): every few seconds, for `tasks`, `task_events` and `workers`,
  what `pg_stat_user_tables` counts (live and dead rows, updates, HOT updates and updates
  that moved to another page, autovacuum passes and their time), the size of the heap and of
  each index, and whether a vacuum is working on the table (`pg_stat_progress_vacuum`); and
  at the end, pgstatindex of the indexes of `tasks`.

Each table's figures add up its partitions, if it has any (`pg_partition_tree`), so this
runs unchanged on a schema whose `tasks` is partitioned; a regime's settings then go on each
partition the schema creates, which is where PostgreSQL keeps them (a partition created
later would take none: that is the schema's to say).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from typing import Any

import psycopg
from psycopg import sql

from lessons.common.database import connect, database_url, reset_schema

from .lesson_engine import LessonEngine
from .noop import TASK_NAME
from .scale import checkpoint

QUEUE = "bloat"
# The durable share of the tasks runs this one-step function (the workers record the step).
DURABLE_TASK_NAME = "one_step"
# The tables the flow writes, and whose growth is measured.
HOT_TABLES = ("tasks", "task_events", "workers")
# The most rows one top-up of the backlog inserts (one statement, one transaction).
TOP_UP = 5_000
# How long an idle loop (a worker that found nothing, a producer at its backlog) waits.
IDLE_SECONDS = 0.005
# How long the last sample waits for the statistics to count every task's updates.
STATISTICS_WAIT = 10.0

Settings = Mapping[str, int | float]


@dataclass(frozen=True)
class Regime:
    """Per-table storage parameters (`ALTER TABLE ... SET (...)`), set on a fresh schema."""

    name: str
    tables: Mapping[str, Settings] = field(default_factory=dict)

    def describe(self) -> str:
        if not self.tables:
            return "no table settings: the server's autovacuum settings, fillfactor 100"
        return "; ".join(
            f"{table}: " + ", ".join(f"{name} = {value:g}" for name, value in settings.items())
            for table, settings in self.tables.items()
        )

    def apply(self, conn: psycopg.Connection[Any]) -> None:
        """Set each table's parameters on the table, or on each of its partitions."""
        for table, settings in self.tables.items():
            options = sql.SQL(", ").join(
                sql.SQL("{} = {}").format(sql.Identifier(name), sql.Literal(value))
                for name, value in settings.items()
            )
            for leaf in leaves(conn, table):
                conn.execute(sql.SQL("ALTER TABLE {} SET ({})").format(sql.SQL(leaf), options))


LEAVES_SQL = """
SELECT relid::regclass::text FROM pg_partition_tree(%(name)s::regclass) WHERE isleaf
UNION ALL
SELECT %(name)s::regclass::text
WHERE NOT EXISTS (SELECT FROM pg_partition_tree(%(name)s::regclass))
"""


def leaves(conn: psycopg.Connection[Any], relation: str) -> list[str]:
    """The relations that hold `relation`'s rows: its leaf partitions, or itself."""
    return [str(row[0]) for row in conn.execute(LEAVES_SQL, {"name": relation}).fetchall()]


# One table's counters, summed over its leaves (a plain table is its own only leaf).
TABLE_SQL = """
WITH leaf AS (
    SELECT relid FROM pg_partition_tree(%(name)s::regclass) WHERE isleaf
    UNION ALL
    SELECT %(name)s::regclass WHERE NOT EXISTS (SELECT FROM pg_partition_tree(%(name)s::regclass))
)
SELECT
    sum(stats.n_live_tup)::bigint, sum(stats.n_dead_tup)::bigint,
    sum(pg_relation_size(leaf.relid))::bigint,
    sum(stats.n_tup_ins)::bigint, sum(stats.n_tup_upd)::bigint,
    sum(stats.n_tup_hot_upd)::bigint, sum(stats.n_tup_newpage_upd)::bigint,
    sum(stats.autovacuum_count)::bigint, sum(stats.autoanalyze_count)::bigint,
    sum(stats.total_autovacuum_time)::float8, max(stats.last_autovacuum),
    bool_or(EXISTS (SELECT FROM pg_stat_progress_vacuum AS vacuum WHERE vacuum.relid = leaf.relid))
FROM leaf
JOIN pg_stat_user_tables AS stats ON stats.relid = leaf.relid
"""

# Each index of a table by name, summed over the partitions' indexes that inherit it.
INDEXES_SQL = """
SELECT index.relname::text,
    coalesce(
        (SELECT sum(pg_relation_size(tree.relid)) FROM pg_partition_tree(index.oid) AS tree
         WHERE tree.isleaf),
        pg_relation_size(index.oid)
    )::bigint
FROM pg_index AS i
JOIN pg_class AS index ON index.oid = i.indexrelid
WHERE i.indrelid = %(name)s::regclass
ORDER BY index.relname
"""


@dataclass(frozen=True)
class TableSample:
    live: int
    dead: int
    heap_bytes: int
    inserts: int
    updates: int
    hot_updates: int
    new_page_updates: int
    autovacuums: int
    autoanalyzes: int
    autovacuum_ms: float
    last_autovacuum: Any
    vacuuming: bool
    index_bytes: dict[str, int]

    @property
    def indexes_bytes(self) -> int:
        return sum(self.index_bytes.values())


@dataclass(frozen=True)
class Sample:
    seconds: float  # since the flow began
    finished: int  # tasks finished by then
    tables: dict[str, TableSample]


def sample_tables(conn: psycopg.Connection[Any], seconds: float, finished: int) -> Sample:
    tables = {}
    for table in HOT_TABLES:
        row = conn.execute(TABLE_SQL, {"name": table}).fetchone()
        assert row is not None
        indexes = conn.execute(INDEXES_SQL, {"name": table}).fetchall()
        live, dead, heap, inserts, updates, hot, new_page, autovacuums, autoanalyzes = (
            int(value or 0) for value in row[:9]
        )
        tables[table] = TableSample(
            live=live,
            dead=dead,
            heap_bytes=heap,
            inserts=inserts,
            updates=updates,
            hot_updates=hot,
            new_page_updates=new_page,
            autovacuums=autovacuums,
            autoanalyzes=autoanalyzes,
            autovacuum_ms=float(row[9] or 0.0),
            last_autovacuum=row[10],
            vacuuming=bool(row[11]),
            index_bytes={str(name): int(size) for name, size in indexes},
        )
    return Sample(seconds=seconds, finished=finished, tables=tables)


# The claim's read of the queued tasks: the index scan whose buffers dead entries inflate.
QUEUED_INDEX_SCAN = "Index Scan using tasks_queued_idx on tasks"
BUFFERS = re.compile(r"Buffers: shared(?: hit=(\d+))?(?: read=(\d+))?")


@dataclass(frozen=True)
class Plan:
    """What auto_explain said of one claim: its server time, the buffers (hit or read) of the
    whole statement and of its scan of tasks_queued_idx."""

    finished: int  # tasks finished when the claim began: where in the run it is
    seconds: float
    buffers: int
    index_buffers: int

    @classmethod
    def parse(cls, text: str, finished: int) -> Plan:
        duration = re.search(r"duration: ([\d.]+) ms", text)
        return cls(
            finished=finished,
            seconds=float(duration[1]) / 1000 if duration else float("nan"),
            buffers=_buffers(text.splitlines()),
            index_buffers=_node_buffers(text, QUEUED_INDEX_SCAN),
        )


def _buffers(lines: Sequence[str]) -> int:
    """The buffers of the first "Buffers:" line among `lines` (0: none)."""
    for line in lines:
        found = BUFFERS.search(line)
        if found:
            return int(found[1] or 0) + int(found[2] or 0)
    return 0


def _node_buffers(text: str, node: str) -> int:
    """The buffers of the plan node whose line contains `node`: the first "Buffers:" line
    after it and before the next node (0: no such node, or no buffers)."""
    lines = text.splitlines()
    for number, line in enumerate(lines):
        if node in line:
            own = []
            for detail in lines[number + 1 :]:
                if detail.strip().startswith("->"):
                    break
                own.append(detail)
            return _buffers(own)
    return 0


@dataclass(frozen=True)
class FlowShape:
    """How the tasks flow: how many, how they are claimed, what else writes."""

    tasks: int
    backlog: int  # tasks kept queued (and running) while the producer has tasks left
    worker_processes: int
    worker_batch: int  # tasks a worker process claims at once
    durable_share: float  # of the tasks, the fraction that are durable, with one step
    heartbeat_rows: int  # workers' rows whose leases the heartbeat thread renews
    heartbeats_per_second: float  # over all those rows
    probe_batch: int  # tasks the timed claim asks for
    probe_interval: float  # seconds between two timed claims
    sample_interval: float  # seconds between two samples of the tables

    def describe(self) -> str:
        durable = (
            f", {self.durable_share:.0%} of them durable with one recorded step"
            if self.durable_share
            else ""
        )
        return (
            f"{self.tasks:,} tasks{durable}, {self.backlog:,} kept queued; "
            f"{self.worker_processes} worker processes claiming {self.worker_batch} at a time; "
            f"one timed claim of {self.probe_batch} every {self.probe_interval * 1000:g} ms; "
            f"{self.heartbeats_per_second:g} heartbeats a second over {self.heartbeat_rows} "
            f"workers' rows; the tables sampled every {self.sample_interval:g} s"
        )


@dataclass(frozen=True)
class TimedClaim:
    finished: int  # tasks finished when the claim began: where in the run it is
    seconds: float
    tasks: int


@dataclass
class FlowResult:
    regime: Regime
    shape: FlowShape
    seconds: float = 0.0
    claims: list[TimedClaim] = field(default_factory=list)  # timed here
    explained: list[Plan] = field(default_factory=list)  # explained by the server
    # The first explained claim's plan of the first and of the last tenth (0 and 9).
    plans: dict[int, str] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    heartbeats: int = 0
    # pgstatindex of each index of tasks at the end (None: pgstattuple not available).
    index_density: dict[str, tuple[float, int, int]] | None = None

    @property
    def rate(self) -> float:
        return self.shape.tasks / self.seconds if self.seconds else 0.0

    def tenth(self, finished: int) -> int:
        return min(9, finished * 10 // self.shape.tasks)


@dataclass(frozen=True)
class WorkerOptions:
    engine: LessonEngine
    url: str
    schema: str
    worker_id: int
    batch: int


def run_step(
    engine: LessonEngine, conn: psycopg.Connection[Any], worker_id: int, tasks: Sequence[Any]
) -> None:
    """A worker's work on the tasks it claimed: a durable one records its one step (the
    lesson's AppendEvent, as its durable context does), then all of them are completed."""
    durable = [task for task in tasks if task.durable]
    if durable:
        queries = engine.querier(conn)
        with conn.transaction():
            for task in durable:
                queries.append_event(
                    task_id=task.id,
                    event_number=1,
                    kind="step",
                    name="step",
                    input_={},
                    key=STEP_KEY,
                    output={"done": True},
                    child_task_id=None,
                    wake_after_seconds=None,
                    attempt=task.attempt,
                    worker_id=worker_id,
                    compensating=False,
                )
    if tasks:
        engine.finish_completed(conn, worker_id, tasks)


# The step's call key, as the durable context computes it: SHA-256 of [kind, name, input].
STEP_KEY = hashlib.sha256(b'["step","step",{}]').hexdigest()


def claim(engine: LessonEngine, conn: psycopg.Connection[Any], worker_id: int, n: int) -> list[Any]:
    return engine.claim(
        conn,
        worker_id=worker_id,
        queue=QUEUE,
        task_names=[TASK_NAME],
        durable_task_names=[DURABLE_TASK_NAME],
        max_tasks=n,
    )


def work(options: WorkerOptions, finished: Synchronized[int], stop: Event) -> None:
    """A worker process: claim, record, finish, until told to stop (a child's entry point)."""
    engine = options.engine
    with connect(options.url, schema=options.schema) as conn:
        engine.plan_claims_once(conn)
        while not stop.is_set():
            tasks = claim(engine, conn, options.worker_id, options.batch)
            if not tasks:
                time.sleep(IDLE_SECONDS)
                continue
            run_step(engine, conn, options.worker_id, tasks)
            with finished.get_lock():
                finished.value += len(tasks)


def enqueue(conn: psycopg.Connection[Any], count: int, first: int, durable_share: float) -> None:
    """`count` queued tasks in one statement: the rows the lesson's CreateTask writes for a
    plain enqueue (its defaults), without its round trip and its CTEs per task (enqueueing
    is not what is measured). Task number n (from `first`) is durable when n times the share
    crosses a whole number, so the durable ones are spread evenly."""
    conn.execute(
        "INSERT INTO tasks (queue, task_name, display_name, input, durable)"
        " SELECT %(queue)s, kind.name, kind.name, '{}'::jsonb, kind.durable"
        " FROM generate_series(%(first)s::bigint, %(first)s::bigint + %(count)s - 1) AS n,"
        " LATERAL (SELECT floor((n + 1) * %(share)s::float8) > floor(n * %(share)s::float8)"
        "   AS durable) AS pick,"
        " LATERAL (SELECT pick.durable,"
        "   CASE WHEN pick.durable THEN %(durable)s ELSE %(plain)s END AS name) AS kind",
        {
            "queue": QUEUE,
            "first": first,
            "count": count,
            "share": durable_share,
            "durable": DURABLE_TASK_NAME,
            "plain": TASK_NAME,
        },
    )


@dataclass(frozen=True)
class Flow:
    """One regime's run: a fresh schema, the regime's settings, then `shape.tasks` tasks."""

    engine: LessonEngine
    regime: Regime
    shape: FlowShape
    schema: str

    def run(self) -> FlowResult:
        result = FlowResult(self.regime, self.shape)
        worker_ids = self._prepare()
        spawn = multiprocessing.get_context("spawn")
        stop = spawn.Event()
        counters = [spawn.Value("q", 0) for _ in range(self.shape.worker_processes)]
        workers = [
            spawn.Process(
                target=work,
                args=(self._worker_options(worker_ids[n + 1]), counters[n], stop),
                name=f"bloat worker {n}",
                daemon=True,
            )
            for n in range(self.shape.worker_processes)
        ]
        probe = Probe(self.engine, self.schema, worker_ids[0], self.shape, result)
        finished = Finished(counters, probe)
        probe.total = finished
        loops: list[Loop] = [
            probe,
            Sampler(self.schema, self.shape.sample_interval, finished, result),
            Heartbeats(self.engine, self.schema, worker_ids, self.shape, result),
        ]
        threads = [threading.Thread(target=loop.run, daemon=True) for loop in loops]
        try:
            for worker in workers:
                worker.start()
            started = time.monotonic()
            for loop, thread in zip(loops, threads, strict=True):
                loop.started = started
                thread.start()
            self._produce(finished, workers)
            result.seconds = time.monotonic() - started
        finally:
            stop.set()
            for loop in loops:
                loop.stop.set()
            for thread in threads:
                if thread.ident is not None:  # it was started
                    thread.join(timeout=30)
            for worker in workers:
                if worker.pid is not None:
                    worker.join(timeout=30)
                    if worker.is_alive():
                        worker.kill()
        for loop in loops:
            if loop.error is not None:
                raise loop.error
        self._finish(result, finished.count())
        return result

    def _prepare(self) -> list[int]:
        """The fresh schema, the regime's settings, the workers' rows, the first backlog."""
        reset_schema(self.schema, self.engine.schema_sql)
        with connect(schema=self.schema) as conn:
            self.regime.apply(conn)
            rows = max(self.shape.heartbeat_rows, self.shape.worker_processes + 1)
            worker_ids = [
                self.engine.register_worker(conn, name=f"bloat worker {n}", queue=QUEUE)
                for n in range(rows)
            ]
            enqueue(conn, min(self.shape.backlog, self.shape.tasks), 0, self.shape.durable_share)
            # The fill's counts reach the statistics now, not after the VACUUM below
            # (which sets them), where they would be counted twice.
            conn.execute("SELECT pg_stat_force_next_flush()")
            # The same start in every regime: statistics, a visibility map, no pending
            # checkpoint's writes.
            conn.execute("VACUUM (ANALYZE) tasks, task_events, workers")
            checkpoint(conn)
        return worker_ids

    def _worker_options(self, worker_id: int) -> WorkerOptions:
        return WorkerOptions(
            self.engine, database_url(), self.schema, worker_id, self.shape.worker_batch
        )

    def _produce(
        self, finished: Finished, workers: Sequence[multiprocessing.process.BaseProcess]
    ) -> None:
        """Keep `backlog` tasks unfinished until all `tasks` are enqueued, then wait for them."""
        shape = self.shape
        created = min(shape.backlog, shape.tasks)
        with connect(schema=self.schema) as conn:
            while (done := finished.count()) < shape.tasks:
                unfinished = created - done
                if created < shape.tasks and unfinished < shape.backlog:
                    count = min(shape.backlog - unfinished, TOP_UP, shape.tasks - created)
                    enqueue(conn, count, created, shape.durable_share)
                    created += count
                else:
                    time.sleep(IDLE_SECONDS)
                for worker in workers:
                    if not worker.is_alive():
                        raise RuntimeError(f"{worker.name} exited with code {worker.exitcode}")

    def _finish(self, result: FlowResult, finished: int) -> None:
        """The last sample, once every claim and result has reached the statistics (a
        backend sends its counts at most once a second, and at its exit), and pgstatindex."""
        updates = 2 * self.shape.tasks  # a claim and a result each
        deadline = time.monotonic() + STATISTICS_WAIT
        with connect(schema=self.schema) as conn:
            while True:
                last = sample_tables(conn, result.seconds, finished)
                if last.tables["tasks"].updates >= updates or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            result.samples.append(last)
            result.index_density = index_density(conn)


@dataclass
class Finished:
    """Tasks finished so far: the worker processes' counters and the probe's."""

    counters: Sequence[Synchronized[int]]
    probe: Probe

    def count(self) -> int:
        return sum(counter.value for counter in self.counters) + self.probe.finished


@dataclass
class Loop:
    """A thread of the flow, in this process, that stops when told and keeps its error."""

    stop: threading.Event = field(default_factory=threading.Event, init=False)
    error: BaseException | None = field(default=None, init=False)
    started: float = field(default=0.0, init=False)

    def run(self) -> None:
        try:
            self.loop()
        except BaseException as error:
            self.error = error

    def loop(self) -> None:
        raise NotImplementedError


@dataclass
class Probe(Loop):
    """A claim of `probe_batch` every `probe_interval` through the run, on two connections in
    turn, both set up as the lesson's poller's: one timed here, the other explained by
    auto_explain (its server time and buffers; ANALYZE without per-node timing, which costs
    little), so that neither figure carries the other's overhead."""

    engine: LessonEngine
    schema: str
    worker_id: int
    shape: FlowShape
    result: FlowResult
    finished: int = field(default=0, init=False)
    total: Finished | None = field(default=None, init=False)

    def loop(self) -> None:
        notices: list[str] = []
        with connect(schema=self.schema) as timed, connect(schema=self.schema) as explaining:
            self.engine.plan_claims_once(timed)
            self.engine.plan_claims_once(explaining)
            explain_every_statement(explaining)
            explaining.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
            next_claim = time.monotonic()
            turn = 0
            while not self.stop.is_set():
                done = self.total.count() if self.total is not None else self.finished
                if turn % 2 == 0:
                    began = time.perf_counter()
                    tasks = claim(self.engine, timed, self.worker_id, self.shape.probe_batch)
                    took = time.perf_counter() - began
                    if tasks:
                        self.result.claims.append(TimedClaim(done, took, len(tasks)))
                else:
                    notices.clear()
                    tasks = claim(self.engine, explaining, self.worker_id, self.shape.probe_batch)
                    if tasks and notices:
                        plan = Plan.parse(notices[-1], done)
                        self.result.explained.append(plan)
                        tenth = self.result.tenth(done)
                        if tenth in (0, 9):
                            self.result.plans.setdefault(tenth, notices[-1])
                # The claimed tasks' step and result, untimed, on the connection that
                # explains nothing.
                run_step(self.engine, timed, self.worker_id, tasks)
                self.finished += len(tasks)
                turn += 1
                next_claim = max(next_claim + self.shape.probe_interval, time.monotonic())
                self.stop.wait(max(0.0, next_claim - time.monotonic()))


def explain_every_statement(conn: psycopg.Connection[Any]) -> None:
    """auto_explain on `conn` only, at NOTICE level: each statement's plan comes back to this
    client with its buffers and its duration (the plan of the lesson's very call, generic
    plan and all). No per-node timing: on a busy machine its clock reads are the cost."""
    conn.execute("LOAD 'auto_explain'")
    settings = {
        "log_analyze": "on",
        "log_buffers": "on",
        "log_timing": "off",
        "log_nested_statements": "off",
        "log_level": "notice",
        "log_min_duration": "0",
    }
    for name, value in settings.items():
        conn.execute(f"SET auto_explain.{name} = {value}")


@dataclass
class Sampler(Loop):
    schema: str
    interval: float
    finished: Finished
    result: FlowResult

    def loop(self) -> None:
        with connect(schema=self.schema) as conn:
            while True:
                self.result.samples.append(
                    sample_tables(conn, time.monotonic() - self.started, self.finished.count())
                )
                if self.stop.wait(self.interval):
                    return


@dataclass
class Heartbeats(Loop):
    """RecordHeartbeat on each of the workers' rows in turn, `heartbeats_per_second` in all."""

    engine: LessonEngine
    schema: str
    worker_ids: Sequence[int]
    shape: FlowShape
    result: FlowResult

    def loop(self) -> None:
        interval = 1.0 / self.shape.heartbeats_per_second
        rows = self.worker_ids[: max(1, self.shape.heartbeat_rows)]
        with connect(schema=self.schema) as conn:
            queries = self.engine.querier(conn)
            next_beat = time.monotonic()
            while not self.stop.is_set():
                queries.record_heartbeat(id=rows[self.result.heartbeats % len(rows)])
                self.result.heartbeats += 1
                next_beat = max(next_beat + interval, time.monotonic() - 1.0)
                self.stop.wait(max(0.0, next_beat - time.monotonic()))


INDEX_DENSITY_SQL = """
SELECT index.relname::text, stats.avg_leaf_density, stats.leaf_pages::bigint,
    (stats.empty_pages + stats.deleted_pages)::bigint
FROM pg_index AS i
JOIN pg_class AS index ON index.oid = i.indexrelid
CROSS JOIN LATERAL {schema}.pgstatindex(i.indexrelid::regclass) AS stats
WHERE i.indrelid = 'tasks'::regclass AND index.relkind = 'i'
ORDER BY index.relname
"""


def index_density(conn: psycopg.Connection[Any]) -> dict[str, tuple[float, int, int]] | None:
    """pgstatindex of each index of `tasks`: leaf density (%), leaf pages, empty or deleted
    pages. pgstattuple is used where the database has it already, else created in this
    schema (and dropped with it); None where it is unavailable (not shipped, or not allowed
    to this role). Empty where `tasks` is partitioned (its indexes are the partitions')."""
    try:
        with conn.transaction():
            row = conn.execute(
                "SELECT quote_ident(extnamespace::regnamespace::text) FROM pg_extension"
                " WHERE extname = 'pgstattuple'"
            ).fetchone()
            if row is None:
                schema = current_schema(conn)
                conn.execute(f"CREATE EXTENSION pgstattuple SCHEMA {schema}")
            else:
                schema = str(row[0])
            rows = conn.execute(INDEX_DENSITY_SQL.format(schema=schema)).fetchall()
    except psycopg.Error:
        return None
    return {
        str(name): (float(density), int(leaf), int(empty)) for name, density, leaf, empty in rows
    }


def current_schema(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT quote_ident(current_schema())").fetchone()
    assert row is not None
    return str(row[0])
