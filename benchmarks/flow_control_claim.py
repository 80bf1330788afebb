"""Lesson 12's fair claim against lesson 11's claim: one claim's latency, and a drain's rate.

    python -m benchmarks.flow_control_claim [--tasks 20000] [--claims 300] [--runs 3]

What it measures, on the lessons' own SQL and workers, stock autovacuum:

- claim latency: p50 and p99 of one ClaimTasks call (max_tasks 10), timed in this
  process, on a queue holding `--tasks` queued no-op tasks before every claim: lesson
  11's claim; lesson 12's with keyless tasks; lesson 12's with the tasks spread over
  1, 100 and 10,000 keys (a limit that does not bind); and 10,000 keys of which 90 %
  or 99 % are full (`systems/flow_control.py`, `ClaimLoop`, says how the queue is kept
  the same from claim to claim);
- drain: `--tasks` no-op tasks drained by 2 worker processes of 10 slots each (the
  lessons' own `WorkerProcess`), tasks per second from the first start to the moment
  nothing is left, on the database's clock (the harness's burn-down case).

Runs of all cases alternate round-robin; each figure is the median of `--runs` runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lessons.common.database import DatabaseUnavailable, drop_schema
from lessons.common.stats import median

from .harness.cases import BurnDownCase, Case
from .harness.plan import run_plan
from .harness.processes import put_repository_on_pythonpath
from .harness.queue_system import Layout
from .harness.rows import Row
from .harness.vacuum import Vacuum
from .report.context import Context, describe_context
from .systems.flow_control import (
    KEYLESS,
    ClaimLoop,
    FlowControlQueue,
    Lesson,
    Lesson11Claim,
    Lesson12Claim,
    Shape,
)

RESULTS = Path(__file__).resolve().parent / "results" / "flow_control_claim.md"
STOCK_ONLY = frozenset({Vacuum.STOCK})
MAX_TASKS = 10


@dataclass
class ClaimRow(Row):
    tasks_per_claim: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class ClaimLatencyCase:
    """One `ClaimLoop` per run; its p50, p99 and tasks per claim land in the row."""

    lesson_name: str
    shape: Shape
    queued: int
    claims: int
    passes: frozenset[Vacuum] = STOCK_ONLY

    def lesson(self) -> Lesson:
        # A fresh one per run: lesson 12's walk cursor starts from the first key.
        return Lesson11Claim() if self.lesson_name == "lesson 11" else Lesson12Claim()

    def row(self, vacuum: Vacuum) -> ClaimRow:
        return ClaimRow(
            system=self.lesson_name,
            case="claim",
            settings=self.shape.describe(),
            vacuum=vacuum,
            kind="claim",
            batch=MAX_TASKS,
        )

    def measure(self, vacuum: Vacuum, row: Row) -> str:
        assert isinstance(row, ClaimRow)
        loop = ClaimLoop(self.lesson(), self.shape, self.queued, self.claims, MAX_TASKS)
        times = loop.run()
        row.p50s.append(times.p50)
        row.p99s.append(times.p99)
        row.tasks_per_claim.append(times.tasks_per_claim)
        return (
            f"p50 {times.p50 * 1000:.2f} ms, p99 {times.p99 * 1000:.2f} ms, "
            f"{times.tasks_per_claim:.1f} tasks per claim"
        )


def claim_shapes() -> list[tuple[str, Shape]]:
    return [
        ("lesson 11", KEYLESS),
        ("lesson 12", KEYLESS),
        ("lesson 12", Shape(keys=1)),
        ("lesson 12", Shape(keys=100)),
        ("lesson 12", Shape(keys=10_000)),
        ("lesson 12", Shape(keys=10_000, max_per_key=1, full_keys_per_hundred=90)),
        ("lesson 12", Shape(keys=10_000, max_per_key=1, full_keys_per_hundred=99)),
    ]


def drain_shapes() -> list[tuple[str, Shape]]:
    """The claim's shapes but the full keys' (a drain would empty their keys first)."""
    return [(lesson, shape) for lesson, shape in claim_shapes() if not shape.full_keys_per_hundred]


def build_cases(options: argparse.Namespace) -> list[Case]:
    cases: list[Case] = [
        ClaimLatencyCase(lesson, shape, options.tasks, options.claims)
        for lesson, shape in claim_shapes()
    ]
    layout = Layout(options.processes, options.slots)
    for lesson, shape in drain_shapes():
        cases.append(
            BurnDownCase(FlowControlQueue(lesson, shape), options.tasks, layout, passes=STOCK_ONLY)
        )
    return cases


def claim_table(rows: Sequence[Row]) -> list[list[str]]:
    claims = [row for row in rows if isinstance(row, ClaimRow)]
    baseline = next((row.p50 for row in claims if row.system == "lesson 11"), None)
    table = [["Claim (max_tasks 10)", "p50", "p99", "tasks per claim", "p50 vs lesson 11"]]
    for row in claims:
        p50, p99 = row.p50 or 0.0, row.p99 or 0.0
        table.append(
            [
                f"{row.system}, {row.settings}",
                f"{p50 * 1000:.2f} ms",
                f"{p99 * 1000:.2f} ms",
                f"{median(row.tasks_per_claim):.1f}",
                f"{p50 / baseline:.2f}x" if baseline else "n/a",
            ]
        )
    return table


def drain_table(rows: Sequence[Row], tasks: int, layout: Layout) -> list[list[str]]:
    drains = [row for row in rows if row.kind == "burn-down"]
    baseline = next((row.rate for row in drains if row.system == "lesson 11"), None)
    heading = f"Drain of {tasks:,} ({layout.processes} processes x {layout.batch} slots)"
    table = [[heading, "tasks/s (median)", "runs", "vs lesson 11"]]
    for row in drains:
        rate = row.rate or 0.0
        shape = row.settings.split(", ", 1)[1].removesuffix(", LISTEN/NOTIFY")
        table.append(
            [
                f"{row.system}, {shape}",
                f"{rate:,.0f}",
                " / ".join(f"{run:,.0f}" for run in row.rates),
                f"{rate / baseline:.2f}x" if baseline else "n/a",
            ]
        )
    return table


def as_text(table: list[list[str]]) -> str:
    widths = [max(len(line[column]) for line in table) for column in range(len(table[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        for line in table
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def as_markdown(table: list[list[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    separator = ["---"] + ["---:"] * (len(table[0]) - 1)
    return "\n".join([line(table[0]), line(separator), *(line(cells) for cells in table[1:])])


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


EXPLANATION = """## What the figures mean

**One claim.** The p50 and p99 of one `ClaimTasks` call (`max_tasks` 10), timed around the
lesson's own `Querier.claim_tasks` in one process, so each figure is the statement, its
commit and its round trip. Lesson 12's claim runs on a connection set up as its poller's is
(`PlanOnce`: one generic plan) with what its poller passes (`max_keys_visited` 200; the
walk's position is in the worker's row); lesson 11's on a plain connection, as its poller's.
Before every claim the queue holds the same tasks: after each claim (untimed, on another
connection) the claimed tasks are marked completed with the lesson's own `FinishAttempts`,
which gives their key slots back, and as many new tasks are enqueued with the same keys, so
every key keeps its depth. 20 claims warm up first; each run times 300, on a fresh schema
whose tables have been `ANALYZE`d. "Tasks per claim" is how many tasks a claim returned on
average.

**Drain.** The lessons' own worker processes (`WorkerProcess`, 2 processes x 10 slots,
woken by NOTIFY) drain 20,000 no-op tasks enqueued in one transaction; tasks per second from
the first task's start to the moment a poll finds nothing queued or running (database clock).

## Why

- **Keyless, lesson 12 costs about what lesson 11 does.** A queue with no concurrency limit
  takes no walk (its claim visits only the keyless lane), and its claim is planned once on
  the poller's own connection. Planned for each call, as a pooled connection would, the
  claim cost about 1 ms more than lesson 11's: planning a statement of a dozen CTEs takes as
  long as running it. What remains is the empty keyed and rate-limit parts of the statement
  and the statement-level trigger `tasks_updated_count_key_slots`, which runs on every
  `UPDATE` of `tasks` (every claim and every result batch), reads its transition tables and
  finds no slot changed: about 0.1 ms a statement, measured on a batch of 10 results.
- **Keyed, each key visited is three index probes** (`keys_to_visit`: the next key in
  `tasks_keyed_queued_idx`, whether it has a task this worker can run, its count), in
  PL/pgSQL; then every open key is locked (`FOR UPDATE OF keys SKIP LOCKED`) and its best
  tasks read and locked, as many as its free slots; and the trigger changes each served
  key's count by its primary key, one `UPDATE` per key, in key order. A claim of 10 tasks
  over 10 keys is about 30 probes and 10 row updates more than a keyless one.
- **Locks on key rows.** With 1 key, both workers' claims want the same row: the second
  skips it (SKIP LOCKED) and claims nothing, and each result batch's trigger waits for the
  key's lock, so the claims and results of one key take turns on one row.
- **Most keys full.** With 90 % of 10,000 keys full a claim visits about 100 keys to find 10
  open ones; with 99 % full it stops at the bound of 200 visits and finds about 2: the bound
  is what keeps the cost of a claim flat however many keys are full, and why such a claim
  returns fewer tasks than it was asked for (the next claim goes on from where it stopped).

The machine is shared (other test runs may be running at the same time): the load average
above says how busy it was, and single runs move by 20-50 %; the ratios within one run are
what the figures are for.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=20_000, help="queued tasks, drained tasks")
    parser.add_argument("--claims", type=int, default=300, help="timed claims per run")
    parser.add_argument("--processes", type=int, default=2, help="drain worker processes")
    parser.add_argument("--slots", type=int, default=10, help="slots per drain worker")
    parser.add_argument("--runs", type=int, default=3, help="runs of each case (median)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="Markdown file to write")
    options = parser.parse_args(argv)
    put_repository_on_pythonpath()
    load_at_start = load_average()
    try:
        outcome = run_plan(build_cases(options), passes=[Vacuum.STOCK], runs=options.runs)
    except DatabaseUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for schema in ("bench_flow_claim", "bench_flow_drain_11", "bench_flow_drain_12"):
        drop_schema(schema)
    base = describe_context(outcome, libraries=("psycopg", "psycopg-pool"))
    lines = list(base.lines)
    lines.insert(2, ("Load average", f"at the start {load_at_start}; at the end {load_average()}"))
    context = Context(lines)
    layout = Layout(options.processes, options.slots)
    claims = claim_table(outcome.rows)
    drains = drain_table(outcome.rows, options.tasks, layout)
    print()
    print(context.text)
    print()
    print(as_text(claims))
    print()
    print(as_text(drains))
    parts = [
        "# Lesson 12's fair claim against lesson 11's claim",
        "",
        "`make bench-flow-control` (`python -m benchmarks.flow_control_claim`). What each "
        "figure means, and why, is below the tables.",
        "",
        context.markdown,
        "",
        f"## One claim, {options.tasks:,} queued tasks, medians of {options.runs} runs",
        "",
        as_markdown(claims),
        "",
        f"## Drain, medians of {options.runs} runs",
        "",
        as_markdown(drains),
        "",
    ]
    parts += [EXPLANATION]
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text("\n".join(parts))
    print(f"\nwritten to {options.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
