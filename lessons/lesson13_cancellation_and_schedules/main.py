"""Lesson 13: stopping and starting on purpose: a cancelled checkout, a double click, a cron.

    python lessons/lesson13_cancellation_and_schedules/main.py [-v]

Three scenes of a shop, each checked:

1. A checkout saga cancelled midway. Two orders reserve their stock, are
   charged, and wait for the warehouse to pack them. One is cancelled: its
   durable function meets `Cancelled`, refunds the charge and releases the
   stock, once, and sends no email; the other is packed, and emailed.
2. A double-clicked "buy" button. Eight clicks at once enqueue the same
   checkout with one idempotency key: one task, one charge, one email.
3. A schedule that survives a worker crash. Two worker processes fire a
   schedule of every second; one is killed (SIGKILL) in the middle. Every
   tick from the first to the last is fired once: no tick lost, none twice.
"""

from __future__ import annotations

import sys
import threading
from functools import partial
from itertools import pairwise

# A Python without the course installed (`make install` puts it in .venv) would stop at
# the imports below with "No module named 'lessons'": say what to run instead.
try:
    import lessons.common.cli  # noqa: F401
except ModuleNotFoundError:
    print(
        f"error: this Python ({sys.executable}) does not have the course installed: run "
        "`make install`, then `.venv/bin/python "
        "lessons/lesson13_cancellation_and_schedules/main.py`.",
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
from lessons.lesson13_cancellation_and_schedules.db.models import (
    EventKind,
    TaskStatus,
    TickOutcome,
)
from lessons.lesson13_cancellation_and_schedules.db.queries import Querier
from lessons.lesson13_cancellation_and_schedules.demo.tasks import (
    DURABLE_FUNCTIONS,
    FUNCTIONS,
    packed_event_key,
)
from lessons.lesson13_cancellation_and_schedules.engine.client import (
    cancel,
    delete_schedule,
    enqueue,
    push_event,
    set_schedule,
    wait_for_task,
)
from lessons.lesson13_cancellation_and_schedules.engine.worker import Worker
from lessons.lesson13_cancellation_and_schedules.tools.worker_process import WorkerProcess

LESSON = Lesson.of(__file__)

SLOTS = 4
POLL_INTERVAL = 0.2
HEARTBEAT_INTERVAL = 0.1
INACTIVITY_THRESHOLD = 1.0

CLICKS = 8
SCHEDULE = "nightly_digest"
# Every second (a six-field cron expression: seconds first), so that the
# demonstration sees a dozen ticks in as many seconds.
EVERY_SECOND = "* * * * * *"
TICKS_BEFORE_CRASH = 4
TICKS_AFTER_CRASH = 4


def order(order_id: str) -> dict[str, object]:
    return {"order_id": order_id, "item": "espresso machine", "amount_cents": 24900}


def worker(pool: ConnectionPool) -> Worker:
    """A worker in this process, for the first two scenes (no schedules there)."""
    return Worker(
        pool,
        FUNCTIONS,
        durable_functions=DURABLE_FUNCTIONS,
        slots=SLOTS,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
        run_schedules=False,
    )


def waiting_for_packing(pool: ConnectionPool, task_id: int) -> bool:
    """Whether the checkout has been charged and waits, suspended, for the warehouse."""
    with pool.connection() as conn:
        queries = Querier(conn)
        task = queries.get_task(id=task_id)
        events = queries.list_task_events(task_id=task_id)
    return (
        task is not None
        and task.status == TaskStatus.SUSPENDED
        and any(event.kind == EventKind.WAIT for event in events)
    )


def cancelled_checkout(pool: ConnectionPool, checks: Checks) -> None:
    print("\n1. A checkout cancelled between its charge and its email")
    with worker(pool), pool.connection() as conn:
        kept = enqueue(conn, "checkout", order("A-1"), durable=True)
        cancelled = enqueue(conn, "checkout", order("A-2"), durable=True)
        for task_id in (kept, cancelled):
            wait_until(partial(waiting_for_packing, pool, task_id), "a charge")
        print("  Orders A-1 and A-2 are reserved, charged, and wait for the warehouse.")
        status = cancel(
            conn, cancelled, cancelled_by="support desk", reason="the customer changed their mind"
        )
        print(f"  A-2 cancelled by the support desk: its status is still {status}, unwinding.")
        push_event(conn, packed_event_key("A-1"), {"parcel": "P-1"})
        finished = {task_id: wait_for_task(pool, task_id) for task_id in (kept, cancelled)}
        queries = Querier(conn)
        charges = {charge.order_id: charge for charge in queries.list_charges()}
        refunds = {refund.charge_id for refund in queries.list_refunds()}
        emails = {email.order_id for email in queries.list_emails()}
        reservations = {r.order_id: r for r in queries.list_reservations()}
        history = queries.list_task_events(task_id=cancelled)
        children = [task for task in queries.list_tasks() if task.parent_id == cancelled]
    task = finished[cancelled]
    print(f"  A-2 ended {task.status}, by {task.cancelled_by}: {task.cancel_reason}.")
    print("  Its history:")
    for event in history:
        print(f"    {event.event_number}. {event.kind} {event.name}")
    checks.check(
        finished[kept].status == TaskStatus.COMPLETED and "A-1" in emails,
        "A-1, not cancelled, was packed and emailed",
    )
    checks.check(
        task.status == TaskStatus.CANCELLED and task.cancelled_by == "support desk",
        "A-2 ended cancelled, saying who cancelled it and why",
        str(task.status),
    )
    checks.check(
        charges["A-2"].id in refunds and len(refunds) == 1,
        "A-2's charge was refunded, once; A-1's was not",
        f"{len(refunds)} refund(s)",
    )
    checks.check("A-2" not in emails, "A-2's confirmation email was never sent")
    checks.check(
        reservations["A-2"].released_at is not None and reservations["A-1"].released_at is None,
        "A-2's stock was released; A-1's is still held for it",
    )
    checks.check(
        all(child.status in (TaskStatus.COMPLETED, TaskStatus.CANCELLED) for child in children),
        f"no child of A-2 is left running ({len(children)} children, all finished)",
    )


def double_click(pool: ConnectionPool, checks: Checks) -> None:
    print(f"\n2. A 'buy' button clicked {CLICKS} times at once")
    clicked: list[int] = []
    start = threading.Barrier(CLICKS)

    def click() -> None:
        with pool.connection() as conn:
            start.wait()
            clicked.append(
                enqueue(conn, "checkout", order("B-1"), durable=True, idempotency_key="buy:cart-7")
            )

    clicks = [threading.Thread(target=click) for _ in range(CLICKS)]
    for thread in clicks:
        thread.start()
    for thread in clicks:
        thread.join()
    with worker(pool), pool.connection() as conn:
        (task_id,) = set(clicked)
        wait_until(lambda: waiting_for_packing(pool, task_id), "a charge")
        push_event(conn, packed_event_key("B-1"), {"parcel": "P-2"})
        task = wait_for_task(pool, task_id)
        queries = Querier(conn)
        checkouts = [t for t in queries.list_tasks() if t.task_name == "checkout"]
        charges = [charge for charge in queries.list_charges() if charge.order_id == "B-1"]
        emails = [email for email in queries.list_emails() if email.order_id == "B-1"]
    print(f"  {CLICKS} enqueues returned task {sorted(set(clicked))}; it counts {task.enqueues}.")
    checks.check(
        len(set(clicked)) == 1 and task.enqueues == CLICKS,
        f"the {CLICKS} clicks made one task, and it counted all {CLICKS}",
        f"tasks {sorted(set(clicked))}, enqueues {task.enqueues}",
    )
    checks.check(
        task.status == TaskStatus.COMPLETED and len(charges) == 1 and len(emails) == 1,
        "the order was charged once and emailed once",
        f"{len(checkouts)} checkout tasks, {len(charges)} charges, {len(emails)} emails",
    )


def schedule_through_a_crash(pool: ConnectionPool, checks: Checks) -> None:
    print("\n3. A schedule of every second, through a worker crash")
    with pool.connection() as conn:
        set_schedule(conn, SCHEDULE, "send_digest", {"list": "customers"}, cron=EVERY_SECOND)

    def ticks_fired() -> int:
        with pool.connection() as conn:
            return len(Querier(conn).list_schedule_ticks(schedule=SCHEDULE))

    processes = [
        WorkerProcess(
            schema=LESSON.schema,
            slots=SLOTS,
            poll_interval=POLL_INTERVAL,
            heartbeat_interval=HEARTBEAT_INTERVAL,
            inactivity_threshold=INACTIVITY_THRESHOLD,
        )
        for _ in range(2)
    ]
    with processes[0], processes[1]:
        for process in processes:
            process.start()
        print(f"  Two worker processes (pids {[p.pid for p in processes]}) fire it.")
        wait_until(lambda: ticks_fired() >= TICKS_BEFORE_CRASH, "ticks", timeout=30)
        processes[0].kill()
        print(f"  After {ticks_fired()} ticks, worker process {processes[0].pid} is SIGKILLed.")
        crashed_at = ticks_fired()
        wait_until(
            lambda: ticks_fired() >= crashed_at + TICKS_AFTER_CRASH, "ticks after", timeout=30
        )
        with pool.connection() as conn:
            ticks = Querier(conn).list_schedule_ticks(schedule=SCHEDULE)
        for tick in ticks:
            if tick.task_id is not None:
                wait_for_task(pool, tick.task_id, timeout=30)
        processes[1].stop()
    with pool.connection() as conn:
        fired = {tick.tick_at for tick in ticks}
        digests = [digest for digest in Querier(conn).list_digests() if digest.tick_at in fired]
        delete_schedule(conn, SCHEDULE)
    gaps = [(later.tick_at - earlier.tick_at).total_seconds() for earlier, later in pairwise(ticks)]
    workers = {tick.worker_id for tick in ticks}
    # (Which of the two fired the ticks before the crash varies from run to run.)
    print(
        f"  {len(ticks)} ticks, {ticks[0].tick_at:%H:%M:%S} to {ticks[-1].tick_at:%H:%M:%S}, "
        f"fired by {len(workers)} worker(s); {len(digests)} digests."
    )
    checks.check(
        all(gap == 1.0 for gap in gaps),
        "every second from the first tick to the last has its tick: none lost to the crash",
        f"gaps {sorted(set(gaps))}",
    )
    checks.check(
        all(tick.outcome == TickOutcome.FIRED for tick in ticks)
        and len(digests) == len(ticks)
        and len({d.tick_at for d in digests}) == len(digests),
        "each tick was fired once and its digest sent once",
        f"{len(ticks)} ticks, {len(digests)} digests",
    )


def demonstrate() -> bool:
    checks = Checks()
    LESSON.reset()
    with LESSON.pool(max_size=2 * (SLOTS + 3) + CLICKS + 2) as pool:
        cancelled_checkout(pool, checks)
        double_click(pool, checks)
        schedule_through_a_crash(pool, checks)
    return checks.passed


if __name__ == "__main__":
    parser = argument_parser(__doc__ or "")
    configure_logging(parser.parse_args().verbose)
    run_lesson(demonstrate)
