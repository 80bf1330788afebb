"""Lesson 10: durable events; a task waits for the world, holding no worker.

    python lessons/lesson10_durable_events/main.py [-v]

`process_order` now waits for a person to approve the order: an external
event `approval:<order id>`, pushed with `push_event` (here, its command), for
two seconds at most. Four orders wait at once, suspended. A-1 is approved, and
then, too late, rejected: the first event wins. A-2 is rejected. Nobody
decides about A-3, which times out. A-4's approval is pushed before the order
waits for it: an event only ends the waits already open, so A-4 times out too.

Every outcome must be recorded, so that a replay sees the same one, and only
the approved order may be charged, once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

# A Python without the course installed (`make install` puts it in .venv) would stop at
# the imports below with "No module named 'lessons'": say what to run instead.
try:
    import lessons.common.cli  # noqa: F401
except ModuleNotFoundError:
    print(
        f"error: this Python ({sys.executable}) does not have the course installed: run "
        "`make install`, then `.venv/bin/python lessons/lesson10_durable_events/main.py`.",
        file=sys.stderr,
    )
    sys.exit(2)

from psycopg_pool import ConnectionPool

from lessons.common.cli import (
    Checks,
    Lesson,
    argument_parser,
    configure_logging,
    run_lesson,
    wait_until,
)
from lessons.lesson10_durable_events.db.models import EventWait, Task, TaskStatus
from lessons.lesson10_durable_events.db.queries import Querier
from lessons.lesson10_durable_events.demo.tasks import DURABLE_FUNCTIONS, FUNCTIONS, ORDERS_QUEUE
from lessons.lesson10_durable_events.engine.client import enqueue, push_event, wait_for_task
from lessons.lesson10_durable_events.engine.worker import Worker

LESSON = Lesson.of(__file__)

# Lesson 08's fallback: the worker below hears of pushed events by notifications,
# and of deadlines by the next wake-up time (lesson 09), not by polling.
POLL_INTERVAL = 5.0
HEARTBEAT_INTERVAL = 0.1
INACTIVITY_THRESHOLD = 1.0
SLOTS = 2
# Long enough for the two pushes below (each a new Python process) to land in
# time even on a busy machine; are meant to time out.
APPROVAL_TIMEOUT = 5.0


def order(order_id: str) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "card": "4242-4242-4242-4242",
        "amount_cents": 4200,
        "email": "ada@example.com",
        "approval_timeout": APPROVAL_TIMEOUT,
    }


def enqueue_orders(pool: ConnectionPool, order_ids: list[str]) -> dict[str, int]:
    with pool.connection() as conn, conn.transaction():
        return {
            order_id: enqueue(
                conn, "process_order", order(order_id), queue=ORDERS_QUEUE, durable=True
            )
            for order_id in order_ids
        }


def push_with_the_command(key: str, payload: dict[str, Any]) -> None:
    """What a person's click, or a webhook, does: run the lesson's push_event command."""
    command = [sys.executable, "-m", "lessons.lesson10_durable_events.tools.push_event"]
    arguments = [key, json.dumps(payload), f"--schema={LESSON.schema}"]
    print(f"  $ python -m lessons.lesson10_durable_events.tools.push_event {key} '{arguments[1]}'")
    completed = subprocess.run(
        [*command, *arguments], capture_output=True, text=True, check=True, timeout=60
    )
    print(f"    {completed.stdout.strip()}")


def get_task(pool: ConnectionPool, task_id: int) -> Task:
    with pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    if task is None:
        raise LookupError(f"there is no task {task_id}")
    return task


def wait_of(pool: ConnectionPool, task_id: int) -> EventWait:
    """The order's one wait, as `event_waits` recorded it."""
    with pool.connection() as conn:
        [wait] = [w for w in Querier(conn).list_event_waits() if w.task_id == task_id]
    return wait


def charges_and_emails(pool: ConnectionPool, order_id: str) -> tuple[int, int]:
    with pool.connection() as conn:
        queries = Querier(conn)
        charges = [c for c in queries.list_charges() if c.order_id == order_id]
        emails = [e for e in queries.list_emails() if e.order_id == order_id]
    return len(charges), len(emails)


def describe_wait(pool: ConnectionPool, wait: EventWait) -> str:
    if wait.ended_at is None:
        return "still open"
    if wait.external_event_id is None:
        late_ms = (wait.ended_at - wait.timeout_at).total_seconds() * 1000
        return f"timed out, {late_ms:.0f} ms after its deadline"
    with pool.connection() as conn:
        events = {e.id: e for e in Querier(conn).list_external_events()}
    event = events[wait.external_event_id]
    return f"ended by event {event.id}: {json.dumps(event.payload)}"


def all_waiting(pool: ConnectionPool, task_ids: list[int]) -> bool:
    return all(get_task(pool, task_id).status == TaskStatus.SUSPENDED for task_id in task_ids)


def scenario_approvals(pool: ConnectionPool, checks: Checks) -> None:
    print("== Four orders wait for a person's approval ==")
    with pool.connection() as conn:
        early = push_event(conn, "approval:A-4", {"approved": True, "by": "ada"})
    print(f"  Before any order exists, event {early.id} approves A-4 (it woke nobody).")
    task_ids = enqueue_orders(pool, ["A-1", "A-2", "A-3", "A-4"])
    with Worker(
        pool,
        FUNCTIONS,
        durable_functions=DURABLE_FUNCTIONS,
        queue=ORDERS_QUEUE,
        slots=SLOTS,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
    ) as worker:
        wait_until(lambda: all_waiting(pool, list(task_ids.values())), "the orders to wait")
        print(
            f"  All four wait, suspended, for at most {APPROVAL_TIMEOUT} s; the worker's "
            f"{SLOTS} slots are free ({worker.slots_in_use} in use)."
        )
        push_with_the_command("approval:A-1", {"approved": True, "by": "ada"})
        push_with_the_command("approval:A-2", {"approved": False, "by": "grace"})
        wait_until(
            lambda: get_task(pool, task_ids["A-1"]).status == TaskStatus.COMPLETED,
            "A-1 to complete",
        )
        print("  Too late, someone else rejects A-1:")
        push_with_the_command("approval:A-1", {"approved": False, "by": "bob"})
        orders = {
            order_id: wait_for_task(pool, task_id, timeout=10)
            for order_id, task_id in task_ids.items()
        }
    print("  How each order's wait ended, and what the order did:")
    for order_id, task in orders.items():
        print(f"    {order_id}: {describe_wait(pool, wait_of(pool, task.id))}")
        print(f"         -> {json.dumps(task.output)}")
    check_outcomes(pool, checks, orders)


def check_outcomes(pool: ConnectionPool, checks: Checks, orders: dict[str, Task]) -> None:
    def status(order_id: str) -> Any:
        return (orders[order_id].output or {}).get("status")

    approved_wait = wait_of(pool, orders["A-1"].id)
    with pool.connection() as conn:
        first_approval = next(
            e.id for e in Querier(conn).list_external_events() if e.key == "approval:A-1"
        )
    checks.check(
        status("A-1") == "confirmed"
        and approved_wait.external_event_id == first_approval
        and charges_and_emails(pool, "A-1") == (1, 1),
        "A-1 was approved by the first event for it, charged once and emailed once; "
        "the late rejection changed nothing",
        f"{orders['A-1'].output}, wait {describe_wait(pool, approved_wait)}",
    )
    checks.check(
        status("A-2") == "rejected" and charges_and_emails(pool, "A-2") == (0, 0),
        "A-2 was rejected: no charge, no email",
        f"{orders['A-2'].output}",
    )
    for order_id, why in (("A-3", "nobody decided"), ("A-4", "its approval came before it waited")):
        wait = wait_of(pool, orders[order_id].id)
        checks.check(
            status(order_id) == "not approved in time"
            and wait.external_event_id is None
            and wait.ended_at is not None
            and wait.ended_at >= wait.timeout_at
            and charges_and_emails(pool, order_id) == (0, 0),
            f"{order_id} timed out ({why}), no sooner than its deadline, and the timeout "
            "is recorded",
            f"{orders[order_id].output}, wait {describe_wait(pool, wait)}",
        )
    checks.check(
        all(task.attempt == 1 for task in orders.values()),
        "every order finished on its first attempt: waiting costs no retry",
    )


def demonstrate() -> bool:
    checks = Checks()
    LESSON.reset()
    with LESSON.pool(max_size=16) as pool:
        scenario_approvals(pool, checks)
    return checks.passed


if __name__ == "__main__":
    options = argument_parser(__doc__ or "").parse_args()
    configure_logging(options.verbose)
    run_lesson(demonstrate)
