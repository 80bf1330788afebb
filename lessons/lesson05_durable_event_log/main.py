"""Lesson 05: a durable task fails partway, and its retry picks up where it stopped.

    python lessons/lesson05_durable_event_log/main.py [-v]

`ship_order` is a durable function of four steps. On its first attempt the third
step hangs and times out. We look at the task's history, let a second worker
run the retry, and look again: the retry read what the first attempt recorded
instead of doing it again, and wrote only what was missing.
"""

from __future__ import annotations

import json
import sys
import time

# A Python without the course installed (`make install` puts it in .venv) would stop at
# the imports below with "No module named 'lessons'": say what to run instead.
try:
    import lessons.common.cli  # noqa: F401
except ModuleNotFoundError:
    print(
        f"error: this Python ({sys.executable}) does not have the course installed: run "
        "`make install`, then `.venv/bin/python lessons/lesson05_durable_event_log/main.py`.",
        file=sys.stderr,
    )
    sys.exit(2)

from psycopg_pool import ConnectionPool

from lessons.common.cli import Checks, Lesson, argument_parser, configure_logging, run_lesson
from lessons.lesson05_durable_event_log.db.models import Task, TaskEvent, TaskStatus
from lessons.lesson05_durable_event_log.db.queries import Querier
from lessons.lesson05_durable_event_log.demo.tasks import DURABLE_FUNCTIONS, STEP_RUNS
from lessons.lesson05_durable_event_log.engine.client import enqueue, wait_for_task
from lessons.lesson05_durable_event_log.engine.worker import Worker

LESSON = Lesson.of(__file__)

POLL_INTERVAL = 0.02
HEARTBEAT_INTERVAL = 0.1
INACTIVITY_THRESHOLD = 1.0

STEP_NAMES = ["reserve_stock", "print_label", "book_courier", "notify_customer"]

ORDER = {
    "order_id": "A-1001",
    "items": ["teapot", "two cups"],
    "address": "1 Harbour Street, Portsmouth",
    "email": "ada@example.com",
}


def local_worker(pool: ConnectionPool) -> Worker:
    """A worker in this process with one slot, and the demonstration's intervals."""
    return Worker(
        pool,
        durable_functions=DURABLE_FUNCTIONS,
        slots=1,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
    )


def get_task(pool: ConnectionPool, task_id: int) -> Task:
    with pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    if task is None:
        raise LookupError(f"there is no task {task_id}")
    return task


def history_of(pool: ConnectionPool, task_id: int) -> list[TaskEvent]:
    with pool.connection() as conn:
        return Querier(conn).list_task_events(task_id=task_id)


def wait_for_event(pool: ConnectionPool, task_id: int, event_number: int) -> None:
    deadline = time.monotonic() + 10
    while len(history_of(pool, task_id)) < event_number:
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task_id} did not record event {event_number}")
        time.sleep(0.01)


def print_history(events: list[TaskEvent]) -> None:
    print(f"    {'event':>5}  {'kind':<5} {'name':<16} {'attempt':>7}  {'recorded at':<15} output")
    for event in events:
        recorded_at = event.recorded_at.strftime("%H:%M:%S.%f")
        print(
            f"    {event.event_number:>5}  {event.kind:<5} {event.name:<16} {event.attempt:>7}  "
            f"{recorded_at:<15} {json.dumps(event.output)}"
        )


def describe_events(events: list[TaskEvent]) -> str:
    """The fields of events a FAIL line needs: their whole rows run to kilobytes."""
    return "; ".join(
        f"{event.event_number} {event.kind} {event.name} attempt {event.attempt} "
        f"at {event.recorded_at:%H:%M:%S.%f}: {json.dumps(event.output)}"
        for event in events
    )


def error_of(task: Task) -> str:
    error = (task.output or {}).get("error") or {}
    return f"{error.get('type')}: {error.get('message')}"


def demonstrate() -> bool:
    checks = Checks()
    LESSON.reset()
    with LESSON.pool(max_size=8) as pool:
        with pool.connection() as conn:
            task_id = enqueue(conn, "ship_order", ORDER, durable=True, max_retries=3)
        print(f"Enqueued ship_order for order {ORDER['order_id']}: durable task {task_id}.")
        print("Its steps: reserve_stock, print_label, book_courier, notify_customer.")

        print("\n== Attempt 1, on worker A ==")
        with local_worker(pool):
            # Once print_label is recorded, attempt 1 is inside book_courier, which
            # hangs. Stopping the worker now lets attempt 1 end but claims nothing
            # more, so the retry waits in the queue while we look at the history.
            wait_for_event(pool, task_id, 2)
        after_attempt_1 = get_task(pool, task_id)
        print(
            f"  Attempt 1 failed in book_courier: {error_of(after_attempt_1)}. "
            f"The task is {after_attempt_1.status} again, for attempt 2."
        )
        before = history_of(pool, task_id)
        print("  Its history now:")
        print_history(before)

        print("\n== Attempt 2, on worker B ==")
        with local_worker(pool):
            task = wait_for_task(pool, task_id)
        print(
            f"  Task {task_id}: {task.status} on attempt {task.attempt}: {json.dumps(task.output)}"
        )
        after = history_of(pool, task_id)
        print("  Its history now:")
        print_history(after)
        runs = ", ".join(f"{name} {count}" for name, count in STEP_RUNS.items())
        print(f"  How many times each step function ran, in both attempts: {runs}.")

    print()
    checks.check(
        after_attempt_1.status == TaskStatus.QUEUED and [e.name for e in before] == STEP_NAMES[:2],
        "attempt 1 recorded the two steps it finished, then failed and went back to the queue",
        f"{after_attempt_1.status}, events {[e.name for e in before]}",
    )
    checks.check(
        after[: len(before)] == before,
        "the events attempt 1 recorded are untouched: same output, attempt and time",
        f"before {describe_events(before)}, after {describe_events(after[: len(before)])}",
    )
    checks.check(
        STEP_RUNS["reserve_stock"] == 1 and STEP_RUNS["print_label"] == 1,
        "the retry did not run the recorded steps again, it read their outputs",
        f"step runs: {dict(STEP_RUNS)}",
    )
    checks.check(
        [(e.event_number, e.name) for e in after] == list(enumerate(STEP_NAMES, start=1))
        and all(e.attempt == 2 for e in after[len(before) :]),
        "attempt 2 recorded only what was missing: one event per step, numbered 1 to 4",
        f"events {[(e.event_number, e.name, e.attempt) for e in after]}",
    )
    tracking_number = (before[1].output or {}).get("tracking_number")
    checks.check(
        task.status == TaskStatus.COMPLETED
        and (task.output or {}).get("tracking_number") == tracking_number
        and after[3].input["tracking_number"] == tracking_number,
        "the order completed with the tracking number of the one label printed in attempt 1",
        f"{task.status}: {task.output}",
    )
    return checks.passed


if __name__ == "__main__":
    options = argument_parser(__doc__ or "").parse_args()
    configure_logging(options.verbose)
    run_lesson(demonstrate)
