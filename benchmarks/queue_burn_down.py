"""Lesson 04's worker on a burn-down, against the ceiling of its own SQL on the same server.

    python -m benchmarks.queue_burn_down [--tasks 20000] [--processes 1 2] [--slots 10 100]

What it measures, each case `--runs` times (the median is reported), under stock
autovacuum and then aggressive autovacuum on the queue table:

- burn-down: N no-op tasks already on the queue, W worker processes of S slots each
  (the lesson's own `worker_process`); tasks per second from the first task's start
  to the moment nothing is left (database clock);
- the ceiling: the lesson's ClaimTasks and FinishAttempts statements, read from its
  `sql/queries.sql`, driven by pgbench in batches of 1, 10 and 100; the worker's rate
  is reported as a fraction of the ceiling at its batch size (its slots);
- latency: a separate producer process enqueues at a steady rate, one task per
  transaction; enqueue-to-start p50 and p99 from the database (started_at - inserted_at);
- memory: the workers' peak RSS over a 100,000-task burn-down, and how much it grew
  between the first and the last quarter of the run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lessons.common.database import DatabaseUnavailable
from lessons.lesson04_queue_improvements.engine.poller import ClaimPolicy

from .harness.cases import BurnDownCase, Case, LatencyCase
from .harness.plan import run_plan
from .harness.processes import put_repository_on_pythonpath
from .harness.queue_system import Layout
from .harness.rows import Row
from .harness.vacuum import Vacuum
from .report.context import describe_context, write_markdown
from .report.tables import memory_verdict, percent, text_table
from .systems.lesson04 import Lesson04
from .systems.pgbench import CeilingCase

RESULTS = Path(__file__).resolve().parent / "results" / "queue_burn_down.md"


def claim_policy(text: str) -> ClaimPolicy:
    """`SHARE:LINGER_MS` ("0.5:5"), the argument of `--claim-policies`."""
    share, _, linger_ms = text.partition(":")
    try:
        return ClaimPolicy(share_free=float(share), linger=float(linger_ms or 0) / 1000)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None


def build_cases(options: argparse.Namespace) -> list[Case]:
    lesson = Lesson04()
    cases: list[Case] = []
    burn_down_systems = [lesson, *(Lesson04(policy) for policy in options.claim_policies)]
    for processes in options.processes:
        for slots in options.slots:
            for system in burn_down_systems:
                cases.append(BurnDownCase(system, options.tasks, Layout(processes, slots)))
    for batch in options.ceiling_batches:
        # One claim per task is slow (seconds per run) and steady: once per run is enough.
        repeats = 1 if batch == 1 else 3
        cases.append(
            CeilingCase(batch=batch, clients=options.clients, rows=options.tasks, repeats=repeats)
        )
    stock_only = frozenset({Vacuum.STOCK})
    latency_layout = Layout(1, options.slots[0])
    for rate in options.latency_rates:
        for system in burn_down_systems:
            cases.append(
                LatencyCase(
                    system, rate, options.latency_seconds, latency_layout, passes=stock_only
                )
            )
    if options.memory_tasks:
        cases.append(
            BurnDownCase(
                lesson,
                options.memory_tasks,
                Layout(1, options.slots[-1]),
                label="memory",
                passes=stock_only,
            )
        )
    return cases


def compare_with_ceiling(rows: Sequence[Row]) -> None:
    """Say, on each burn-down row, what fraction of the ceiling at its batch size it reached."""
    ceilings = {(row.vacuum, row.batch): row for row in rows if row.kind == "ceiling"}
    for row in rows:
        ceiling = ceilings.get((row.vacuum, row.batch))
        if row.kind == "burn-down" and ceiling is not None:
            row.comparison = (
                f"{percent(row.rate, ceiling.rate)} of the ceiling at batch {row.batch}"
            )
        if row.kind == "memory":
            row.comparison = f"memory {memory_verdict(row)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks per burn-down")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], metavar="W")
    parser.add_argument("--slots", type=int, nargs="+", default=[10, 100], metavar="S")
    parser.add_argument("--runs", type=int, default=2, help="runs of each case (median)")
    parser.add_argument(
        "--claim-policies",
        type=claim_policy,
        nargs="*",
        default=[],
        metavar="SHARE:LINGER_MS",
        help="burn-downs and latency again with these claim policies beside the lesson's\ndefault "
        "(0.5:5 waits for half the slots or 5 ms; 1:0 claims at once)",
    )
    parser.add_argument("--ceiling-batches", type=int, nargs="*", default=[1, 10, 100])
    parser.add_argument("--clients", type=int, default=4, help="pgbench clients")
    parser.add_argument("--latency-rates", type=float, nargs="*", default=[50, 500])
    parser.add_argument("--latency-seconds", type=float, default=6.0)
    parser.add_argument("--memory-tasks", type=int, default=100_000, help="0 to skip")
    parser.add_argument(
        "--vacuum", choices=["stock", "aggressive", "both"], default="both", help="passes to run"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="Markdown file to write")
    options = parser.parse_args(argv)
    passes = (
        [Vacuum.STOCK, Vacuum.AGGRESSIVE] if options.vacuum == "both" else [Vacuum(options.vacuum)]
    )
    put_repository_on_pythonpath()
    try:
        outcome = run_plan(build_cases(options), passes=passes, runs=options.runs)
    except DatabaseUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    compare_with_ceiling(outcome.rows)
    context = describe_context(outcome, libraries=("psycopg", "psycopg-pool"))
    print()
    print(context.text)
    print()
    print(text_table(outcome.rows))
    write_markdown(
        options.output,
        "Lesson 04 worker: burn-down, ceiling, latency, memory",
        context,
        outcome.rows,
    )
    print(f"\nwritten to {options.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
