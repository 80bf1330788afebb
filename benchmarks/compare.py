"""The course's engine side by side with PgQueuer, Procrastinate and DBOS, in one run on one server.

    python -m benchmarks.compare [--quick]     (make bench-peers [QUICK=1] installs the peers first)

Cases, each `--runs` times (5: the median, with the smallest and largest), under stock
autovacuum (`--vacuum both` adds a pass of the burn-downs under aggressive autovacuum on
every system's queue tables; left out of a full run to keep it under 15 minutes, see
benchmarks/README.md):

1. burn-down of 20,000 pre-enqueued no-op tasks at batch 10 and batch 100: the workers
   of lessons 04 and 08 and PgQueuer (psycopg driver, drain mode) with the same number
   of consumers, one per process, and the same batch; PgQueuer again in the layout of
   its own benchmark (5 consumers in one process); Procrastinate at concurrency 10; and
   the pgbench ceiling of lesson 04's SQL at the same batch sizes, the machine's speed;
2. enqueue-to-start latency at a steady 50 and 500 tasks/s for 3 s from a separate
   producer process: lesson 04 (polling), lesson 08 (LISTEN/NOTIFY) and PgQueuer
   (LISTEN/NOTIFY), stock pass only (a queue that holds a handful of tasks gives vacuum
   nothing to do);
3. durable work: 800 orders (a durable task with two child tasks) on every lesson
   from 07 on, each its own engine and worker processes, against 800 DBOS workflows
   of two steps doing the same work (a charge row, an email row), enqueued on DBOS's
   queue and started directly, on as many worker processes running as many at once;
   stock pass only (a run of a few seconds is over before autovacuum's settings could
   tell);
4. the workers' peak memory over a 100,000-task burn-down (stock pass only, one run:
   its figures are a peak and a growth, not a median).

It prints a table, writes it as Markdown with the curriculum's targets stated as met
or not, each lesson's durable rate against the lesson before it, and the machine's
speed (the pgbench ceiling) beside every ratio, to benchmarks/results/compare.md, and
draws benchmarks/results/compare.png.

`--quick` (CI, `make bench-peers QUICK=1`): each case once, at a small size, stock
pass only, in about a minute; its report goes to a temporary directory, never over the
results of a full run.

The course's systems are listed in `course_systems()` (queue workers, cases 1, 2, 4)
and `course_durable_systems()` (case 3: every lesson from 09 on that has an engine
joins by itself).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from lessons.common.database import DatabaseUnavailable

from .harness.cases import BurnDownCase, Case, DurableCase, LatencyCase
from .harness.durable_system import DurableLayout, DurableSystem
from .harness.plan import run_plan
from .harness.processes import put_repository_on_pythonpath
from .harness.queue_system import Layout, QueueSystem
from .harness.rows import Row
from .harness.vacuum import Vacuum
from .report.context import describe_context, write_markdown
from .report.tables import text_table
from .report.targets import compare_rows, regression_section, targets_section
from .systems.lesson04 import Lesson04
from .systems.lesson08 import Lesson08
from .systems.lesson_engine import LESSONS_DIRECTORY, LessonEngine
from .systems.lesson_orders import EngineOrders, Lesson07Orders, Lesson08Orders
from .systems.pgbench import CeilingCase

RESULTS_DIRECTORY = Path(__file__).resolve().parent / "results"
LIBRARIES = (
    "psycopg",
    "psycopg-pool",
    "pgqueuer",
    "procrastinate",
    "dbos",
    "sqlalchemy",
    "matplotlib",
)
# PgQueuer's own benchmark runs its consumers as tasks of one process; the curriculum's
# PgQueuer figures were measured that way, with five.
PGQUEUER_REFERENCE_CONSUMERS = 5
# The first lesson whose durable workers `EngineOrders` runs (a waiting parent suspended).
FIRST_ENGINE_LESSON = "09"
STOCK_ONLY = frozenset({Vacuum.STOCK})
# The sizes of a full run, and of `--quick` (CI: each case once, small, stock only).
FULL = {
    "tasks": 20_000,
    "procrastinate_tasks": 5_000,
    "latency_seconds": 3.0,
    "memory_tasks": 100_000,
    "orders": 800,
    "runs": 5,
    "vacuum": "stock",
}
QUICK = {
    "tasks": 2_000,
    "procrastinate_tasks": 200,
    "latency_seconds": 1.0,
    "memory_tasks": 2_000,
    "orders": 100,
    "runs": 1,
    "vacuum": "stock",
}


def course_systems() -> list[QueueSystem]:
    """The course's queue workers under test: polling (04), woken by notifications (08)."""
    return [Lesson04(), Lesson08()]


def course_durable_systems() -> list[DurableSystem]:
    """The course's durable workers under test: polling (07), woken by notifications (08),
    and from 09 on, parents suspended while they wait, their slot given back: every
    lesson with an engine and a shop, each its own. (Lesson 16's demonstration is an
    agent, not a shop: its engine is lesson 15's, measured as lesson 15.)"""
    later = sorted(
        path.parent.parent.name
        for path in LESSONS_DIRECTORY.glob("lesson*/engine/durable.py")
        if path.parent.parent.name.removeprefix("lesson")[:2] >= FIRST_ENGINE_LESSON
    )
    engines = [LessonEngine.named(package) for package in later]
    return [
        Lesson07Orders(),
        Lesson08Orders(),
        *(EngineOrders(engine) for engine in engines if has_a_shop(engine)),
    ]


def has_a_shop(engine: LessonEngine) -> bool:
    """Whether the lesson's demonstration charges orders (every lesson's but the capstone's)."""
    return hasattr(engine.module("demo.tasks"), "charge_payment")


def durable_cases(options: argparse.Namespace) -> list[Case]:
    """Case 3: the course's durable orders against DBOS two-step workflows, same layout."""
    if not options.orders:
        return []
    from .systems.peers.dbos_case import DIRECT_MODE, QUEUE_MODE, DBOSWorkflows

    layout = DurableLayout(
        processes=options.durable_processes,
        concurrency=options.durable_concurrency,
        poll_interval=options.durable_poll_interval,
    )
    systems = [*course_durable_systems(), DBOSWorkflows(QUEUE_MODE), DBOSWorkflows(DIRECT_MODE)]
    return [DurableCase(system, options.orders, layout, passes=STOCK_ONLY) for system in systems]


def build_cases(options: argparse.Namespace) -> list[Case]:
    from .systems.peers.pgqueuer_case import PgQueuerSystem
    from .systems.peers.procrastinate_case import ProcrastinateSystem

    pgqueuer = PgQueuerSystem()
    pgqueuer_reference = PgQueuerSystem(consumers_per_process=PGQUEUER_REFERENCE_CONSUMERS)
    cases: list[Case] = []
    for batch in options.batches:
        same_layout = Layout(options.processes, batch)
        for system in course_systems():
            cases.append(BurnDownCase(system, options.tasks, same_layout))
        cases.append(BurnDownCase(pgqueuer, options.tasks, same_layout))
        cases.append(BurnDownCase(pgqueuer_reference, options.tasks, Layout(1, batch)))
        # Once a run, like every other case: its runs' median and range are the
        # machine's speed that the report states beside every ratio.
        cases.append(
            CeilingCase(batch=batch, clients=options.clients, rows=options.tasks, repeats=1)
        )
    cases.append(
        BurnDownCase(
            ProcrastinateSystem(),
            options.procrastinate_tasks,
            Layout(1, options.procrastinate_concurrency),
        )
    )
    latency_layout = Layout(1, options.batches[0])
    for rate in options.latency_rates:
        for system in [*course_systems(), pgqueuer]:
            cases.append(
                LatencyCase(
                    system,
                    rate,
                    options.latency_seconds,
                    latency_layout,
                    passes=STOCK_ONLY,
                )
            )
    if options.memory_tasks:
        memory_layout = Layout(1, options.batches[-1])
        for system in [*course_systems(), pgqueuer]:
            cases.append(
                BurnDownCase(
                    system,
                    options.memory_tasks,
                    memory_layout,
                    label="memory",
                    passes=STOCK_ONLY,
                    most_runs=1,
                )
            )
    cases.extend(durable_cases(options))
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="CI: each case once, small, stock pass only"
    )
    parser.add_argument("--tasks", type=int, help=f"tasks per burn-down (full {FULL['tasks']:,})")
    parser.add_argument("--batches", type=int, nargs="+", default=[10, 100])
    parser.add_argument(
        "--processes", type=int, default=2, help="consumer processes, one consumer each"
    )
    parser.add_argument(
        "--procrastinate-tasks",
        type=int,
        help=f"Procrastinate's burn-down (full {FULL['procrastinate_tasks']:,}: its per-job fetch "
        "slows with the backlog)",
    )
    parser.add_argument("--procrastinate-concurrency", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4, help="pgbench clients")
    parser.add_argument("--latency-rates", type=float, nargs="*", default=[50, 500])
    parser.add_argument("--latency-seconds", type=float, help=f"full {FULL['latency_seconds']:g}")
    parser.add_argument(
        "--memory-tasks", type=int, help=f"full {FULL['memory_tasks']:,}; 0 to skip"
    )
    parser.add_argument(
        "--orders",
        type=int,
        help=f"orders (DBOS: workflows) per durable run (full {FULL['orders']:,}), 0 to skip",
    )
    parser.add_argument("--durable-processes", type=int, default=2, help="worker processes")
    parser.add_argument(
        "--durable-concurrency",
        type=int,
        default=20,
        help="orders at once per process: slots per queue; DBOS worker_concurrency, threads",
    )
    parser.add_argument(
        "--durable-poll-interval",
        type=float,
        default=0.01,
        help="seconds; lesson 07's poll interval and DBOS's queue polling interval",
    )
    parser.add_argument("--runs", type=int, help=f"runs of each case (full {FULL['runs']}; median)")
    parser.add_argument(
        "--vacuum",
        choices=["stock", "aggressive", "both"],
        help=f"passes (full {FULL['vacuum']}; both adds the aggressive pass's burn-downs)",
    )
    parser.add_argument("--output", type=Path, help="Markdown report (quick: a temporary file)")
    parser.add_argument("--chart", type=Path, help="PNG chart (quick: beside the report)")
    options = parser.parse_args(argv)
    for name, value in (QUICK if options.quick else FULL).items():
        if getattr(options, name) is None:
            setattr(options, name, value)
    directory = Path(tempfile.mkdtemp(prefix="compare_")) if options.quick else RESULTS_DIRECTORY
    options.output = options.output or directory / "compare.md"
    options.chart = options.chart or options.output.with_suffix(".png")
    try:
        import dbos  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
        import pgqueuer  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
        import procrastinate  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
    except ImportError as error:
        print(f"error: {error}. Run `make bench-peers`, which installs them.", file=sys.stderr)
        return 2
    passes = (
        [Vacuum.STOCK, Vacuum.AGGRESSIVE] if options.vacuum == "both" else [Vacuum(options.vacuum)]
    )
    put_repository_on_pythonpath()
    try:
        outcome = run_plan(build_cases(options), passes=passes, runs=options.runs)
    except DatabaseUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    compare_rows(outcome.rows)
    context = describe_context(outcome, libraries=LIBRARIES)
    targets = targets_section(outcome.rows)
    regressions = regression_section(outcome.rows)
    print()
    print(context.text)
    print()
    print(text_table(outcome.rows))
    print()
    print(targets)
    print()
    print(regressions)
    write_markdown(
        options.output,
        "The course's engine side by side with PgQueuer, Procrastinate and DBOS",
        context,
        outcome.rows,
        sections=[("Targets", targets), ("Each lesson against the lesson before it", regressions)],
    )
    print(f"\nwritten to {options.output}")
    if draw(outcome.rows, options.chart):
        print(f"chart written to {options.chart}")
    return 0


def draw(rows: Sequence[Row], path: Path) -> bool:
    try:
        from .report.chart import draw_chart
    except ImportError as error:
        print(f"no chart: {error}", file=sys.stderr)
        return False
    draw_chart(rows, path)
    return True


if __name__ == "__main__":
    sys.exit(main())
