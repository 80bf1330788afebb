"""Lesson 07: durable tasks run child tasks, and survive their worker dying halfway.

    python lessons/lesson07_durable_tasks/main.py [-v] [--panic[=POINT]]

`process_order` is a durable function with two child tasks: `charge_payment`,
then `send_confirmation_email`. Without options, one worker runs an order to
completion, and then an order whose card is declined.

With `--panic`, two worker processes run an order. The first is started with
COURSE_CRASH_AT=wait_for_child:finished, so it kills itself (SIGKILL) the
moment process_order has seen its payment go through, before it sends the
email. The second notices the missing heartbeats, takes the order over,
replays its history (the payment is there: it is not charged again) and
finishes. `--panic=POINT` kills A at another point of the crash table
(`PANIC_POINTS` below: what A leaves there, and what B's replay must reuse);
`--panic=list` lists them. Either way, the order must be charged exactly once
and emailed exactly once.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from dataclasses import dataclass

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
    add_panic_option,
    argument_parser,
    chosen_panic_point,
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

# process_order's children, in the order it spawns them: its history's events 1 and 2.
CHILDREN = ("charge_payment", "send_confirmation_email")


@dataclass(frozen=True)
class PanicPoint:
    """What `--panic=POINT` does: where worker A dies, what it leaves, what B's replay reuses."""

    where: str  # where the crash point is (engine/crash_points.py)
    dies: str  # the moment A kills itself, as the run tells it
    survives: str  # what the database holds once A is dead
    events_left: int  # how many of the order's events (one per child) A had recorded
    replay: str  # the check of B's replay: events 1..events_left from attempt 1, the rest its own

    @property
    def summary(self) -> str:
        return f"{self.where}; survives: {self.survives}"


PANIC_POINTS = {
    "spawn_child:before_commit": PanicPoint(
        where="the payment task and its event written, not yet committed",
        dies="inside the transaction that creates the payment task and its event, "
        "before it commits, A kills itself.",
        survives="nothing of the payment (the open transaction dies with A's connection)",
        events_left=0,
        replay="attempt 1 recorded no event: the replay spawned each child, once",
    ),
    "spawn_child:after_commit": PanicPoint(
        where="the payment task and its event committed",
        dies="the moment the payment task and its event are committed, before the "
        "payment runs, A kills itself.",
        survives="event 1 and the payment task, queued",
        events_left=1,
        replay="the replay reused the payment task attempt 1 spawned, and went on from there",
    ),
    "wait_for_child:waiting": PanicPoint(
        where="the order looked at its payment, which has not finished",
        dies="the moment process_order first looks at its payment and finds it not "
        "done yet, A kills itself.",
        survives="event 1 and the payment task, queued or running on A (then reassigned)",
        events_left=1,
        replay="the replay waited for the payment task attempt 1 spawned, and went on from there",
    ),
    "wait_for_child:finished": PanicPoint(
        where="the payment has finished, the order has not used its result",
        dies="the moment process_order sees its payment go through, before it sends "
        "the email, A kills itself.",
        survives="event 1 and the completed payment",
        events_left=1,
        replay="the replay reused the payment attempt 1 recorded, and went on from there",
    ),
    "task_returned:process_order": PanicPoint(
        where="process_order returned, its result not yet recorded",
        dies="the moment process_order returns, both children done, before its result "
        "is recorded, A kills itself.",
        survives="both events and both completed children; the order still running",
        events_left=2,
        replay="the replay reused both children attempt 1 spawned, and spawned no other",
    ),
    "task_returned:charge_payment": PanicPoint(
        where="charge_payment returned, its result not yet recorded",
        dies="the moment charge_payment returns, the card charged, before its result "
        "is recorded, A kills itself.",
        survives="event 1, the charge, and the payment task still running on A",
        events_left=1,
        replay="the replay reused the payment task attempt 1 spawned (run again, it "
        "found its charge), and went on from there",
    ),
    "task_returned:send_confirmation_email": PanicPoint(
        where="send_confirmation_email returned, its result not yet recorded",
        dies="the moment send_confirmation_email returns, the email sent, before its "
        "result is recorded, A kills itself.",
        survives="both events, the charge, the email, and the email task still running on A",
        events_left=2,
        replay="the replay reused both children attempt 1 spawned (the email task, run "
        "again, found its email)",
    ),
}
DEFAULT_PANIC_POINT = "wait_for_child:finished"


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


def scenario_panic(pool: ConnectionPool, checks: Checks, point: str) -> None:
    story = PANIC_POINTS[point]
    print("== Panic: the worker dies halfway through process_order ==")
    with worker_process({CRASH_AT: point}) as first, worker_process() as second:
        first.start()
        print(f"  Worker process A (pid {first.pid}) serves the orders and order_steps queues.")
        for line in textwrap.wrap(f"It runs with {CRASH_AT}={point}: {story.dies}", width=78):
            print(f"  {line}")
        task_id = enqueue_order(pool, "A-2001")
        wait_until(lambda: get_task(pool, task_id).worker_id == first.id, "A to claim the order")
        print(f"  Enqueued order A-2001 (task {task_id}); worker A claimed it: attempt 1.")
        exit_code = first.wait(timeout=30)
        died_at = time.monotonic()
        last_logged = first.log().strip().splitlines()[-1]
        print(f"  Worker A died: exit code {exit_code} (SIGKILL). It last logged:")
        print(f"    {last_logged}")
        print("  The order's history, as A left it:")
        print_history(pool, task_id)
        # Started only now, so that every point is A's to reach: B would
        # otherwise take some of the children, and A might never get there.
        second.start()
        print(f"  Worker process B (pid {second.pid}) starts, serving the same queues.")
        print(
            f"  A's lease runs out {INACTIVITY_THRESHOLD} s after its last heartbeat; B then puts"
        )
        print("  the order back on the queue, claims it, replays the history and finishes it.")
        task = wait_for_task(pool, task_id, timeout=30)
        recovered_in = time.monotonic() - died_at
        second_ids = second.ids
    print(
        f"  Task {task_id}: {task.status} on attempt {task.attempt} by worker B, "
        f"{recovered_in:.1f} s after we saw A die: {json.dumps(task.output)}"
    )
    recorded_by = [(name, 1 if n <= story.events_left else 2) for n, name in enumerate(CHILDREN, 1)]
    origins = ", ".join(
        f"event {n} from attempt {attempt} (worker {'A' if attempt == 1 else 'B'})"
        for n, (_, attempt) in enumerate(recorded_by, 1)
    )
    print(f"  Its history: {origins}.")
    print_history(pool, task_id)
    print_effects(*effects_of(pool, "A-2001"))
    events = history_of(pool, task_id)
    checks.check(
        exit_code == -9 and f"crash point {point}: SIGKILL" in last_logged,
        "worker A died by SIGKILL",
        f"exit code {exit_code}, last logged {last_logged!r}",
    )
    checks.check(
        task.attempt == 2 and task.worker_id in second_ids,
        "worker B took the order over and finished it, on attempt 2",
        f"attempt {task.attempt} on worker {task.worker_id}",
    )
    checks.check(
        [(e.name, e.attempt) for e in events] == recorded_by,
        story.replay,
        f"{[(e.name, e.attempt) for e in events]}",
    )
    check_charged_and_emailed_once(pool, checks, task, "A-2001")


def demonstrate(panic_point: str | None) -> bool:
    checks = Checks()
    LESSON.reset()
    with LESSON.pool(max_size=16) as pool:
        if panic_point is not None:
            scenario_panic(pool, checks, panic_point)
        else:
            scenario_one_worker(pool, checks)
    return checks.passed


if __name__ == "__main__":
    parser = argument_parser(__doc__ or "")
    add_panic_option(
        parser, default=DEFAULT_PANIC_POINT, help="kill the first of two workers halfway through"
    )
    options = parser.parse_args()
    point = chosen_panic_point(
        options.panic, {name: p.summary for name, p in PANIC_POINTS.items()}, {}
    )
    configure_logging(options.verbose)
    run_lesson(lambda: demonstrate(point))
