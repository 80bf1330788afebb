"""Lesson 03: a burst of 1,000 tasks on a worker with 20 slots, which never runs more than 20.

python lessons/lesson03_concurrency_limits/main.py [-v]
"""

from __future__ import annotations

import sys
import time
from typing import Any

# A Python without the course installed (`make install` puts it in .venv) would stop at
# the imports below with "No module named 'lessons'": say what to run instead.
try:
    import lessons.common.cli  # noqa: F401
except ModuleNotFoundError:
    print(
        f"error: this Python ({sys.executable}) does not have the course installed: run "
        "`make install`, then `.venv/bin/python lessons/lesson03_concurrency_limits/main.py`.",
        file=sys.stderr,
    )
    sys.exit(2)

from psycopg_pool import ConnectionPool

from lessons.common.cli import Checks, Lesson, argument_parser, configure_logging, run_lesson
from lessons.lesson03_concurrency_limits.db.models import TaskStatus
from lessons.lesson03_concurrency_limits.db.queries import Querier
from lessons.lesson03_concurrency_limits.demo.tasks import FUNCTIONS
from lessons.lesson03_concurrency_limits.engine.client import enqueue
from lessons.lesson03_concurrency_limits.engine.worker import Worker

LESSON = Lesson.of(__file__)

TASKS = 1_000
SLOTS = 20
SLEEP_SECONDS = 0.02
PROGRESS_INTERVAL = 0.2


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most intervals that overlap at any instant (a sweep over starts and ends)."""
    # At equal times an end (-1) sorts before a start (+1): touching is not overlapping.
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    at_once = peak = 0
    for _, change in events:
        at_once += change
        peak = max(peak, at_once)
    return peak


class ProgressLine:
    """One status line, rewritten in place on a terminal, printed now and then otherwise."""

    def __init__(self) -> None:
        self.on_terminal = sys.stdout.isatty()
        self.last_printed = 0.0

    def show(self, text: str) -> None:
        if self.on_terminal:
            print(f"\r{text}", end="", flush=True)
        elif time.monotonic() - self.last_printed >= 1.0:
            print(text, flush=True)
            self.last_printed = time.monotonic()

    def finish(self, text: str) -> None:
        print(f"\r{text}" if self.on_terminal else text, flush=True)


def running_in_database(pool: ConnectionPool) -> int:
    with pool.connection() as conn:
        counts = Querier(conn).count_tasks_by_status()
    return sum(row.tasks for row in counts if row.status == TaskStatus.RUNNING)


def run_burst(pool: ConnectionPool) -> tuple[float, int, int]:
    """Run the burst with progress; return the seconds it took, the worker's peak
    of slots in use, and the most tasks the database ever showed running."""
    progress = ProgressLine()
    most_running_in_database = 0
    started = time.monotonic()
    with Worker(pool, FUNCTIONS, slots=SLOTS, poll_interval=0.05) as worker:
        while worker.tasks_finished < TASKS:
            running = running_in_database(pool)
            most_running_in_database = max(most_running_in_database, running)
            progress.show(
                f"  processed {worker.tasks_finished:>5}/{TASKS}"
                f"   slots in use {worker.slots_in_use:>2}/{SLOTS}"
                f"   running in the database {running:>2}"
            )
            time.sleep(PROGRESS_INTERVAL)
        elapsed = time.monotonic() - started
        progress.finish(
            f"  processed {worker.tasks_finished:>5}/{TASKS}   in {elapsed:.1f} s"
            f" ({TASKS / elapsed:,.0f} tasks/s)".ljust(72)
        )
        return elapsed, worker.peak_slots_in_use, most_running_in_database


def demonstrate() -> bool:
    checks = Checks()
    LESSON.reset()
    # One connection per slot to record results, one for the poller, one for us.
    with LESSON.pool(max_size=SLOTS + 2) as pool:
        with pool.connection() as conn, conn.transaction():
            for _ in range(TASKS):
                enqueue(conn, "sleep_task", {"seconds": SLEEP_SECONDS})
        print(f"Enqueued {TASKS:,} tasks that each sleep {SLEEP_SECONDS * 1000:.0f} ms.")
        print(f"One worker with {SLOTS} slots runs them:")

        elapsed, peak_slots_in_use, most_running_in_database = run_burst(pool)

        with pool.connection() as conn:
            tasks = Querier(conn).list_tasks()
    outputs: list[dict[str, Any]] = [task.output for task in tasks if task.output]
    measured_by_tasks = most_at_once([(out["started_at"], out["finished_at"]) for out in outputs])
    one_slot_seconds = TASKS * SLEEP_SECONDS

    print()
    print(f"Most tasks running at once, by the tasks' own clocks:   {measured_by_tasks}")
    print(f"Most slots in use at once, by the worker's count:       {peak_slots_in_use}")
    print(f"Most tasks 'running' in the database, sampled:          {most_running_in_database}")
    print(f"One slot would need {one_slot_seconds:.0f} s or more; {SLOTS} took {elapsed:.1f} s.")
    print()

    completed = sum(task.status == TaskStatus.COMPLETED for task in tasks)
    checks.check(completed == TASKS, f"all {TASKS:,} tasks completed", f"{completed} did")
    checks.check(
        measured_by_tasks <= SLOTS,
        f"no more than {SLOTS} tasks ever ran at once",
        f"the tasks saw {measured_by_tasks}",
    )
    checks.check(
        peak_slots_in_use <= SLOTS and most_running_in_database <= SLOTS,
        f"the worker never claimed more than its {SLOTS} slots",
        f"worker peak {peak_slots_in_use}, database peak {most_running_in_database}",
    )
    checks.check(
        elapsed < one_slot_seconds / 4,
        "the slots ran tasks in parallel: at least 4 times faster than one slot",
        f"{elapsed:.1f} s against {one_slot_seconds:.0f} s",
    )
    return checks.passed


if __name__ == "__main__":
    configure_logging(argument_parser(__doc__ or "").parse_args().verbose)
    run_lesson(demonstrate)
