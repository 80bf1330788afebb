"""Lesson 15's measured growth: the engine's costs as its tables grow.

    python -m benchmarks.scale_growth [--lesson lesson14_changing_code_safely] [--quick]
        [--runs 3] [--only claim wake replay delete orders]

On one lesson's own engine (`--lesson`, a lesson package name; lesson 15 starts as a
copy of lesson 14, and this runs against either), stock autovacuum:

1. claim latency: p50 and p99 of one ClaimTasks call (10 tasks), timed in this process,
   on a queue of 1,000, 100,000 and 1,000,000 queued tasks; each size's plan, EXPLAIN
   (ANALYZE, BUFFERS), goes to the plans file;
2. wake-up lateness: 100,000 sleepers due over 10 s, drained by 2 worker processes
   (a burst), and 100,000 sleepers of which 20,000 fall due at 1,000 a second (steady);
   lateness is the claim's time minus the wake-up time, on the database's clock;
3. replay cost of 10, 100 and 1,000 steps, children and sleeps (`systems/replay.py`);
4. the cost of deleting 1,000 finished order trees (tasks, histories, waits, external
   events) from a table of 100,000 and 1,000,000 tasks: on lesson 12's schema (no index
   on three foreign keys), on the lesson's schema plus an index on
   event_waits (external_event_id), and with every foreign key indexed (where a schema's
   checks scan a table, the 1,000,000-task table is cut to 50 trees a batch,
   `--scanning-trees`: a batch of 1,000 would take some 13 minutes);
5. durable orders per second (lesson 09's order: a durable task and two children) with
   1, 2, 4 and 8 worker processes sharing 40 slots.

`--quick` (CI, `make bench-scale QUICK=1`): each case once, at a small size (claims on
1,000 and 10,000, 2,000 sleepers, deletes from 10,000, 1 and 2 processes), in about 30 s;
its report goes to a temporary directory, never over the results of a full run.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lessons.common.database import (
    DatabaseUnavailable,
    connect,
    database_url,
    drop_schema,
    reset_schema,
)
from lessons.common.stats import median

from .harness.cases import Case, DurableCase
from .harness.durable_system import DurableLayout
from .harness.measure import MiB
from .harness.plan import Outcome, run_plan
from .harness.processes import put_repository_on_pythonpath
from .harness.rows import Row
from .harness.vacuum import Vacuum
from .report.context import Context, describe_context
from .report.tables import grid_markdown, grid_text
from .systems.lesson_engine import LESSONS_DIRECTORY, LessonEngine, NoSuchLesson
from .systems.lesson_orders import EngineOrders
from .systems.replay import COUNT_SUSPENSIONS, KINDS, Replays
from .systems.retention import (
    DeleteTrees,
    ForeignKeyIndex,
    TreeSchema,
    trigger_times,
)
from .systems.scale import (
    CLAIM_SCHEMA,
    ORDERS_SCHEMA,
    WAKE_SCHEMA,
    ClaimAtSize,
    WakeUps,
)

# Lesson 15, once it lands, becomes the default here.
DEFAULT_LESSON = "lesson14_changing_code_safely"
RESULTS = Path(__file__).resolve().parent / "results"
STOCK_ONLY = frozenset({Vacuum.STOCK})
REPLAY_SCHEMA = "bench_scale_replay"
LESSON12_SCHEMA_SQL = LESSONS_DIRECTORY / "lesson12_flow_control" / "sql" / "schema.sql"
EVENT_WAITS_INDEX = ForeignKeyIndex("event_waits", "external_event_id")
EVERY_FOREIGN_KEY = (
    EVENT_WAITS_INDEX,
    ForeignKeyIndex("task_events", "copied_from_task_id", partial=True),
    ForeignKeyIndex("schedule_ticks", "task_id"),
)
# Over this many tasks, a schema whose deletes scan a table per row deletes fewer trees.
LARGE_TABLE = 100_000
CASES = ("claim", "wake", "replay", "delete", "orders")
# An order is a durable task and its two children.
TASKS_PER_ORDER = 3


def spread(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """Median (min-max) of `values` times `scale`: "1.23 (1.10-1.40)"; one run: "1.23"."""
    if not values:
        return "n/a"
    middle = f"{median(values) * scale:,.{digits}f}"
    if len(values) == 1:
        return middle
    return f"{middle} ({min(values) * scale:,.{digits}f}-{max(values) * scale:,.{digits}f})"


@dataclass
class ClaimRow(Row):
    tasks_per_claim: list[float] = field(default_factory=list)
    plan: str = ""


@dataclass(frozen=True)
class ClaimCase:
    engine: LessonEngine
    queued: int
    claims: int
    passes: frozenset[Vacuum] = STOCK_ONLY

    def row(self, vacuum: Vacuum) -> ClaimRow:
        return ClaimRow(
            system=self.engine.title, case="claim", settings=f"{self.queued:,}", vacuum=vacuum
        )

    def measure(self, vacuum: Vacuum, row: Row) -> str:
        assert isinstance(row, ClaimRow)
        times = ClaimAtSize(self.engine, self.queued, self.claims).run()
        row.p50s.append(times.p50)
        row.p99s.append(times.p99)
        row.tasks_per_claim.append(times.tasks_per_claim)
        row.plan = times.plan
        return f"p50 {times.p50 * 1000:.2f} ms, p99 {times.p99 * 1000:.2f} ms"


@dataclass
class WakeRow(Row):
    worsts: list[float] = field(default_factory=list)
    windows: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class WakeCase:
    label: str
    wake_ups: WakeUps
    passes: frozenset[Vacuum] = STOCK_ONLY

    def row(self, vacuum: Vacuum) -> WakeRow:
        wake = self.wake_ups
        return WakeRow(
            system=wake.engine.title,
            case=self.label,
            settings=f"{wake.sleepers:,} sleepers, {wake.due:,} due over {wake.window:g} s, "
            f"{wake.processes} processes x {wake.slots} slots",
            vacuum=vacuum,
        )

    def measure(self, vacuum: Vacuum, row: Row) -> str:
        assert isinstance(row, WakeRow)
        lateness = self.wake_ups.run()
        row.p50s.append(lateness.p50)
        row.p99s.append(lateness.p99)
        row.worsts.append(lateness.worst)
        row.rates.append(lateness.rate)
        row.windows.append(lateness.window)
        return (
            f"p50 {lateness.p50 * 1000:.1f} ms, p99 {lateness.p99 * 1000:.1f} ms,"
            f" {lateness.rate:,.0f} resumed/s"
        )


@dataclass
class ReplayCaseRow(Row):
    seconds: list[float] = field(default_factory=list)
    statements: int = 0
    suspensions: int = 0


@dataclass(frozen=True)
class ReplayCase:
    replays: Replays
    kind: str
    events: int
    runs: int
    passes: frozenset[Vacuum] = STOCK_ONLY

    def row(self, vacuum: Vacuum) -> ReplayCaseRow:
        return ReplayCaseRow(
            system=self.replays.engine.title,
            case=f"replay {self.kind}",
            settings=f"{self.events:,} events",
            vacuum=vacuum,
        )

    def measure(self, vacuum: Vacuum, row: Row) -> str:
        assert isinstance(row, ReplayCaseRow)
        pool = self.replays.open_pool(database_url())
        try:
            replay = self.replays.measure_replay(pool, self.kind, self.events, self.runs)
        finally:
            pool.close()
        row.seconds.extend(replay.runs)
        row.statements = replay.checkouts
        row.suspensions = replay.suspensions
        return f"{replay.seconds * 1000:.2f} ms ({replay.checkouts} statements)"


@dataclass
class DeleteRow(Row):
    trees: int = 0
    seconds: list[float] = field(default_factory=list)
    per_row: list[float] = field(default_factory=list)
    seq_scans: dict[str, int] = field(default_factory=dict)
    unindexed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DeleteCase:
    deletes: DeleteTrees
    scanning_trees: int
    passes: frozenset[Vacuum] = STOCK_ONLY

    def row(self, vacuum: Vacuum) -> DeleteRow:
        return DeleteRow(
            system=self.deletes.tree_schema.label,
            case="delete",
            settings=f"{self.deletes.tasks:,}",
            vacuum=vacuum,
        )

    def measure(self, vacuum: Vacuum, row: Row) -> str:
        assert isinstance(row, DeleteRow)
        deletes = self.deletes
        if not deletes.built:
            deletes.build()
            if deletes.unindexed and deletes.tasks > LARGE_TABLE:
                deletes.trees = min(deletes.trees, self.scanning_trees)
        batch = deletes.delete_batch()
        row.trees = batch.trees
        row.seconds.append(batch.seconds)
        row.per_row.append(batch.per_row)
        row.seq_scans = batch.seq_scans
        row.unindexed = deletes.unindexed
        row.added = deletes.added
        return (
            f"{batch.trees:,} trees in {batch.seconds:.2f} s, {batch.per_row * 1e6:,.0f} µs a row"
        )


def build_cases(options: argparse.Namespace, engine: LessonEngine) -> list[Case]:
    cases: list[Case] = []
    if "claim" in options.only:
        cases += [ClaimCase(engine, queued, options.claims) for queued in options.claim_sizes]
    if "wake" in options.only:
        burst = WakeUps(
            engine,
            options.sleepers,
            options.sleepers,
            options.wake_window,
            options.wake_processes,
            options.wake_slots,
        )
        steady = WakeUps(
            engine,
            options.sleepers,
            options.steady_due,
            options.steady_window,
            options.wake_processes,
            options.wake_slots,
        )
        cases += [WakeCase("burst", burst), WakeCase("steady", steady)]
    if "replay" in options.only:
        replays = Replays(engine, schema=REPLAY_SCHEMA)
        cases += [
            ReplayCase(replays, kind, events, options.replay_runs)
            for kind in KINDS
            for events in options.events
        ]
    if "delete" in options.only:
        cases += [
            DeleteCase(
                DeleteTrees(tree_schema, tasks, options.delete_trees), options.scanning_trees
            )
            for tasks in options.delete_sizes
            for tree_schema in tree_schemas(engine, tasks)
        ]
    if "orders" in options.only:
        cases += [
            DurableCase(
                EngineOrders(engine, schema=ORDERS_SCHEMA),
                options.orders,
                DurableLayout(processes, options.total_slots // processes, 5.0),
                passes=STOCK_ONLY,
            )
            for processes in options.processes
        ]
    return cases


def tree_schemas(engine: LessonEngine, tasks: int) -> list[TreeSchema]:
    suffix = f"{tasks // 1000}k"
    return [
        TreeSchema("lesson 12", f"bench_scale_delete_12_{suffix}", LESSON12_SCHEMA_SQL),
        TreeSchema(
            f"{engine.title} + {EVENT_WAITS_INDEX.describe()}",
            f"bench_scale_delete_{engine.number}_{suffix}",
            engine.schema_sql,
            (EVENT_WAITS_INDEX,),
        ),
        TreeSchema(
            f"{engine.title}, every foreign key indexed",
            f"bench_scale_delete_{engine.number}_all_{suffix}",
            engine.schema_sql,
            EVERY_FOREIGN_KEY,
        ),
    ]


def claim_table(rows: Sequence[Row]) -> list[list[str]]:
    claims = [row for row in rows if isinstance(row, ClaimRow)]
    smallest = claims[0].p50 if claims else None
    table = [
        [
            "Queued tasks",
            "Runs",
            "p50, ms",
            "p99, ms",
            "Tasks per claim",
            "p50 vs the smallest queue",
            "EXPLAIN ANALYZE: server time, buffers",
        ]
    ]
    for row in claims:
        table.append(
            [
                row.settings,
                str(len(row.p50s)),
                spread(row.p50s, 1000),
                spread(row.p99s, 1000),
                f"{median(row.tasks_per_claim):.1f}",
                f"{(row.p50 or 0) / smallest:.2f}x" if smallest else "n/a",
                plan_summary(row.plan),
            ]
        )
    return table


def plan_summary(plan: str) -> str:
    """ "0.61 ms, 191 buffers (all hits)" from auto_explain's output."""
    duration = re.search(r"duration: ([\d.]+) ms", plan)
    buffers = re.search(r"Buffers: shared hit=(\d+)(?: read=(\d+))?", plan)
    if duration is None:
        return "no plan"
    words = f"{float(duration[1]):.2f} ms"
    if buffers is not None:
        read = int(buffers[2] or 0)
        words += f", {int(buffers[1]) + read} buffers ({read} read)"
    return words


def wake_table(rows: Sequence[Row]) -> list[list[str]]:
    table = [
        [
            "Case",
            "Sleepers, due over the window",
            "Runs",
            "Lateness p50, ms",
            "p99, ms",
            "Worst, ms",
            "Resumed per second",
        ]
    ]
    for row in rows:
        if isinstance(row, WakeRow):
            table.append(
                [
                    row.case,
                    row.settings,
                    str(len(row.p50s)),
                    spread(row.p50s, 1000, 1),
                    spread(row.p99s, 1000, 1),
                    spread(row.worsts, 1000, 1),
                    spread(row.rates, 1, 0),
                ]
            )
    return table


def replay_table(rows: Sequence[Row]) -> list[list[str]]:
    table = [
        [
            "Kind",
            "Events",
            "Runs",
            "One run's replay, ms",
            "Per event, µs (median)",
            "Statements",
            "Suspensions",
        ]
    ]
    for row in rows:
        if isinstance(row, ReplayCaseRow):
            events = int(row.settings.split()[0].replace(",", ""))
            table.append(
                [
                    row.case.removeprefix("replay "),
                    f"{events:,}",
                    str(len(row.seconds)),
                    spread(row.seconds, 1000),
                    f"{median(row.seconds) / events * 1e6:.1f}",
                    str(row.statements),
                    str(row.suspensions),
                ]
            )
    return table


def delete_table(rows: Sequence[Row]) -> list[list[str]]:
    table = [
        [
            "Tasks in the table",
            "Schema",
            "Trees a batch",
            "Runs",
            "Batch, s",
            "Per tree, ms",
            "Per row, µs",
            "Seq scans a batch: tasks, task_events, event_waits",
            "Foreign keys with no index",
        ]
    ]
    for row in rows:
        if isinstance(row, DeleteRow):
            scans = row.seq_scans
            table.append(
                [
                    row.settings,
                    row.system,
                    f"{row.trees:,}",
                    str(len(row.seconds)),
                    spread(row.seconds, 1, 3),
                    f"{median(row.seconds) / row.trees * 1000:,.2f}",
                    spread(row.per_row, 1e6, 1),
                    f"{scans.get('tasks', 0):,}, {scans.get('task_events', 0):,}, "
                    f"{scans.get('event_waits', 0):,}",
                    ", ".join(row.unindexed) or "none",
                ]
            )
    return table


# The checks that cost something when their column has no index; the rest use indexes
# (primary keys, or the lessons' own) in every schema here.
SLOW_CHECKS = (
    ("tasks_parent_id_fkey", "tasks (parent_id)"),
    ("task_events_child_task_id_fkey", "task_events (child_task_id)"),
    ("task_events_copied_from_task_id_fkey", "task_events (copied_from_task_id)"),
    ("event_waits_external_event_id_fkey", "event_waits (external_event_id)"),
)


def check_table(explained: Sequence[tuple[DeleteTrees, str]]) -> list[list[str]]:
    table = [
        [
            "Tasks in the table",
            "Schema",
            *(f"{label}, µs a check" for _, label in SLOW_CHECKS),
            "Every other check, µs",
        ]
    ]
    for deletes, plans in explained:
        times = trigger_times(plans)
        cells = []
        for name, _ in SLOW_CHECKS:
            spent, calls = times.pop(name, (0.0, 0))
            cells.append(f"{spent / calls * 1000:,.1f}" if calls else "n/a")
        others = [spent / calls * 1000 for spent, calls in times.values() if calls]
        cells.append(f"{max(others):,.1f} at most" if others else "n/a")
        table.append([f"{deletes.tasks:,}", deletes.tree_schema.label, *cells])
    return table


def orders_table(rows: Sequence[Row]) -> list[list[str]]:
    table = [
        [
            "Worker processes x slots",
            "Runs",
            "Orders per second",
            "Tasks per second (3 an order)",
            "Peak RSS, one process",
        ]
    ]
    for row in rows:
        if row.kind == "durable":
            layout = row.settings.split(",")[0]
            table.append(
                [
                    layout,
                    str(len(row.rates)),
                    spread(row.rates, 1, 0),
                    spread(row.rates, TASKS_PER_ORDER, 0),
                    f"{(row.peak or 0) / MiB:.1f} MiB",
                ]
            )
    return table


METHOD = (
    "Every case starts from a fresh schema of its own on the same server, built by the "
    "benchmark (rows written straight into the lesson's tables, then VACUUM ANALYZE and a "
    "CHECKPOINT, as a table in use would be), and runs the lesson's own code: its "
    "generated queries in this process, its own worker processes (`WorkerProcess`) for "
    "wake-ups and orders. Runs of all cases alternate (round-robin); each figure is the "
    "median of its runs, with the smallest and largest in brackets. Percentiles are "
    "nearest-rank. Claims and replays are timed in this process (perf_counter, so each "
    "includes its round trips); lateness and orders per second are on the database's "
    "clock; deletes are timed in this process, one transaction a batch, commit included."
)


EXPLANATION = """## What bounds each case

**One claim: round trips and commits, not the queue's size.** The claim reads the head of
`tasks_queued_idx`, a partial index of the queued tasks in claim order: finding the best 10
is one descent of the B-tree (two levels for a thousand tasks, three for a million) and
10 heap rows; the statement's other parts (sleepers due, keys, rate limits) each probe an empty
partial index. So the plan reads about the same 160-215 buffers at every size, all of them
in shared buffers, and the call's p50 is the statement, its commit and its round trip. A
bigger queue is no slower (here the 1,000-task queue was, if anything, a little slower, and
its explained claim read the most buffers). The p99 is this machine's scheduling: the
client, the server and the machine's other work share two cores.

**Wake-ups: the poller's reaction while the workers keep up, the backlog when they
cannot.** A sleeper that falls due is found by the claim's `to_resume` (`tasks_suspended_idx
(queue, wake_at)`, the oldest due first), and an idle poller waits no longer than the next
wake-up time it can see (`SecondsUntilNextWakeUp`). In the steady case, 1,000 a second
with 80,000 more sleepers in the same index, a wake-up is late by that wait's precision
and one claim's round trip: milliseconds. In the burst, 100,000 fall due in 10 s, several
times what two processes can resume: the lateness is the queue of due sleepers ahead of
each one, and the p99 is about the drain's length minus the window. The drain is bound by
each resume's own work (a claim shared with others, the history's one read, the replay of
the sleep, the batched result and its commit) and by CPU: two worker processes and the
server on two cores.

**Replay: CPU in the worker, linear in the events.** One read of the history
(`DurableContext.load`: one statement whatever its length, the "statements" column), then
Python: each replayed operation computes its call's key (canonical JSON and SHA-256) and
compares it with the event's; no statement and no suspension per event. A few tens of
microseconds an event, so 1,000 events replay in tens of milliseconds.

**Deletes: one check per foreign key per row, and a sequential scan where there is no
index.** Every row deleted from `tasks` or `external_events` runs, for each foreign key
that points at it, a query for rows still referencing it (ri_triggers.c). With an index on
the referencing column that is an index probe, about 10 µs; without one it is a
sequential scan of the whole referencing table, for every row deleted, so a batch costs
rows deleted x table size. Lesson 12's schema scans `tasks` (parent_id) and `task_events`
(child_task_id) for every task deleted, and `event_waits` for every external event: the
seq scan counts say so (3,001 scans of tasks for 3,000 tasks deleted, the one more being
the search for the children). Lesson 13 indexed the first two, and the benchmark adds
`event_waits (external_event_id)`, which lesson 15 will ship; what is left on lesson 14's
schema is `task_events (copied_from_task_id)`, which no lesson indexes: every task deleted
still scans `task_events` once (3,000 scans a batch), and that check alone is almost all
of the batch. With every foreign key indexed (the benchmark also adds task_events
(copied_from_task_id), partial, and schedule_ticks (task_id)) a batch costs under 20 µs a
row, the same on a table ten times larger: index probes, and the WAL of the deleted rows.
On the schemas with a scan, the 1,000,000-task table is cut to 50 trees a batch (a batch of
1,000 would take about 13 minutes on lesson 12's): the cost a row is what to compare.

**Orders: commits, and NOTIFY's commit lock, on two cores.** An order is 11 to 14
transactions (the parent's claims and resumes, two children spawned, claimed and
finished, the parent woken twice; measured aside from `pg_stat_database`), each a commit
with fsync on. Sampling `pg_stat_activity` every 10 ms during the same orders, the active
backends waited mostly on `Lock:object` (6-9 at a time with 1-2 processes: a transaction
that has sent a NOTIFY holds a server-wide lock through its commit, see "Durable work"
above) and `LWLock:WALWrite`. More processes than cores add no CPU: every notification
wakes every process's poller, so more claims find little, each result writer batches
fewer results, and commits per order went from 10.6 (1 process) to 14.4 (8), worker CPU
per order from 3.7 ms to 6.9 ms. The 40 slots are the same in every row; only how they are
split changes.

The machine is shared: the load average above says how busy it was, and single runs move by
20-50 %; the ratios within one run are what the figures are for.
"""


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


QUICK = {
    "runs": 1,
    "claim_sizes": [1_000, 10_000],
    "claims": 100,
    "sleepers": 2_000,
    "wake_window": 1.0,
    "steady_due": 500,
    "steady_window": 1.0,
    "replay_runs": 3,
    "delete_sizes": [10_000],
    "processes": [1, 2],
    "orders": 200,
}
FULL = {
    "runs": 3,
    "claim_sizes": [1_000, 100_000, 1_000_000],
    "claims": 300,
    "sleepers": 100_000,
    "wake_window": 10.0,
    "steady_due": 20_000,
    "steady_window": 20.0,
    "replay_runs": 5,
    "delete_sizes": [100_000, 1_000_000],
    "processes": [1, 2, 4, 8],
    "orders": 2_000,
}


def parse_options(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lesson", default=DEFAULT_LESSON, help="a lesson package name")
    parser.add_argument("--quick", action="store_true", help="CI: each case once, small sizes")
    parser.add_argument("--only", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--runs", type=int, help="runs of each case (full 3, quick 1)")
    parser.add_argument("--claim-sizes", type=int, nargs="+", help="queued tasks")
    parser.add_argument("--claims", type=int, help="timed claims a run")
    parser.add_argument("--sleepers", type=int, help="suspended sleepers")
    parser.add_argument("--wake-window", type=float, help="seconds the burst falls due over")
    parser.add_argument("--steady-due", type=int, help="sleepers due in the steady case")
    parser.add_argument("--steady-window", type=float, help="seconds they fall due over")
    parser.add_argument("--wake-processes", type=int, default=2)
    parser.add_argument("--wake-slots", type=int, default=20, help="slots per process")
    parser.add_argument("--events", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--replay-runs", type=int, help="replays per case and run")
    parser.add_argument("--delete-sizes", type=int, nargs="+", help="tasks in the table")
    parser.add_argument("--delete-trees", type=int, default=1000, help="trees a batch")
    parser.add_argument(
        "--scanning-trees",
        type=int,
        default=50,
        help=f"trees a batch on a table of over {LARGE_TABLE:,} tasks with a foreign key "
        "with no index (each of its checks scans a table)",
    )
    parser.add_argument("--processes", type=int, nargs="+", help="worker processes")
    parser.add_argument("--total-slots", type=int, default=40, help="shared by the processes")
    parser.add_argument("--orders", type=int, help="orders a run")
    parser.add_argument("--output", type=Path, help="Markdown report (quick: a temporary file)")
    options = parser.parse_args(argv)
    for name, value in (QUICK if options.quick else FULL).items():
        if getattr(options, name) is None:
            setattr(options, name, value)
    if options.output is None:
        directory = Path(tempfile.mkdtemp(prefix="scale_growth_")) if options.quick else RESULTS
        options.output = directory / "scale_growth.md"
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    try:
        engine = LessonEngine.named(options.lesson)
    except NoSuchLesson as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    missing = engine.missing_order_children() if "orders" in options.only else []
    if missing:
        print(
            f"error: {engine.title}'s shop has no {' nor '.join(missing)}, the children of an "
            "order: leave the orders out (--only claim wake replay delete)",
            file=sys.stderr,
        )
        return 2
    put_repository_on_pythonpath()
    load_at_start = load_average()
    cases = build_cases(options, engine)
    try:
        if "replay" in options.only:
            reset_schema(REPLAY_SCHEMA, engine.schema_sql)
            with connect(schema=REPLAY_SCHEMA) as conn:
                conn.execute(COUNT_SUSPENSIONS)
        outcome = run_plan(cases, passes=[Vacuum.STOCK], runs=options.runs)
        explained = [
            (case.deletes, case.deletes.explain(min(case.deletes.trees, 100)))
            for case in cases
            if isinstance(case, DeleteCase)
        ]
    except DatabaseUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        for case in cases:
            if isinstance(case, DeleteCase):
                case.deletes.drop()
        for schema in (CLAIM_SCHEMA, WAKE_SCHEMA, ORDERS_SCHEMA, REPLAY_SCHEMA):
            drop_schema(schema)
    report(options, engine, outcome, explained, load_at_start)
    return 0


def report(
    options: argparse.Namespace,
    engine: LessonEngine,
    outcome: Outcome,
    explained: Sequence[tuple[DeleteTrees, str]],
    load_at_start: str,
) -> None:
    base = describe_context(outcome, libraries=("psycopg", "psycopg-pool"))
    lines = [line for line in base.lines if line[0] != "Method"]
    lines.insert(0, ("Lesson", f"{engine.title} (`--lesson {engine.package}`)"))
    lines.insert(3, ("Load average", f"at the start {load_at_start}; at the end {load_average()}"))
    lines.insert(-1, ("Method", METHOD))
    context = Context(lines)
    rows = outcome.rows
    sections = [
        (
            f"1. One claim (ClaimTasks, max_tasks 10), timed client side, {options.claims} "
            "timed claims a run",
            claim_table(rows),
        ),
        ("2. Wake-up lateness (claimed_at - wake_at)", wake_table(rows)),
        (f"3. Replay of one run, {options.replay_runs} replays a case and run", replay_table(rows)),
        ("4. Deleting finished order trees", delete_table(rows)),
        (
            "4b. Each foreign key's checks, from EXPLAIN ANALYZE of one batch",
            check_table(explained),
        ),
        (
            f"5. Durable orders, {options.orders:,} a run, {options.total_slots} slots in all",
            orders_table(rows),
        ),
    ]
    sections = [(heading, table) for heading, table in sections if len(table) > 1]
    plans_path = options.output.with_name(options.output.stem + "_plans.md")
    print()
    print(context.text)
    for heading, table in sections:
        print(f"\n{heading}\n")
        print(grid_text(table))
    parts = [
        f"# Lesson 15's measured growth, on {engine.title}'s engine",
        "",
        "`make bench-scale` (`python -m benchmarks.scale_growth`). What bounds each figure is "
        f"below the tables; the plans are in [`{plans_path.name}`]({plans_path.name}).",
        "",
        context.markdown,
    ]
    for heading, table in sections:
        parts += ["", f"## {heading}", "", grid_markdown(table)]
    parts += ["", EXPLANATION]
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text("\n".join(parts))
    plans_path.write_text(plans_markdown(engine, rows, explained))
    print(f"\nwritten to {options.output} and {plans_path}")


def plans_markdown(
    engine: LessonEngine, rows: Sequence[Row], explained: Sequence[tuple[DeleteTrees, str]]
) -> str:
    parts = [
        f"# Plans of lesson 15's scale benchmark, on {engine.title}'s engine",
        "",
        "Written by `python -m benchmarks.scale_growth` with the figures of "
        "[`scale_growth.md`](scale_growth.md).",
    ]
    for row in rows:
        if isinstance(row, ClaimRow):
            parts += [
                "",
                f"## One claim, {row.settings} queued tasks",
                "",
                "The lesson's own `Querier.claim_tasks`, on a connection set up as its poller's "
                "(one generic plan), after the timed claims of the last run; EXPLAIN (ANALYZE, "
                "BUFFERS) through auto_explain. The statement's text is left out.",
                "",
                "```",
                without_query_text(row.plan),
                "```",
            ]
    for deletes, plans in explained:
        parts += [
            "",
            f"## Deleting trees, {deletes.tasks:,} tasks, {deletes.tree_schema.label}",
            "",
            "Indexes the benchmark added: "
            + (", ".join(deletes.added) or "none")
            + "; foreign keys with no index: "
            + (", ".join(deletes.unindexed) or "none")
            + ".",
            "",
            "```",
            plans,
            "```",
        ]
    return "\n".join(parts) + "\n"


def without_query_text(plan: str) -> str:
    """auto_explain's output less the statement's text (the plan starts at its first node)."""
    if "Query Text:" not in plan:
        return plan
    head, rest = plan.split("Query Text:", 1)
    lines = rest.splitlines()
    start = next((n for n, line in enumerate(lines) if "(cost=" in line), 0)
    return head.rstrip() + "\n" + "\n".join(lines[start:])


if __name__ == "__main__":
    sys.exit(main())
