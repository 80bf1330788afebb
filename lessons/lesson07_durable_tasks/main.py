"""Lesson 07: durable tasks run child tasks, and survive their worker dying halfway.

    python lessons/lesson07_durable_tasks/main.py [-v] [--panic]

`process_order` is a durable function with two child tasks: `charge_payment`,
then `send_confirmation_email`. Without options, one worker runs an order to
completion, and then an order whose card is declined.

With `--panic`, two worker processes run an order. The first is started with
COURSE_CRASH_AT=wait_for_child:finished, so it kills itself (SIGKILL) the
moment process_order has seen its payment go through, before it sends the
email. The second notices the missing heartbeats, takes the order over,
replays its history (the payment is there: it is not charged again) and
finishes. Either way, the order must be charged exactly once and emailed
exactly once.
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
        "`make install`, then `.venv/bin/python lessons/lesson07_durable_tasks/main.py`.",
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
from lessons.lesson07_durable_tasks.db.models import Charge, Email, Task, TaskEvent, TaskStatus
from lessons.lesson07_durable_tasks.db.queries import Querier
from lessons.lesson07_durable_tasks.demo.tasks import (
    DURABLE_FUNCTIONS,
    FUNCTIONS,
    ORDER_STEPS_QUEUE,
    ORDERS_QUEUE,
)
from lessons.lesson07_durable_tasks.engine.client import enqueue, wait_for_task
from lessons.lesson07_durable_tasks.engine.crash_points import CRASH_AT
from lessons.lesson07_durable_tasks.engine.worker import Worker
from lessons.lesson07_durable_tasks.tools.worker_process import WorkerProcess

LESSON = Lesson.of(__file__)

POLL_INTERVAL = 0.02
HEARTBEAT_INTERVAL = 0.1
INACTIVITY_THRESHOLD = 1.0
SLOTS = 2

PANIC_POINT = "wait_for_child:finished"


def order(order_id: str, card: str = "4242-4242-4242-4242") -> dict[str, object]:
    return {"order_id": order_id, "card": card, "amount_cents": 4200, "email": "ada@example.com"}


def enqueue_order(pool: ConnectionPool, order_id: str, **details: str) -> int:
    with pool.connection() as conn:
        return enqueue(
            conn, "process_order", order(order_id, **details), queue=ORDERS_QUEUE, durable=True
        )


def local_worker(pool: ConnectionPool, queue: str) -> Worker:
    """A worker in this process for one queue, with the demonstration's intervals."""
    return Worker(
        pool,
        FUNCTIONS,
        durable_functions=DURABLE_FUNCTIONS,
        queue=queue,
        slots=SLOTS,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
    )


def worker_process(environment: dict[str, str] | None = None) -> WorkerProcess:
    """A worker process serving both queues: one worker for orders, one for their steps."""
    return WorkerProcess(
        schema=LESSON.schema,
        queues=[ORDERS_QUEUE, ORDER_STEPS_QUEUE],
        slots=SLOTS,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
        environment=environment,
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


def effects_of(pool: ConnectionPool, order_id: str) -> tuple[list[Charge], list[Email]]:
    """What the payment provider and the mail server saw of this order."""
    with pool.connection() as conn:
        queries = Querier(conn)
        charges = [charge for charge in queries.list_charges() if charge.order_id == order_id]
        emails = [email for email in queries.list_emails() if email.order_id == order_id]
    return charges, emails


def children_named(pool: ConnectionPool, task_name: str, order_id: str) -> list[Task]:
    """The child tasks called `task_name` ever created for this order."""
    with pool.connection() as conn:
        tasks = Querier(conn).list_tasks()
    return [t for t in tasks if t.task_name == task_name and t.input["order_id"] == order_id]


def print_history(pool: ConnectionPool, task_id: int) -> None:
    print(f"    {'event':>5}  {'kind':<5} {'name':<24} {'attempt':>7}  child task")
    for event in history_of(pool, task_id):
        child = get_task(pool, event.child_task_id) if event.child_task_id else None
        about_child = f"{child.id}: {child.status} on attempt {child.attempt}" if child else ""
        print(
            f"    {event.event_number:>5}  {event.kind:<5} {event.name:<24} {event.attempt:>7}  "
            f"{about_child}"
        )


def print_effects(charges: list[Charge], emails: list[Email]) -> None:
    for charge in charges:
        print(f"  charge {charge.id}: {charge.amount_cents} cents, made by task {charge.task_id}")
    for email in emails:
        print(f"  email {email.id} to {email.recipient}, sent by task {email.task_id}")


def check_charged_and_emailed_once(
    pool: ConnectionPool, checks: Checks, task: Task, order_id: str
) -> None:
    charges, emails = effects_of(pool, order_id)
    checks.check(
        task.status == TaskStatus.COMPLETED and (task.output or {}).get("status") == "confirmed",
        f"order {order_id} completed and was confirmed",
        f"{task.status}: {task.output}",
    )
    checks.check(
        len(charges) == 1 and len(children_named(pool, "charge_payment", order_id)) == 1,
        "the order was charged exactly once, by the one charge_payment task it ever had",
        f"{len(charges)} charges",
    )
    checks.check(
        len(emails) == 1 and len(children_named(pool, "send_confirmation_email", order_id)) == 1,
        "the confirmation email was sent exactly once",
        f"{len(emails)} emails",
    )


def scenario_one_worker(pool: ConnectionPool, checks: Checks) -> None:
    print("== One worker runs an order ==")
    task_id = enqueue_order(pool, "A-1001")
    print(f"  Enqueued process_order for order A-1001: durable task {task_id}, queue orders.")
    with local_worker(pool, ORDERS_QUEUE), local_worker(pool, ORDER_STEPS_QUEUE):
        task = wait_for_task(pool, task_id)
    print(f"  Task {task_id}: {task.status} on attempt {task.attempt}: {json.dumps(task.output)}")
    print("  Its history: one event per child, each holding the child's id.")
    print_history(pool, task_id)
    print_effects(*effects_of(pool, "A-1001"))
    check_charged_and_emailed_once(pool, checks, task, "A-1001")

    print("\n== A declined card: the child fails, and process_order catches it ==")
    task_id = enqueue_order(pool, "A-1002", card="4000-0000-0000-0002")
    with local_worker(pool, ORDERS_QUEUE), local_worker(pool, ORDER_STEPS_QUEUE):
        task = wait_for_task(pool, task_id)
    print(f"  Task {task_id}: {task.status}: {json.dumps(task.output)}")
    charges, emails = effects_of(pool, "A-1002")
    checks.check(
        task.status == TaskStatus.COMPLETED
        and (task.output or {}).get("status") == "payment failed"
        and not charges
        and not emails,
        "the failed child raised ChildTaskFailed in the parent: no charge, no email",
        f"{task.status}: {task.output}; {len(charges)} charges, {len(emails)} emails",
    )


def scenario_panic(pool: ConnectionPool, checks: Checks) -> None:
    print("== Panic: the worker dies halfway through process_order ==")
    with worker_process({CRASH_AT: PANIC_POINT}) as first, worker_process() as second:
        first.start()
        print(f"  Worker process A (pid {first.pid}) serves the orders and order_steps queues.")
        print(f"  It runs with {CRASH_AT}={PANIC_POINT}: the moment process_order")
        print("  sees its payment go through, before it sends the email, A kills itself.")
        task_id = enqueue_order(pool, "A-2001")
        wait_until(lambda: get_task(pool, task_id).worker_id == first.id, "A to claim the order")
        print(f"  Enqueued order A-2001 (task {task_id}); worker A claimed it: attempt 1.")
        second.start()
        print(f"  Worker process B (pid {second.pid}) started too, serving the same queues.")
        exit_code = first.wait(timeout=30)
        died_at = time.monotonic()
        print(f"  Worker A died: exit code {exit_code} (SIGKILL). It last logged:")
        print(f"    {first.log().strip().splitlines()[-1]}")
        print("  The order's history, as A left it:")
        print_history(pool, task_id)
        print(f"  B sees A's heartbeat stop. {INACTIVITY_THRESHOLD} s later it puts the order")
        print("  back on the queue, claims it, replays the history and finishes it.")
        task = wait_for_task(pool, task_id, timeout=30)
        recovered_in = time.monotonic() - died_at
        second_ids = second.ids
    print(
        f"  Task {task_id}: {task.status} on attempt {task.attempt} by worker B, "
        f"{recovered_in:.1f} s after we saw A die: {json.dumps(task.output)}"
    )
    print("  Its history: event 1 from attempt 1 (worker A), event 2 from attempt 2 (worker B).")
    print_history(pool, task_id)
    print_effects(*effects_of(pool, "A-2001"))
    events = history_of(pool, task_id)
    checks.check(exit_code == -9, "worker A died by SIGKILL", f"exit code {exit_code}")
    checks.check(
        task.attempt == 2 and task.worker_id in second_ids,
        "worker B took the order over and finished it, on attempt 2",
        f"attempt {task.attempt} on worker {task.worker_id}",
    )
    checks.check(
        [(e.name, e.attempt) for e in events]
        == [("charge_payment", 1), ("send_confirmation_email", 2)],
        "the replay reused the payment attempt 1 recorded, and went on from there",
        f"{[(e.name, e.attempt) for e in events]}",
    )
    check_charged_and_emailed_once(pool, checks, task, "A-2001")


def demonstrate(panic: bool) -> bool:
    checks = Checks()
    LESSON.reset()
    with LESSON.pool(max_size=16) as pool:
        if panic:
            scenario_panic(pool, checks)
        else:
            scenario_one_worker(pool, checks)
    return checks.passed


if __name__ == "__main__":
    parser = argument_parser(__doc__ or "")
    parser.add_argument(
        "--panic", action="store_true", help="kill the first of two workers halfway through"
    )
    options = parser.parse_args()
    configure_logging(options.verbose)
    run_lesson(lambda: demonstrate(options.panic))
