"""Lesson 09: durable sleep; a sleeping or waiting task is suspended, and holds no slot.

    python lessons/lesson09_durable_sleep/main.py [-v] [--panic]

Forty `send_reminders` flows, each sending three reminders one second apart,
run on one worker with two slots. Between two reminders a flow sleeps: its
task is suspended, and leaves its slot. The database shows all forty asleep at
once, and no task running: both slots free. Then three orders run on a single
slot, parents and children on one queue: a parent that waits for its child is
suspended too, so the child gets the slot.

With `--panic`, a worker process runs the reminders and is killed (SIGKILL)
while they sleep; a second worker process wakes them at the times their
histories recorded.

Either way, every reminder must be sent exactly once, and never sooner than
its sleep allows.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

# A Python without the course installed (`make install` puts it in .venv) would stop at
# the imports below with "No module named 'lessons'": say what to run instead.
try:
    import lessons.common.cli  # noqa: F401
except ModuleNotFoundError:
    print(
        f"error: this Python ({sys.executable}) does not have the course installed: run "
        "`make install`, then `.venv/bin/python lessons/lesson09_durable_sleep/main.py`.",
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
from lessons.lesson09_durable_sleep.db.models import Reminder, Task, TaskStatus
from lessons.lesson09_durable_sleep.db.queries import Querier
from lessons.lesson09_durable_sleep.demo.tasks import (
    DURABLE_FUNCTIONS,
    FUNCTIONS,
    ORDERS_QUEUE,
    REMINDERS_QUEUE,
)
from lessons.lesson09_durable_sleep.engine.client import enqueue, wait_for_task
from lessons.lesson09_durable_sleep.engine.worker import Worker
from lessons.lesson09_durable_sleep.tools.worker_process import WorkerProcess

LESSON = Lesson.of(__file__)

# Lesson 08's fallback: the workers below find their work by notifications,
# and the sleepers by the next wake-up time, not by polling.
POLL_INTERVAL = 5.0
HEARTBEAT_INTERVAL = 0.1
INACTIVITY_THRESHOLD = 1.0

FLOWS = 40
REMINDERS_PER_FLOW = 3
SECONDS_BETWEEN_REMINDERS = 1.0
SLOTS = 2
# How much later than its sleep allows a reminder may go out before we call it late.
LATENESS_ALLOWED = 0.5
SAMPLE_EVERY = 0.05


@dataclass(frozen=True)
class Sample:
    """How many tasks were in each status at one moment, as the database saw it."""

    seconds: float
    counts: Counter[TaskStatus]


def count_by_status(pool: ConnectionPool) -> Counter[TaskStatus]:
    with pool.connection() as conn:
        return Counter({row.status: row.tasks for row in Querier(conn).count_tasks_by_status()})


def enqueue_reminder_flows(pool: ConnectionPool) -> list[int]:
    plan = {"times": REMINDERS_PER_FLOW, "every_seconds": SECONDS_BETWEEN_REMINDERS}
    with pool.connection() as conn, conn.transaction():
        return [
            enqueue(
                conn,
                "send_reminders",
                {"to": f"user{n}@example.com", **plan},
                queue=REMINDERS_QUEUE,
                durable=True,
            )
            for n in range(1, FLOWS + 1)
        ]


def sample_until_all_finished(pool: ConnectionPool, tasks: int) -> list[Sample]:
    """Count the tasks by status every SAMPLE_EVERY seconds until `tasks` have completed."""
    samples: list[Sample] = []
    started = time.monotonic()
    while True:
        counts = count_by_status(pool)
        samples.append(Sample(time.monotonic() - started, counts))
        if counts[TaskStatus.COMPLETED] >= tasks or time.monotonic() - started > 60:
            return samples
        time.sleep(SAMPLE_EVERY)


def print_timeline(samples: list[Sample]) -> None:
    """One line whenever what the database shows changes shape."""
    print(f"    {'time':>6}  {'queued':>6} {'running':>7} {'suspended':>9} {'completed':>9}")
    shown: tuple[int, ...] | None = None
    for sample in samples:
        row = tuple(
            sample.counts[status]
            for status in (
                TaskStatus.QUEUED,
                TaskStatus.RUNNING,
                TaskStatus.SUSPENDED,
                TaskStatus.COMPLETED,
            )
        )
        if row != shown:
            print(f"    {sample.seconds:5.2f}s  {row[0]:>6} {row[1]:>7} {row[2]:>9} {row[3]:>9}")
            shown = row


def gaps_between_reminders(reminders: list[Reminder]) -> list[float]:
    """Seconds between each reminder and the one before it in the same flow (database clock)."""
    sent_at = defaultdict(list)
    for reminder in sorted(reminders, key=lambda r: (r.task_id, r.number)):
        sent_at[reminder.task_id].append(reminder.sent_at)
    return [
        (later - earlier).total_seconds()
        for times in sent_at.values()
        for earlier, later in itertools.pairwise(times)
    ]


def check_reminders(
    pool: ConnectionPool, checks: Checks, task_ids: list[int], *, on_time: bool = True
) -> list[Task]:
    """Every flow completed on its first attempt, every reminder went out once, and no
    sleep was cut short; with `on_time`, none ran late either.

    Without a worker to wake them (`--panic`), the flows wait for the next worker to
    start, then for a free slot: how late they are then is the machine's business
    (how fast a process starts), not the sleep's, so it is shown, not checked.
    """
    tasks = [wait_for_task(pool, task_id, timeout=30) for task_id in task_ids]
    with pool.connection() as conn:
        reminders = Querier(conn).list_reminders()
    sent = Counter((r.task_id, r.number) for r in reminders)
    gaps = gaps_between_reminders(reminders)
    print(
        f"  {len(reminders)} reminders sent; between two reminders of a flow, "
        f"{min(gaps):.3f} s to {max(gaps):.3f} s (the database's clock)."
    )
    checks.check(
        all(t.status == TaskStatus.COMPLETED and t.attempt == 1 for t in tasks),
        f"all {FLOWS} flows completed, each on its first attempt: a suspension costs no retry",
        f"{Counter((t.status, t.attempt) for t in tasks)}",
    )
    checks.check(
        len(sent) == FLOWS * REMINDERS_PER_FLOW and set(sent.values()) == {1},
        "every reminder was sent exactly once: replays did not send the earlier ones again",
        f"{len(reminders)} reminders for {len(sent)} (flow, number) pairs",
    )
    if on_time:
        checks.check(
            min(gaps) >= SECONDS_BETWEEN_REMINDERS
            and max(gaps) <= SECONDS_BETWEEN_REMINDERS + LATENESS_ALLOWED,
            f"each sleep lasted its {SECONDS_BETWEEN_REMINDERS} s, and at most "
            f"{LATENESS_ALLOWED} s more",
            f"gaps from {min(gaps):.3f} s to {max(gaps):.3f} s",
        )
    else:
        checks.check(
            min(gaps) >= SECONDS_BETWEEN_REMINDERS,
            f"no sleep was cut short: each lasted its {SECONDS_BETWEEN_REMINDERS} s at least",
            f"gaps from {min(gaps):.3f} s",
        )
    return tasks


def scenario_reminders(pool: ConnectionPool, checks: Checks) -> None:
    print(f"== {FLOWS} reminder flows on one worker with {SLOTS} slots ==")
    print(
        f"  Each sends {REMINDERS_PER_FLOW} reminders, {SECONDS_BETWEEN_REMINDERS} s apart, "
        "and sleeps in between."
    )
    task_ids = enqueue_reminder_flows(pool)
    with Worker(
        pool,
        FUNCTIONS,
        durable_functions=DURABLE_FUNCTIONS,
        queue=REMINDERS_QUEUE,
        slots=SLOTS,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
    ):
        samples = sample_until_all_finished(pool, FLOWS)
    elapsed = samples[-1].seconds
    print(f"  What the database showed, every {SAMPLE_EVERY} s (a line when it changed):")
    print_timeline(samples)
    check_reminders(pool, checks, task_ids)
    all_asleep = [s for s in samples if s.counts[TaskStatus.SUSPENDED] == FLOWS]
    checks.check(
        bool(all_asleep),
        f"all {FLOWS} flows slept at the same time, on a worker with {SLOTS} slots",
        f"at most {max(s.counts[TaskStatus.SUSPENDED] for s in samples)} at once",
    )
    checks.check(
        all(s.counts[TaskStatus.RUNNING] == 0 for s in all_asleep),
        "while they all slept, no task was running: both slots were free",
    )
    held_slots_would_take = FLOWS * (REMINDERS_PER_FLOW - 1) * SECONDS_BETWEEN_REMINDERS / SLOTS
    checks.check(
        elapsed < held_slots_would_take,
        f"all flows finished in {elapsed:.1f} s; sleeping in their slots, they would "
        f"have needed at least {held_slots_would_take:.0f} s",
    )


def scenario_one_slot_orders(pool: ConnectionPool, checks: Checks) -> None:
    print("\n== Three orders, parents and children on one queue, one slot ==")
    print("  In lesson 07 the first order would hold the slot while it waits for its")
    print("  payment, and the payment would never run. Here the order is suspended.")
    with pool.connection() as conn, conn.transaction():
        order_ids = [
            enqueue(
                conn,
                "process_order",
                {
                    "order_id": f"B-{n}",
                    "card": "4242-4242-4242-4242",
                    "amount_cents": 4200,
                    "email": "ada@example.com",
                },
                queue=ORDERS_QUEUE,
                durable=True,
            )
            for n in range(1, 4)
        ]
    with Worker(
        pool,
        FUNCTIONS,
        durable_functions=DURABLE_FUNCTIONS,
        queue=ORDERS_QUEUE,
        slots=1,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
    ) as worker:
        orders = [wait_for_task(pool, order_id, timeout=10) for order_id in order_ids]
        runs = worker.tasks_finished
    for order in orders:
        output = json.dumps(order.output)
        print(f"  Task {order.id}: {order.status} on attempt {order.attempt}: {output}")
    print(f"  The worker ran {runs} times: each order three times (until it waits for its")
    print("  payment, until it waits for its email, to the end), and each child once.")
    checks.check(
        all((o.output or {}).get("status") == "confirmed" and o.attempt == 1 for o in orders),
        "three orders completed on one slot: a parent waiting for its child held no slot",
        f"{[(o.status, o.output) for o in orders]}",
    )


def scenario_panic(pool: ConnectionPool, checks: Checks) -> None:
    print(f"== Panic: the worker dies while {FLOWS} reminder flows sleep ==")
    task_ids = enqueue_reminder_flows(pool)
    with worker_process() as first, worker_process() as second:
        first.start()
        print(f"  Worker process A (pid {first.pid}) starts the flows; each sends its first")
        print("  reminder, records its sleep, and is suspended.")
        wait_until(
            lambda: count_by_status(pool)[TaskStatus.SUSPENDED] == FLOWS,
            f"all {FLOWS} flows to fall asleep",
        )
        first.kill()
        print(f"  All {FLOWS} asleep: A is killed (SIGKILL).")
        second.start()
        print(f"  Worker process B (pid {second.pid}) starts. The flows are on no worker:")
        print("  B claims each one when the wake-up time in its history comes.")
        tasks = check_reminders(pool, checks, task_ids, on_time=False)
        second_ids = second.ids
    checks.check(
        all(t.worker_id in second_ids for t in tasks),
        "worker B finished every flow worker A had started",
    )


def worker_process() -> WorkerProcess:
    return WorkerProcess(
        schema=LESSON.schema,
        queues=[REMINDERS_QUEUE],
        slots=SLOTS,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
    )


def demonstrate(panic: bool) -> bool:
    checks = Checks()
    LESSON.reset()
    with LESSON.pool(max_size=16) as pool:
        if panic:
            scenario_panic(pool, checks)
        else:
            scenario_reminders(pool, checks)
            scenario_one_slot_orders(pool, checks)
    return checks.passed


if __name__ == "__main__":
    parser = argument_parser(__doc__ or "")
    parser.add_argument(
        "--panic", action="store_true", help="kill the worker while the reminders sleep"
    )
    options = parser.parse_args()
    configure_logging(options.verbose)
    run_lesson(lambda: demonstrate(options.panic))
