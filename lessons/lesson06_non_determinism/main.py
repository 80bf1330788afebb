"""Lesson 06: a retry must make the calls its history recorded; a changed function is caught.

    python lessons/lesson06_non_determinism/main.py [-v]

Three times over, worker A runs the first attempt of a `ship_order` task with
the code of lesson 05: it records reserve_stock and print_label, then times out
in book_courier. Worker B runs the retry with the code of a new deploy:

1. the same code: every key matches, the history replays, the order ships;
2. a step renamed: event 2 was recorded by print_label, the new code calls
   print_shipping_label there;
3. a step's input changed: print_label is called at event 2 as before, but with
   another input.

The last two fail at once, with an error that names the event, the recorded
call and the new call.
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
        "`make install`, then `.venv/bin/python lessons/lesson06_non_determinism/main.py`.",
        file=sys.stderr,
    )
    sys.exit(2)

from psycopg_pool import ConnectionPool

from lessons.common.cli import Checks, Lesson, argument_parser, configure_logging, run_lesson
from lessons.lesson06_non_determinism.db.models import Task, TaskEvent, TaskStatus
from lessons.lesson06_non_determinism.db.queries import Querier
from lessons.lesson06_non_determinism.demo.tasks import (
    ship_order,
    ship_order_with_changed_input,
    ship_order_with_renamed_step,
)
from lessons.lesson06_non_determinism.engine.client import enqueue, wait_for_task
from lessons.lesson06_non_determinism.engine.durable import DurableFunction
from lessons.lesson06_non_determinism.engine.worker import Worker

LESSON = Lesson.of(__file__)

POLL_INTERVAL = 0.02
HEARTBEAT_INTERVAL = 0.1
INACTIVITY_THRESHOLD = 1.0


def order(order_id: str) -> dict[str, object]:
    return {
        "order_id": order_id,
        "items": ["teapot", "two cups"],
        "address": "1 Harbour Street, Portsmouth",
        "email": "ada@example.com",
    }


def local_worker(pool: ConnectionPool, ship_order_version: DurableFunction) -> Worker:
    """A worker in this process, with one slot, running this version of ship_order."""
    return Worker(
        pool,
        durable_functions={"ship_order": ship_order_version},
        slots=1,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
    )


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
    print(f"    {'event':>5}  {'kind':<5} {'name':<16} {'attempt':>7}  key")
    for event in events:
        print(
            f"    {event.event_number:>5}  {event.kind:<5} {event.name:<16} {event.attempt:>7}  "
            f"{event.key[:16]}..."
        )


def describe_events(events: list[TaskEvent]) -> str:
    """The fields of events a FAIL line needs: their whole rows run to kilobytes."""
    return "; ".join(
        f"{event.event_number} {event.kind} {event.name} attempt {event.attempt} "
        f"at {event.recorded_at:%H:%M:%S.%f}, key {event.key[:16]}..."
        for event in events
    )


def error_of(task: Task) -> tuple[str, str]:
    error = (task.output or {}).get("error") or {}
    return error.get("type", ""), error.get("message", "")


def run_across_a_deploy(
    pool: ConnectionPool, order_id: str, new_version: DurableFunction
) -> tuple[Task, list[TaskEvent], list[TaskEvent]]:
    """Attempt 1 with lesson 05's ship_order, attempt 2 with `new_version`.

    Returns the task when it has finished, and its history after each attempt.
    """
    with pool.connection() as conn:
        task_id = enqueue(conn, "ship_order", order(order_id), durable=True, max_retries=3)
    with local_worker(pool, ship_order):
        # Attempt 1 is now inside book_courier, which hangs: stopping the worker
        # lets the attempt end, and keeps the retry for worker B.
        wait_for_event(pool, task_id, 2)
    before = history_of(pool, task_id)
    print(f"  Worker A ran attempt 1 of task {task_id} (order {order_id}); it recorded:")
    print_history(before)
    with local_worker(pool, new_version):
        task = wait_for_task(pool, task_id)
    after = history_of(pool, task_id)
    if task.status == TaskStatus.COMPLETED:
        print(f"  Worker B ran attempt 2: {task.status}. The history now:")
        print_history(after)
    else:
        print(f"  Worker B ran attempt 2: {task.status} (attempt {task.attempt}):")
        kind, message = error_of(task)
        print(f"    {kind}: {message}")
    return task, before, after


def demonstrate() -> bool:
    checks = Checks()
    LESSON.reset()
    with LESSON.pool(max_size=8) as pool:
        print("== 1. The retry runs the same code ==")
        task, before, after = run_across_a_deploy(pool, "A-1001", ship_order)
        checks.check(
            task.status == TaskStatus.COMPLETED and task.attempt == 2,
            "the same code replayed its history: every key matched, and the order shipped",
            f"{task.status} on attempt {task.attempt}: {json.dumps(task.output)}",
        )
        checks.check(
            after[: len(before)] == before and len(after) == 4,
            "the events of attempt 1 were replayed, not written again",
            f"before {describe_events(before)}, after {describe_events(after)}",
        )

        print("\n== 2. A deploy renamed a step: print_label is now print_shipping_label ==")
        task, before, after = run_across_a_deploy(pool, "A-1002", ship_order_with_renamed_step)
        message = (
            "event 2 does not match the history: recorded step print_label("
            '{"address":"1 Harbour Street, Portsmouth","order_id":"A-1002"}), '
            "new call step print_shipping_label("
            '{"address":"1 Harbour Street, Portsmouth","order_id":"A-1002"})'
        )
        checks.check(
            task.status == TaskStatus.FAILED
            and task.attempt == 2
            and error_of(task) == ("NonDeterminismError", message),
            "the renamed step was caught at event 2, and the task failed without a retry",
            f"{task.status} on attempt {task.attempt}: {error_of(task)}",
        )
        checks.check(after == before, "the history is as attempt 1 left it", describe_events(after))

        print("\n== 3. A deploy changed a step's input: print_label now says which paper ==")
        task, before, after = run_across_a_deploy(pool, "A-1003", ship_order_with_changed_input)
        message = (
            "event 2 does not match the history: recorded step print_label("
            '{"address":"1 Harbour Street, Portsmouth","order_id":"A-1003"}), '
            "new call step print_label("
            '{"address":"1 Harbour Street, Portsmouth","order_id":"A-1003","paper":"A6"})'
        )
        checks.check(
            task.status == TaskStatus.FAILED
            and task.attempt == 2
            and error_of(task) == ("NonDeterminismError", message),
            "the changed input was caught at event 2, and the task failed without a retry",
            f"{task.status} on attempt {task.attempt}: {error_of(task)}",
        )
        checks.check(after == before, "the history is as attempt 1 left it", describe_events(after))
    return checks.passed


if __name__ == "__main__":
    options = argument_parser(__doc__ or "").parse_args()
    configure_logging(options.verbose)
    run_lesson(demonstrate)
