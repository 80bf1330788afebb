"""Lesson 15's vacuum and bloat: what a long run of tasks leaves in the hot tables.

    python -m benchmarks.vacuum_bloat [--lesson lesson15_operating_at_scale] [--quick]
        [--tasks 1000000] [--regimes stock tuned]

On one lesson's own engine (`--lesson`), for each regime of per-table settings (`stock`:
none; `tuned`: per-table autovacuum settings and fillfactor on tasks, task_events and
workers; `autovacuum` and `fillfactor`: each half of `tuned` alone), on a fresh schema:

1. `--tasks` tasks flow through the lesson's generated queries as its workers take them
   (ClaimTasks, AppendEvent for the durable tenth, FinishAttempts), in 2 worker processes,
   with a backlog of queued tasks kept topped up and a fleet of workers' rows heartbeating
   (RecordHeartbeat);
2. one ClaimTasks of 10 is timed every 20 ms through the run, and one more explained
   (auto_explain: its buffers) at the start of each tenth;
3. every few seconds, pg_stat_user_tables, the heap's size and each index's size of tasks,
   task_events and workers are sampled, with whether a vacuum is running on each.

It prints and writes, per regime, the claim's p50 and p99 by tenth of the run and by the
dead rows in tasks at the time, the tables at the end, a timeline; then the regimes side by
side. Both regimes run under the same server-wide autovacuum_naptime (see `--naptime`).

`--quick` (CI, `make bench-vacuum QUICK=1`): 40,000 tasks a regime, in about 30 s for
both; its report goes to a temporary directory, never over the results of a full run.
"""

from __future__ import annotations

import argparse
import bisect
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lessons.common.database import DatabaseUnavailable, drop_schema
from lessons.common.stats import percentile

from .harness.measure import MiB
from .harness.naptime import vacuum_pass
from .harness.plan import Outcome, run_plan
from .harness.rows import Row
from .harness.vacuum import Vacuum
from .report.context import Context, describe_context
from .report.tables import grid_markdown, grid_text
from .systems.bloat import (
    HOT_TABLES,
    QUEUED_INDEX_SCAN,
    Flow,
    FlowResult,
    FlowShape,
    Regime,
    TableSample,
)
from .systems.lesson_engine import LessonEngine, NoSuchLesson

DEFAULT_LESSON = "lesson15_operating_at_scale"
RESULTS = Path(__file__).resolve().parent / "results"
SCHEMA = "bench_vacuum_bloat"
KiB = 2**10

# tasks: every claim and every result is an update that cannot be HOT (see the README), so
# each task leaves two dead rows and an entry in several indexes; vacuum should pass after a
# fixed number of them, not after a fifth of a table that grows, and unthrottled.
TASKS_AUTOVACUUM = {
    "autovacuum_vacuum_scale_factor": 0,
    "autovacuum_vacuum_threshold": 10_000,
    "autovacuum_vacuum_insert_scale_factor": 0,
    "autovacuum_vacuum_insert_threshold": 10_000,
    "autovacuum_vacuum_cost_delay": 0,
}
# workers: a few hundred rows, each updated every second (heartbeats, HOT): a small
# fixed threshold keeps it at a page or two.
WORKERS_AUTOVACUUM = {
    "autovacuum_vacuum_scale_factor": 0,
    "autovacuum_vacuum_threshold": 1_000,
    "autovacuum_vacuum_cost_delay": 0,
}
# task_events: insert-only (histories grow, are read, and are deleted with their tree):
# vacuum only sets the visibility map and freezes, after a fixed number of inserts.
TASK_EVENTS_AUTOVACUUM = {
    "autovacuum_vacuum_insert_scale_factor": 0,
    "autovacuum_vacuum_insert_threshold": 10_000,
    "autovacuum_vacuum_cost_delay": 0,
}
TASKS_FILLFACTOR = {"fillfactor": 85}
WORKERS_FILLFACTOR = {"fillfactor": 70}
REGIMES = {
    "stock": Regime("stock"),
    "tuned": Regime(
        "tuned",
        {
            "tasks": {**TASKS_FILLFACTOR, **TASKS_AUTOVACUUM},
            "task_events": TASK_EVENTS_AUTOVACUUM,
            "workers": {**WORKERS_FILLFACTOR, **WORKERS_AUTOVACUUM},
        },
    ),
    "autovacuum": Regime(
        "autovacuum",
        {
            "tasks": TASKS_AUTOVACUUM,
            "task_events": TASK_EVENTS_AUTOVACUUM,
            "workers": WORKERS_AUTOVACUUM,
        },
    ),
    "fillfactor": Regime("fillfactor", {"tasks": TASKS_FILLFACTOR, "workers": WORKERS_FILLFACTOR}),
}
# The indexes of tasks the report names (the claim's, the running tasks', the primary key,
# and the two that hold every version of every task: finished roots and idempotency keys).
TASK_INDEXES = (
    "tasks_queued_idx",
    "tasks_running_idx",
    "tasks_pkey",
    "tasks_idempotency_key_idx",
    "tasks_finished_roots_idx",
)
# Bands of dead rows in tasks, as fractions of the run's tasks, for the claims by dead rows.
DEAD_BANDS = (0.0, 0.05, 0.15, 0.30)


@dataclass
class BloatRow(Row):
    result: FlowResult | None = None


@dataclass(frozen=True)
class BloatCase:
    """One regime's flow, as a case of the harness's plan (a run again if the server restarts)."""

    flow: Flow
    passes: frozenset[Vacuum] = field(default_factory=lambda: frozenset({Vacuum.STOCK}))

    def row(self, vacuum: Vacuum) -> BloatRow:
        return BloatRow(
            system=self.flow.engine.title,
            case=self.flow.regime.name,
            settings=self.flow.regime.describe(),
            vacuum=vacuum,
        )

    def measure(self, vacuum: Vacuum, row: Row) -> str:
        assert isinstance(row, BloatRow)
        result = self.flow.run()
        row.result = result
        row.rates.append(result.rate)
        seconds = [claim.seconds for claim in result.claims]
        row.p50s.append(percentile(seconds, 0.5))
        row.p99s.append(percentile(seconds, 0.99))
        end = result.samples[-1].tables["tasks"]
        return (
            f"{result.shape.tasks:,} tasks in {result.seconds:.0f} s ({result.rate:,.0f}/s);"
            f" claim p50 {row.p50s[-1] * 1000:.2f} ms, p99 {row.p99s[-1] * 1000:.2f} ms;"
            f" tasks: heap {end.heap_bytes / MiB:.0f} MiB, indexes {end.indexes_bytes / MiB:.0f}"
            f" MiB, {end.autovacuums} autovacuums"
        )


def milliseconds(values: Sequence[float], fraction: float) -> str:
    return f"{percentile(values, fraction) * 1000:.2f}" if values else "n/a"


def count(values: Sequence[float], fraction: float) -> str:
    return f"{percentile(values, fraction):,.0f}" if values else "n/a"


def mebibytes(size: int) -> str:
    return f"{size / MiB:,.1f}"


def share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f} %" if whole else "n/a"


@dataclass(frozen=True)
class Claims:
    """The probe's claims in one slice of the run: timed here, and explained by the server."""

    timed: list[float]
    server: list[float]
    buffers: list[float]
    index_buffers: list[float]

    @classmethod
    def where(cls, result: FlowResult, keep: Callable[[int], bool]) -> Claims:
        """The claims made when `keep(tasks finished by then)` held."""
        plans = [plan for plan in result.explained if keep(plan.finished)]
        return cls(
            timed=[claim.seconds for claim in result.claims if keep(claim.finished)],
            server=[plan.seconds for plan in plans],
            buffers=[float(plan.buffers) for plan in plans],
            index_buffers=[float(plan.index_buffers) for plan in plans],
        )

    def cells(self) -> list[str]:
        return [
            f"{len(self.timed):,}",
            milliseconds(self.timed, 0.5),
            milliseconds(self.timed, 0.99),
            milliseconds(self.server, 0.5),
            milliseconds(self.server, 0.99),
            count(self.buffers, 0.5),
            count(self.buffers, 0.99),
            count(self.index_buffers, 0.5),
            count(self.index_buffers, 0.99),
        ]


CLAIM_HEADINGS = [
    "Timed claims",
    "Claim p50, ms",
    "p99, ms",
    "Server p50, ms",
    "p99, ms",
    "Buffers p50",
    "p99",
    "In tasks_queued_idx p50",
    "p99",
]


def tenth_table(result: FlowResult) -> list[list[str]]:
    table = [
        [
            "Tenth (tasks finished)",
            *CLAIM_HEADINGS,
            "tasks: dead rows, peak",
            "heap, MiB",
            "indexes, MiB",
            "tasks_queued_idx, KiB",
            "autovacuums",
        ]
    ]
    size = result.shape.tasks // 10
    last: TableSample | None = None
    for tenth in range(10):
        claims = Claims.where(result, in_tenth(result, tenth))
        tasks = [s.tables["tasks"] for s in result.samples if result.tenth(s.finished) == tenth]
        # A tenth shorter than the sampling interval has no sample: the one before it holds.
        last = tasks[-1] if tasks else last
        table.append(
            [
                f"{tenth + 1} ({tenth * size:,}-{(tenth + 1) * size:,})",
                *claims.cells(),
                f"{max(t.dead for t in tasks):,}" if tasks else "n/a",
                mebibytes(last.heap_bytes) if last else "n/a",
                mebibytes(last.indexes_bytes) if last else "n/a",
                f"{last.index_bytes.get('tasks_queued_idx', 0) / KiB:,.0f}" if last else "n/a",
                str(last.autovacuums) if last else "n/a",
            ]
        )
    return table


def in_tenth(result: FlowResult, tenth: int) -> Callable[[int], bool]:
    return lambda finished: result.tenth(finished) == tenth


def dead_rows_then(result: FlowResult) -> Callable[[int], int]:
    """Dead rows in tasks at the last sample taken before a number of tasks were finished."""
    points = [sample.finished for sample in result.samples]

    def dead(finished: int) -> int:
        index = bisect.bisect_right(points, finished) - 1
        return result.samples[index].tables["tasks"].dead if index >= 0 else 0

    return dead


def dead_band_table(result: FlowResult) -> list[list[str]]:
    table = [["Dead rows in tasks at the time", *CLAIM_HEADINGS]]
    bounds = [int(fraction * result.shape.tasks) for fraction in DEAD_BANDS]
    dead_then = dead_rows_then(result)
    for n, low in enumerate(bounds):
        high = bounds[n + 1] if n + 1 < len(bounds) else None

        def in_band(done: int, low: int = low, high: int | None = high) -> bool:
            dead = dead_then(done)
            return dead >= low and (high is None or dead < high)

        label = f"{low:,} to {high:,}" if high is not None else f"{low:,} or more"
        table.append([label, *Claims.where(result, in_band).cells()])
    return table


def tables_table(result: FlowResult) -> list[list[str]]:
    table = [
        [
            "Table",
            "Live rows",
            "Dead rows: peak, end",
            "Heap, MiB",
            "Indexes, MiB",
            "Inserts",
            "Updates",
            "HOT",
            "Non-HOT to another page",
            "Autovacuums (time, s)",
            "Samples with a vacuum running",
        ]
    ]
    samples = result.samples
    for name in HOT_TABLES:
        end = samples[-1].tables[name]
        not_hot = end.updates - end.hot_updates
        running = sum(sample.tables[name].vacuuming for sample in samples)
        table.append(
            [
                name,
                f"{end.live:,}",
                f"{max(s.tables[name].dead for s in samples):,}, {end.dead:,}",
                mebibytes(end.heap_bytes),
                mebibytes(end.indexes_bytes),
                f"{end.inserts:,}",
                f"{end.updates:,}",
                share(end.hot_updates, end.updates),
                share(end.new_page_updates, not_hot),
                f"{end.autovacuums} ({end.autovacuum_ms / 1000:.1f})",
                share(running, len(samples)),
            ]
        )
    return table


def timeline_table(result: FlowResult, every: float) -> list[list[str]]:
    table = [
        [
            "s",
            "Finished",
            "tasks: dead",
            "heap, MiB",
            "indexes, MiB",
            "tasks_queued_idx, KiB",
            "autovacuums",
            "workers: dead, heap KiB",
            "task_events: live, heap MiB, autovacuums",
        ]
    ]
    shown = -every
    for sample in result.samples:
        if sample.seconds - shown < every and sample is not result.samples[-1]:
            continue
        shown = sample.seconds
        tasks, workers, events = (sample.tables[name] for name in HOT_TABLES)
        table.append(
            [
                f"{sample.seconds:.0f}",
                f"{sample.finished:,}",
                f"{tasks.dead:,}",
                mebibytes(tasks.heap_bytes),
                mebibytes(tasks.indexes_bytes),
                f"{tasks.index_bytes.get('tasks_queued_idx', 0) / KiB:,.0f}",
                f"{tasks.autovacuums}{' (running)' if tasks.vacuuming else ''}",
                f"{workers.dead:,}, {workers.heap_bytes / KiB:,.0f}",
                f"{events.live:,}, {mebibytes(events.heap_bytes)}, {events.autovacuums}",
            ]
        )
    return table


def comparison_table(results: Sequence[FlowResult]) -> list[list[str]]:
    """The regimes side by side: one line per figure, one column per regime."""
    table = [["", *(result.regime.name for result in results)]]
    for label, cell in COMPARED:
        table.append([label, *(cell(result) for result in results)])
    return table


def _end(result: FlowResult, table: str) -> TableSample:
    return result.samples[-1].tables[table]


def _peak_dead(result: FlowResult, table: str) -> str:
    return f"{max(sample.tables[table].dead for sample in result.samples):,}"


def _autovacuums(result: FlowResult, table: str) -> str:
    sample = _end(result, table)
    return f"{sample.autovacuums} ({sample.autovacuum_ms / 1000:.1f} s)"


def _hot(result: FlowResult, table: str) -> str:
    sample = _end(result, table)
    return share(sample.hot_updates, sample.updates)


def _new_page(result: FlowResult, table: str) -> str:
    sample = _end(result, table)
    return share(sample.new_page_updates, sample.updates - sample.hot_updates)


def _index(result: FlowResult, name: str) -> str:
    size = _end(result, "tasks").index_bytes.get(name)
    density = (result.index_density or {}).get(name)
    words = f"{size / MiB:,.2f} MiB" if size is not None else "n/a"
    if density is not None and density[1]:
        words += f" ({density[0]:.0f} % full, {density[2]:,} empty pages)"
    return words


def _claims(tenths: range) -> Callable[[FlowResult], Claims]:
    def claims(result: FlowResult) -> Claims:
        return Claims.where(result, lambda done: result.tenth(done) in tenths)

    return claims


WHOLE_RUN, FIRST_TENTH, LAST_TENTH = _claims(range(10)), _claims(range(1)), _claims(range(9, 10))

COMPARED: list[tuple[str, Callable[[FlowResult], str]]] = [
    ("Duration, s (tasks per second)", lambda r: f"{r.seconds:.0f} ({r.rate:,.0f})"),
    ("Claim p50 / p99, ms: whole run", lambda r: _p50_p99(WHOLE_RUN(r).timed)),
    ("Claim p50 / p99, ms: first tenth", lambda r: _p50_p99(FIRST_TENTH(r).timed)),
    ("Claim p50 / p99, ms: last tenth", lambda r: _p50_p99(LAST_TENTH(r).timed)),
    ("Server p50 / p99, ms: whole run", lambda r: _p50_p99(WHOLE_RUN(r).server)),
    ("Server p50 / p99, ms: last tenth", lambda r: _p50_p99(LAST_TENTH(r).server)),
    ("Buffers a claim, p50 / p99: whole run", lambda r: _buffers(WHOLE_RUN(r).buffers)),
    ("Buffers a claim, p50 / p99: last tenth", lambda r: _buffers(LAST_TENTH(r).buffers)),
    (
        "Its scan of tasks_queued_idx, buffers p50 / p99: whole run",
        lambda r: _buffers(WHOLE_RUN(r).index_buffers),
    ),
    ("tasks: dead rows, peak", lambda r: _peak_dead(r, "tasks")),
    ("tasks: autovacuums (their time)", lambda r: _autovacuums(r, "tasks")),
    ("tasks: heap, MiB", lambda r: mebibytes(_end(r, "tasks").heap_bytes)),
    ("tasks: all indexes, MiB", lambda r: mebibytes(_end(r, "tasks").indexes_bytes)),
    *((f"tasks: {name}", lambda r, name=name: _index(r, name)) for name in TASK_INDEXES),
    ("tasks: HOT updates", lambda r: _hot(r, "tasks")),
    ("tasks: non-HOT updates to another page", lambda r: _new_page(r, "tasks")),
    ("workers: HOT updates", lambda r: _hot(r, "workers")),
    ("workers: dead rows, peak", lambda r: _peak_dead(r, "workers")),
    ("workers: heap, KiB", lambda r: f"{_end(r, 'workers').heap_bytes / KiB:,.0f}"),
    ("workers: autovacuums (their time)", lambda r: _autovacuums(r, "workers")),
    ("task_events: heap, MiB", lambda r: mebibytes(_end(r, "task_events").heap_bytes)),
    ("task_events: autovacuums (their time)", lambda r: _autovacuums(r, "task_events")),
    ("Heartbeats recorded", lambda r: f"{r.heartbeats:,}"),
]


def _p50_p99(values: Sequence[float]) -> str:
    return f"{milliseconds(values, 0.5)} / {milliseconds(values, 0.99)}"


def _buffers(values: Sequence[float]) -> str:
    return f"{count(values, 0.5)} / {count(values, 0.99)}"


METHOD = (
    "Each regime starts from a fresh schema of the lesson, with its table settings set "
    "before the first row is written. The tasks flow through the lesson's own generated "
    "queries the way its workers take them: worker processes claim with ClaimTasks, record "
    "the one step of each durable task with AppendEvent (as its durable context does), and "
    "complete them with FinishAttempts; this process keeps the backlog topped up (one "
    "INSERT of up to 5,000 rows, the rows CreateTask writes for a plain enqueue: enqueueing "
    "is not what is measured) and renews the leases of a fleet of workers' rows with "
    "RecordHeartbeat. Through the run, a probe in this process makes one ClaimTasks of 10 "
    "every 20 ms, on two connections in turn set up as the poller's (one generic plan): "
    "one timed here (perf_counter, round trip and commit included), the other through "
    "auto_explain (ANALYZE, BUFFERS, no per-node timing: the server's duration and the "
    "buffers the claim touched, shared hits and reads). Tenths are tenths of the tasks "
    "finished, so the regimes' tenths are the same table sizes. Every few seconds the "
    "tables are sampled (pg_stat_user_tables, pg_relation_size of the heap and of each "
    "index, pg_stat_progress_vacuum); pgstatindex at the end. Percentiles are nearest-rank."
)


EXPLANATION = """## Why: the mechanism

**A task's row changes twice, and neither change can be HOT.** A HOT (heap-only tuple)
update writes the new version of a row on the same page as the old and adds no index
entry: the indexes keep pointing at the old version, which leads to the new one. PostgreSQL
does it only if the page has room *and* no column any index uses has changed, where "uses"
includes the columns of a partial index's `WHERE`. The claim sets `status` to `running`
(and `worker_id`, a key of `tasks_running_idx`); the result sets `status` again (and
`finished_at`, through the trigger, a key of `tasks_finished_roots_idx`). `status` is in
the predicate of five of the lesson's partial indexes (`tasks_queued_idx`,
`tasks_running_idx`, `tasks_suspended_idx`, and the schedule-deadline, keyed and
rate-limited queued indexes). So every update of `tasks` is a full update, whatever the
fillfactor: a new version wherever there is room (on the same page if the page has room),
and a new entry in *every* index whose predicate the new version meets: the primary key,
`tasks_idempotency_key_idx` (a unique index on a column that is NULL for almost every
task, which indexes every version all the same), and the partial index the new status
belongs to. A task leaves two dead versions in the heap and two or three dead entries in
the indexes. The HOT column for `tasks` reads 0 % in every regime: that is this rule, not
a setting.

**What fillfactor does for tasks then.** With fillfactor 100 the insert fills each page,
so a claim's new version goes to another page (the "to another page" column,
`n_tup_newpage_upd`), and the page the claim came from is dirtied for nothing but the old
version's end. With room left on each page the new version stays next to the old one,
which keeps a task's versions on one page (one page dirtied, and one page for vacuum to
clean) and lets the next claim's page prune them. It buys no HOT update and costs the
space it leaves at insert.

**Workers' heartbeats are HOT.** RecordHeartbeat changes `last_heartbeat_at` and
`lease_expires_at`, which no index uses: with room on the page, each beat is a heap-only
update, pruned the next time the page is read, without vacuum and without touching
`workers_pkey`. Room is what fillfactor leaves: at 100, a page full of freshly registered
workers has none, and the first beats of its rows go to other pages (non-HOT) until pruning
has made space.

**Dead entries at the head of the claim's index.** The claim reads `tasks_queued_idx` from
its head, the oldest queued task first. Every claimed task leaves its entry there, pointing
at a version that is no longer queued; the next claim steps over it, and once the claim
that left it is older than every open snapshot the scan marks it dead (`LP_DEAD`) and later
scans skip it without visiting the heap, but they still read its page. New tasks join at
the other end of the index, so the pages at the head never fill again and never split:
bottom-up deletion (which cleans a page about to split) never reaches them. Only vacuum
removes those entries and frees their pages. So the work of a claim (the buffers column)
grows with the tasks claimed since the last vacuum, and falls back after each one: a
sawtooth, whose height is what autovacuum's thresholds decide.

**When autovacuum comes.** The launcher visits each database once every
`autovacuum_naptime` (60 s stock), and vacuums a table whose dead rows exceed
`autovacuum_vacuum_threshold + autovacuum_vacuum_scale_factor x reltuples` (50 + 20 %,
capped by `autovacuum_vacuum_max_threshold` in PostgreSQL 18), and an insert-only table
whose inserts since its last vacuum exceed the insert threshold and scale factor (1,000 +
20 %). For a table that keeps its finished tasks (a week, by lesson 15's retention), 20 %
of it is a great many claims: on a table of 10 million rows, 2 million dead versions, a
million claimed tasks' entries at the head of the index. A fixed threshold (scale factor 0)
makes vacuum come after the same number of dead rows however large the table has grown.
Per-table settings cannot make the launcher come more often: the naptime is server-wide.
`autovacuum_vacuum_cost_delay` (2 ms stock) is the pause vacuum takes every
`vacuum_cost_limit` (200) units of work (a page found in shared buffers costs 1, read 2,
dirtied 20): a vacuum of a queue table dirties most pages it visits, so the delay, not the
disk, sets how long it takes, and the dead rows pile up behind it meanwhile.

**Insert-only tables.** `task_events` is written once an event and read back by replays;
vacuum has no dead rows to remove there (until retention deletes a tree), but sets the
visibility map (index-only scans, and a later vacuum that skips those pages) and freezes
rows (so that the anti-wraparound vacuum, which cannot be skipped, finds nothing left to
do). Since PostgreSQL 13 the insert threshold triggers it; a fixed one makes it a small
vacuum often rather than a large one rarely.

The machine is shared by the flow, its worker processes and the server: two cores,
saturated by design (the flow runs as fast as it can), so the timed claims carry the
machine's scheduling; the server's duration and the buffers are the claim's own work.
"""


QUICK = {"tasks": 40_000, "sample_interval": 1.0, "heartbeat_rows": 50}
FULL = {"tasks": 1_000_000, "sample_interval": 2.0, "heartbeat_rows": 200}


def parse_options(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lesson", default=DEFAULT_LESSON, help="a lesson package name")
    parser.add_argument("--quick", action="store_true", help="CI: 40,000 tasks a regime")
    parser.add_argument("--tasks", type=int, help="tasks a regime (full 1,000,000)")
    parser.add_argument("--regimes", nargs="+", choices=list(REGIMES), default=["stock", "tuned"])
    parser.add_argument("--backlog", type=int, default=10_000, help="tasks kept unfinished")
    parser.add_argument("--worker-processes", type=int, default=2)
    parser.add_argument("--worker-batch", type=int, default=50, help="tasks a worker claims")
    parser.add_argument(
        "--durable-share", type=float, default=0.1, help="durable tasks, with one step each"
    )
    parser.add_argument("--heartbeat-rows", type=int, help="workers' rows (full 200)")
    parser.add_argument(
        "--heartbeats-per-second", type=float, help="over all rows (default: one a row)"
    )
    parser.add_argument("--probe-interval", type=float, default=0.02, help="seconds")
    parser.add_argument("--sample-interval", type=float, help="seconds (full 2, quick 1)")
    parser.add_argument(
        "--naptime",
        choices=["1s", "server"],
        default="1s",
        help="autovacuum_naptime for both regimes: 1s (embedded server only, restored "
        "after) or the server's own",
    )
    parser.add_argument("--output", type=Path, help="Markdown report (quick: a temporary file)")
    options = parser.parse_args(argv)
    for name, value in (QUICK if options.quick else FULL).items():
        if getattr(options, name) is None:
            setattr(options, name, value)
    if options.heartbeats_per_second is None:
        options.heartbeats_per_second = float(options.heartbeat_rows)
    if options.output is None:
        directory = Path(tempfile.mkdtemp(prefix="vacuum_bloat_")) if options.quick else RESULTS
        options.output = directory / "vacuum_bloat.md"
    return options


def flow_shape(options: argparse.Namespace) -> FlowShape:
    return FlowShape(
        tasks=options.tasks,
        backlog=options.backlog,
        worker_processes=options.worker_processes,
        worker_batch=options.worker_batch,
        durable_share=options.durable_share,
        heartbeat_rows=options.heartbeat_rows,
        heartbeats_per_second=options.heartbeats_per_second,
        probe_batch=10,
        probe_interval=options.probe_interval,
        sample_interval=options.sample_interval,
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    try:
        engine = LessonEngine.named(options.lesson)
    except NoSuchLesson as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    shape = flow_shape(options)
    cases = [BloatCase(Flow(engine, REGIMES[name], shape, SCHEMA)) for name in options.regimes]
    load_at_start = load_average()
    try:
        # The harness's aggressive pass is the one that sets autovacuum_naptime to 1 s on
        # the embedded server (and restores it after); only its naptime is used here: the
        # table settings are each regime's own, and the plan runs inside it as a stock pass.
        with vacuum_pass(Vacuum.AGGRESSIVE if options.naptime == "1s" else Vacuum.STOCK) as note:
            outcome = run_plan(cases, passes=[Vacuum.STOCK], runs=1)
    except DatabaseUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        drop_schema(SCHEMA)
    report(options, engine, shape, outcome, load_at_start, note)
    return 0


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


def report(
    options: argparse.Namespace,
    engine: LessonEngine,
    shape: FlowShape,
    outcome: Outcome,
    load_at_start: str,
    naptime: str,
) -> None:
    base = describe_context(outcome, libraries=("psycopg", "psycopg-pool"))
    lines = [
        line for line in base.lines if line[0] != "Method" and not line[0].startswith("Vacuum")
    ]
    lines.insert(0, ("Lesson", f"{engine.title} (`--lesson {engine.package}`)"))
    lines.insert(3, ("Load average", f"at the start {load_at_start}; at the end {load_average()}"))
    lines.insert(-1, ("Naptime", f"{naptime}, the same for every regime"))
    for name in options.regimes:
        lines.insert(-1, (f"Regime {name}", REGIMES[name].describe()))
    lines.insert(-1, ("Flow", shape.describe()))
    lines.insert(-1, ("Method", METHOD))
    context = Context(lines)
    results = [row.result for row in outcome.rows if isinstance(row, BloatRow) and row.result]
    sections: list[tuple[str, list[list[str]]]] = [
        ("The regimes side by side", comparison_table(results))
    ]
    for result in results:
        name = result.regime.name
        sections += [
            (f"{name}: the claim and tasks, by tenth of the run", tenth_table(result)),
            (f"{name}: the claim by dead rows in tasks at the time", dead_band_table(result)),
            (f"{name}: the tables at the end", tables_table(result)),
        ]
    timelines = [
        (f"Timeline, {result.regime.name}", timeline_table(result, TIMELINE_EVERY))
        for result in results
    ]
    plans_path = options.output.with_name(options.output.stem + "_plans.md")
    print()
    print(context.text)
    for heading, table in sections:
        print(f"\n{heading}\n")
        print(grid_text(table))
    parts = [
        f"# Vacuum and bloat on {engine.title}'s hot tables, over {shape.tasks:,} tasks",
        "",
        "`make bench-vacuum` (`python -m benchmarks.vacuum_bloat`). The mechanism behind the "
        "figures is below the tables, the timelines at the end; two claims' plans per regime "
        f"are in [`{plans_path.name}`]({plans_path.name}).",
        "",
        context.markdown,
    ]
    for heading, table in sections:
        parts += ["", f"## {heading}", "", grid_markdown(table)]
    parts += ["", EXPLANATION]
    for heading, table in timelines:
        parts += ["", f"## {heading}", "", grid_markdown(table)]
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text("\n".join(parts) + "\n")
    plans_path.write_text(plans_markdown(engine, results))
    print(f"\nwritten to {options.output} and {plans_path}")


# Seconds between two lines of a timeline in the report (the samples are closer).
TIMELINE_EVERY = 10.0


def plans_markdown(engine: LessonEngine, results: Sequence[FlowResult]) -> str:
    parts = [
        f"# Plans of the vacuum and bloat benchmark, on {engine.title}'s engine",
        "",
        "Written by `python -m benchmarks.vacuum_bloat` with the figures of "
        "[`vacuum_bloat.md`](vacuum_bloat.md): the first explained claim of the first and of "
        "the last tenth of each regime's run, through auto_explain (ANALYZE, BUFFERS, no "
        "per-node timing), on a connection set up as the lesson's poller's (one generic "
        "plan). The statement's text is left out. The scan to compare is the one of "
        f"`{QUEUED_INDEX_SCAN}`, in the CTE keyless_to_start.",
    ]
    for result in results:
        for tenth, text in sorted(result.plans.items()):
            parts += [
                "",
                f"## {result.regime.name}, tenth {tenth + 1}",
                "",
                "```",
                without_query_text(text),
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
