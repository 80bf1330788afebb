"""Lesson 10: durable events; a task waits for the world, holding no worker.

    python lessons/lesson10_durable_events/main.py [-v] [--panic[=POINT]]

`process_order` now waits for a person to approve the order: an external
event `approval:<order id>`, pushed with `push_event` (here, its command), for
APPROVAL_TIMEOUT (5 s) at most. Four orders wait at once, suspended. A-1 is approved, and
then, too late, rejected: the first event wins. A-2 is rejected. Nobody
decides about A-3, which times out. A-4's approval is pushed before the order
waits for it: an event only ends the waits already open, so A-4 times out too.

With `--panic`, two worker processes run one order, on one slot each. The
first kills itself (SIGKILL) as the order's approval is delivered: the wait is
ended, the order has not used the payload. The second takes the order over;
its replay finds the wait ended by the approval, and goes on. `--panic=POINT`
kills the first at another point of the crash table (`PANIC_POINTS` below);
`--panic=list` lists them.

Every outcome must be recorded, so that a replay sees the same one, and only
the approved order may be charged, once.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass
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
    add_panic_option,
    argument_parser,
    chosen_panic_point,
    configure_logging,
    run_lesson,
    wait_until,
)
from lessons.lesson10_durable_events.db.models import EventWait, Task, TaskStatus
from lessons.lesson10_durable_events.db.queries import Querier
from lessons.lesson10_durable_events.demo.tasks import DURABLE_FUNCTIONS, FUNCTIONS, ORDERS_QUEUE
from lessons.lesson10_durable_events.engine.client import enqueue, push_event, wait_for_task
from lessons.lesson10_durable_events.engine.crash_points import CRASH_AT
from lessons.lesson10_durable_events.engine.worker import Worker
from lessons.lesson10_durable_events.tools.push_event import main as push_event_command
from lessons.lesson10_durable_events.tools.worker_process import WorkerProcess

LESSON = Lesson.of(__file__)

# Lesson 08's fallback: the worker below hears of pushed events by notifications,
# and of deadlines by the next wake-up time (lesson 09), not by polling.
POLL_INTERVAL = 5.0
HEARTBEAT_INTERVAL = 0.1
INACTIVITY_THRESHOLD = 1.0
SLOTS = 2
# Long enough for the two pushes below to land in time even on a busy machine;
# are meant to time out.
APPROVAL_TIMEOUT = 5.0

# The order of the --panic run. Its approval is pushed the moment it waits, so its
# deadline is only a backstop: far enough that the approval always comes first.
PANIC_ORDER = "A-2001"
PANIC_APPROVAL_TIMEOUT = 30.0
DEFAULT_PANIC_POINT = "wait_for_event:received"


def order(order_id: str, approval_timeout: float) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "card": "4242-4242-4242-4242",
        "amount_cents": 4200,
        "email": "ada@example.com",
        "approval_timeout": approval_timeout,
    }


def enqueue_orders(
    pool: ConnectionPool, order_ids: list[str], approval_timeout: float = APPROVAL_TIMEOUT
) -> dict[str, int]:
    with pool.connection() as conn, conn.transaction():
        return {
            order_id: enqueue(
                conn,
                "process_order",
                order(order_id, approval_timeout),
                queue=ORDERS_QUEUE,
                durable=True,
            )
            for order_id in order_ids
        }


def push_with_the_command(key: str, payload: dict[str, Any]) -> None:
    """What a person's click, or a webhook, does: run the lesson's push_event command.

    The command's own `main`, in this process: a new Python process would take
    a second or more to start on a busy machine, and that time would count
    against the orders' deadlines, which are about the wait, not about Python."""
    arguments = [key, json.dumps(payload), f"--schema={LESSON.schema}"]
    print(f"  $ python -m lessons.lesson10_durable_events.tools.push_event {key} '{arguments[1]}'")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exit_code = push_event_command(arguments)
    if exit_code != 0:
        raise RuntimeError(f"push_event {key} exited with {exit_code}")
    print(f"    {printed.getvalue().strip()}")


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


def panic_order(pool: ConnectionPool, checks: Checks, point: str) -> None:
    """Worker A runs an order on one slot and dies at `point`; worker B finishes it.

    The approval is pushed the moment the order's wait is open (an event pushed
    before then would end no wait), by whichever worker opened it.
    """
    story = PANIC_POINTS[point]
    print(f"== Panic: the worker dies {story.when} ==")
    with worker_process(point) as first, worker_process() as second:
        first.start()
        print(f"  Worker process A (pid {first.pid}) serves the orders queue with one slot:")
        print("  the order and its children take turns in it.")
        task_id = enqueue_orders(pool, [PANIC_ORDER], approval_timeout=PANIC_APPROVAL_TIMEOUT)[
            PANIC_ORDER
        ]
        print(f"  Enqueued order {PANIC_ORDER} (task {task_id}).")
        wait_until(
            lambda: open_wait(pool, task_id) or exited(first), "the order to wait, or A to die"
        )
        approval = approve(pool, task_id) if open_wait(pool, task_id) else None
        exit_code = first.wait(timeout=30)
        last_logged = (first.log().strip().splitlines() or [""])[-1]
        for line in textwrap.wrap(story.dies.format(setting=f"{CRASH_AT}={point}"), width=78):
            print(f"  {line}")
        at_death = tasks_by_id(pool)
        print("  The tasks, as A left them:")
        print_tasks(at_death, first.ids)
        second.start()
        print(f"  Worker process B (pid {second.pid}) starts. {story.then[0]}")
        for line in story.then[1:]:
            print(f"  {line}")
        if approval is None:
            wait_until(lambda: open_wait(pool, task_id), "the order to wait on worker B")
            approval = approve(pool, task_id)
        task = wait_for_task(pool, task_id, timeout=30)
        second_ids = second.ids
    finished = tasks_by_id(pool)
    wait = wait_of(pool, task_id)
    print(f"  Task {task_id}: {task.status} on attempt {task.attempt}: {json.dumps(task.output)}")
    print(f"  Its wait: {describe_wait(pool, wait)}.")
    print("  The tasks, once B is done:")
    print_tasks(finished, first.ids)
    charges, emails = charges_and_emails(pool, PANIC_ORDER)
    print(f"  Charges made: {charges}; emails sent: {emails}.")
    checks.check(
        exit_code == -9 and f"crash point {point}: SIGKILL" in last_logged,
        f"worker A died by SIGKILL, at {point}",
        f"exit code {exit_code}, last logged {last_logged!r}",
    )
    check_takeover(checks, at_death, finished, second_ids)
    checks.check(
        wait.external_event_id == approval,
        f"the order's one wait was ended by the approval (event {approval}), and recorded",
        f"wait {wait}",
    )
    children = Counter(t.task_name for t in finished.values() if t.parent_id == task_id)
    checks.check(
        task.status == TaskStatus.COMPLETED and (task.output or {}).get("status") == "confirmed",
        f"order {PANIC_ORDER} completed and was confirmed",
        f"{task.status}: {task.output}",
    )
    checks.check(
        charges == 1 and children["charge_payment"] == 1,
        "the order was charged exactly once, by the one charge_payment task it ever had",
        f"{charges} charges, {children['charge_payment']} charge_payment tasks",
    )
    checks.check(
        emails == 1 and children["send_confirmation_email"] == 1,
        "the confirmation email was sent exactly once, by the one email task it ever had",
        f"{emails} emails, {children['send_confirmation_email']} email tasks",
    )


def open_wait(pool: ConnectionPool, task_id: int) -> bool:
    """Whether the task has a wait open: committed, so that a push now ends it."""
    with pool.connection() as conn:
        waits = Querier(conn).list_event_waits()
    return any(w.task_id == task_id and w.ended_at is None for w in waits)


def approve(pool: ConnectionPool, task_id: int) -> int:
    """What the person does, once the order waits for them: push the approval."""
    with pool.connection() as conn:
        pushed = push_event(conn, f"approval:{PANIC_ORDER}", {"approved": True, "by": "ada"})
    print(f"  The order waits for approval:{PANIC_ORDER}; ada approves it (event {pushed.id}).")
    return pushed.id


def exited(worker: WorkerProcess) -> bool:
    try:
        worker.wait(timeout=0)
    except subprocess.TimeoutExpired:
        return False
    return True


def check_takeover(
    checks: Checks, at_death: dict[int, Task], finished: dict[int, Task], second_ids: list[int]
) -> None:
    """A task A was running when it died starts a new attempt on B; any other goes on
    with the attempt it had (a queued one with its first)."""
    running = [task for task in at_death.values() if task.status == TaskStatus.RUNNING]
    checks.check(
        all(finished[t.id].worker_id in second_ids for t in running)
        and all(
            finished[t.id].attempt == t.attempt + (t.status in NEW_ATTEMPT_STATUSES)
            for t in at_death.values()
        ),
        f"the tasks A was running when it died ({len(running)}) took one more attempt "
        "each, on worker B; a suspended task lost nothing",
        f"when A died {[(t.id, t.status, t.attempt) for t in at_death.values()]}, "
        f"then {[(t.id, t.status, t.attempt) for t in finished.values()]}",
    )


# The statuses a task leaves by a new attempt: a queued task is claimed, and a running
# task whose worker died goes back on the queue first.
NEW_ATTEMPT_STATUSES = (TaskStatus.QUEUED, TaskStatus.RUNNING)


def tasks_by_id(pool: ConnectionPool) -> dict[int, Task]:
    with pool.connection() as conn:
        return {task.id: task for task in Querier(conn).list_tasks()}


def print_tasks(tasks: dict[int, Task], first_ids: list[int]) -> None:
    print(f"    {'task':>4}  {'name':<24} {'status':<9} {'attempt':>7}  last on")
    for task in tasks.values():
        worker = "" if task.worker_id is None else "A" if task.worker_id in first_ids else "B"
        print(
            f"    {task.id:>4}  {task.task_name:<24} {task.status:<9} {task.attempt:>7}  {worker}"
        )


def worker_process(crash_at: str | None = None) -> WorkerProcess:
    """A worker process for the orders and their children, on one slot."""
    return WorkerProcess(
        schema=LESSON.schema,
        queues=[ORDERS_QUEUE],
        slots=1,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
        environment={CRASH_AT: crash_at} if crash_at else None,
    )


@dataclass(frozen=True)
class PanicPoint:
    """What `--panic=POINT` does: where A dies, what the run tells, what B does next."""

    where: str  # where the point is, and what survives A there (for --panic=list)
    when: str  # the headline: "the worker dies ..."
    dies: str  # what A did before it died ({setting}: its COURSE_CRASH_AT=...)
    then: tuple[str, ...]  # lines: what B does, after "Worker process B (pid ...) starts."


TAKES_THE_ORDER_OVER = (
    "It takes back the tasks A was running,",
    "and the order goes on from its history: nothing A recorded is done again.",
)

# Every point of engine/crash_points.py the order reaches.
PANIC_POINTS = {
    "wait_for_event:before_commit": PanicPoint(
        where="the wait written and opened, the order suspended; not committed; survives: "
        "the order on A, no wait",
        when="as an order opens its wait for approval",
        dies="A ran with {setting}: the order wrote its wait and suspended itself, and A "
        "died before that committed: no wait is open, so nobody can approve it yet.",
        then=TAKES_THE_ORDER_OVER,
    ),
    "wait_for_event:suspended": PanicPoint(
        where="the wait committed, the order suspended; survives: the open wait, the order "
        "on no worker",
        when="once an order waits for approval",
        dies="A ran with {setting}: it died the moment the order's wait was committed: "
        "the order waits on no worker, and the approval can end its wait.",
        then=TAKES_THE_ORDER_OVER,
    ),
    "wait_for_event:received": PanicPoint(
        where="an event ended the wait, the order has not used its payload; survives: the "
        "ended wait, naming the event; the order on A",
        when="as the approval is delivered",
        dies="A ran with {setting}: the approval ended the wait and woke the order; A "
        "ran it again, found the wait ended, and died before the order used the payload.",
        then=TAKES_THE_ORDER_OVER,
    ),
    "call:before_commit": PanicPoint(
        where="the payment task and its event written, the order suspended; not committed; "
        "survives: the order on A, nothing of the payment",
        when="as an approved order spawns its payment and suspends itself to wait for it",
        dies="A ran with {setting}: it died inside the transaction that creates the "
        "payment task and its event and suspends the order, so none of it happened.",
        then=TAKES_THE_ORDER_OVER,
    ),
    "call:suspended": PanicPoint(
        where="the payment task, its event and the order's suspension committed; survives: "
        "the order on no worker, the payment queued",
        when="once an order is suspended, waiting for its payment",
        dies="A ran with {setting}: it died once the payment task, its event and the "
        "order's suspension were committed: the order is on no worker, and A was running "
        "nothing.",
        then=TAKES_THE_ORDER_OVER,
    ),
    "wait_for_child:finished": PanicPoint(
        where="the payment finished, the order woken has not used its result; survives: "
        "the completed payment, the order on A",
        when="as a woken order finds its payment done",
        dies="A ran with {setting}: the payment ran and woke the order; the order, run "
        "again, found it completed, and A died before the order used its result.",
        then=TAKES_THE_ORDER_OVER,
    ),
    "finish_attempts:before_commit": PanicPoint(
        where="a batch of results written, parents woken; not committed; survives: the "
        "charge, the payment task on A, the order suspended",
        when="as it records that an order's payment went through",
        dies="A ran with {setting}: the payment charged the card, and A died in the "
        "transaction recording its result and waking the order.",
        then=TAKES_THE_ORDER_OVER,
    ),
    "task_returned:process_order": PanicPoint(
        where="process_order returned, its result not recorded; survives: both children "
        "completed, the order on A",
        when="as an order returns",
        dies="A ran with {setting}: the order was charged and emailed, and returned; A "
        "died before its result was recorded.",
        then=TAKES_THE_ORDER_OVER,
    ),
    "task_returned:charge_payment": PanicPoint(
        where="charge_payment returned, its result not recorded; survives: the charge, the "
        "payment task on A, the order suspended",
        when="right after an order's payment charged the card",
        dies="A ran with {setting}: the payment charged the card and returned; A died "
        "before its result was recorded (its second run must find the charge).",
        then=TAKES_THE_ORDER_OVER,
    ),
    "task_returned:send_confirmation_email": PanicPoint(
        where="send_confirmation_email returned, its result not recorded; survives: the "
        "email, the email task on A, the order suspended",
        when="right after an order's email was sent",
        dies="A ran with {setting}: the email task sent the email and returned; A died "
        "before its result was recorded (its second run must find the email).",
        then=TAKES_THE_ORDER_OVER,
    ),
}
# Points of the crash table this demonstration does not offer, and why.
PANIC_POINTS_NOT_OFFERED = {
    **{
        point: "process_order calls its children (ctx.call), whose spawn and suspension "
        "are one transaction (call:before_commit, call:suspended); spawn_child alone, or "
        "a wait with a timeout, passes this point (tests/lesson09/test_children.py)"
        for point in (
            "spawn_child:before_commit",
            "spawn_child:after_commit",
            "wait_for_child:before_commit",
            "wait_for_child:suspended",
        )
    },
    "sleep:before_commit": "process_order does not sleep",
    "sleep:suspended": "process_order does not sleep",
    "wait_for_event:suspended_again": "only a run that finds its wait still open gets "
    "there, and this order runs again only once its approval or its deadline ended it",
    "sweep:before_commit": "every worker passes it each heartbeat interval from its start, "
    "so A would die within 0.1 s, maybe before it is ready, having done nothing this "
    "demonstration can count on",
}


def demonstrate(panic_point: str | None) -> bool:
    checks = Checks()
    LESSON.reset()
    with LESSON.pool(max_size=16) as pool:
        if panic_point is not None:
            panic_order(pool, checks, panic_point)
        else:
            scenario_approvals(pool, checks)
    return checks.passed


if __name__ == "__main__":
    parser = argument_parser(__doc__ or "")
    add_panic_option(parser, default=DEFAULT_PANIC_POINT, help="kill the first of two workers")
    options = parser.parse_args()
    point = chosen_panic_point(
        options.panic,
        {name: p.where for name, p in PANIC_POINTS.items()},
        PANIC_POINTS_NOT_OFFERED,
    )
    configure_logging(options.verbose)
    run_lesson(lambda: demonstrate(point))
