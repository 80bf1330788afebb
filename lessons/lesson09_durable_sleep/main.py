"""Lesson 09: durable sleep; a sleeping or waiting task is suspended, and holds no slot.

    python lessons/lesson09_durable_sleep/main.py [-v] [--panic[=POINT]]

Forty `send_reminders` flows, each sending three reminders one second apart,
run on one worker with two slots. Between two reminders a flow sleeps: its
task is suspended, and leaves its slot. The database shows all forty asleep at
once, and no task running: both slots free. Then three orders run on a single
slot, parents and children on one queue: a parent that waits for its child is
suspended too, so the child gets the slot.

With `--panic`, a worker process runs the reminders and is killed (SIGKILL)
while they sleep; a second worker process wakes them at the times their
histories recorded. `--panic=POINT` makes the first kill itself at a point of
the crash table instead, running the reminders or an order on one slot,
whichever gets there (`PANIC_POINTS` below); `--panic=list` lists them.

Either way, every reminder must be sent exactly once, and never sooner than
its sleep allows.
"""

from __future__ import annotations

import functools
import itertools
import json
import sys
import textwrap
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

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
    add_panic_option,
    argument_parser,
    chosen_panic_point,
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
from lessons.lesson09_durable_sleep.engine.crash_points import CRASH_AT
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
# In the panic runs: long enough for worker A to put all 40 flows to sleep before the
# first one wakes, even on a busy machine, where 40 replays on two slots take seconds.
PANIC_SECONDS_BETWEEN_REMINDERS = 3.0
SLOTS = 2
# How much later than its sleep allows a reminder may go out before we call it late.
# A wake-up the timer missed would wait for the fallback poll, up to POLL_INTERVAL
# later; how late within that the 40 replays on 2 slots come is the CPU's business
# (a busy machine adds a second), so the check is that the timer woke them, not the poll.
LATENESS_ALLOWED = POLL_INTERVAL / 2
SAMPLE_EVERY = 0.05


@dataclass(frozen=True)
class Sample:
    """How many tasks were in each status at one moment, as the database saw it."""

    seconds: float
    counts: Counter[TaskStatus]


def order_input(order_id: str) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "card": "4242-4242-4242-4242",
        "amount_cents": 4200,
        "email": "ada@example.com",
    }


def count_by_status(pool: ConnectionPool) -> Counter[TaskStatus]:
    with pool.connection() as conn:
        return Counter({row.status: row.tasks for row in Querier(conn).count_tasks_by_status()})


def enqueue_reminder_flows(pool: ConnectionPool, every_seconds: float) -> list[int]:
    plan = {"times": REMINDERS_PER_FLOW, "every_seconds": every_seconds}
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
    """Seconds between each reminder and the one before it in the same flow (database clock).
    A reminder sent twice counts from its first sending."""
    first_sent_at: dict[tuple[int, int], datetime] = {}
    for reminder in reminders:
        key = (reminder.task_id, reminder.number)
        first_sent_at[key] = min(reminder.sent_at, first_sent_at.get(key, reminder.sent_at))
    sent_at = defaultdict(list)
    for (task_id, _), at in sorted(first_sent_at.items()):
        sent_at[task_id].append(at)
    return [
        (later - earlier).total_seconds()
        for times in sent_at.values()
        for earlier, later in itertools.pairwise(times)
    ]


def check_reminders(
    pool: ConnectionPool,
    checks: Checks,
    task_ids: list[int],
    every_seconds: float,
    *,
    on_time: bool = True,
    retried: frozenset[int] | set[int] = frozenset(),
) -> list[Task]:
    """Every flow completed on its first attempt (those in `retried`, running on a worker
    that died, on their second), every reminder went out once, and no sleep was cut
    short; with `on_time`, none ran late either.

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
    attempts = (
        f"those A was running when it died ({len(retried)}) on their second attempt, "
        "the others on their first"
        if retried
        else "each on its first attempt"
    )
    checks.check(
        all(
            t.status == TaskStatus.COMPLETED and t.attempt == (2 if t.id in retried else 1)
            for t in tasks
        ),
        f"all {FLOWS} flows completed, {attempts}: a suspension costs no retry",
        f"{Counter((t.status, t.attempt) for t in tasks)}",
    )
    # A step is at least once: one that A was running when it died, before its event
    # was recorded, runs again on B. So a flow A was running may send one reminder twice;
    # what a replay must never do is send again a reminder its history records.
    sent_twice = Counter(task_id for (task_id, _), times in sent.items() if times > 1)
    if retried:
        sent_once = (
            "every reminder was sent once, but for at most one per flow A was running when "
            "it died (a step cut off before its event was recorded runs again)"
        )
    else:
        sent_once = "every reminder was sent exactly once"
    checks.check(
        len(sent) == FLOWS * REMINDERS_PER_FLOW
        and max(sent.values()) <= 2
        and all(task_id in retried and times == 1 for task_id, times in sent_twice.items()),
        f"{sent_once}: replays did not send the earlier ones again",
        f"{len(reminders)} reminders for {len(sent)} (flow, number) pairs",
    )
    if on_time:
        checks.check(
            min(gaps) >= every_seconds and max(gaps) <= every_seconds + LATENESS_ALLOWED,
            f"each sleep lasted its {every_seconds} s, and at most {LATENESS_ALLOWED} s more",
            f"gaps from {min(gaps):.3f} s to {max(gaps):.3f} s",
        )
    else:
        checks.check(
            min(gaps) >= every_seconds,
            f"no sleep was cut short: each lasted its {every_seconds} s at least",
            f"gaps from {min(gaps):.3f} s",
        )
    return tasks


def scenario_reminders(pool: ConnectionPool, checks: Checks) -> None:
    print(f"== {FLOWS} reminder flows on one worker with {SLOTS} slots ==")
    print(
        f"  Each sends {REMINDERS_PER_FLOW} reminders, {SECONDS_BETWEEN_REMINDERS} s apart, "
        "and sleeps in between."
    )
    task_ids = enqueue_reminder_flows(pool, SECONDS_BETWEEN_REMINDERS)
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
    check_reminders(pool, checks, task_ids, SECONDS_BETWEEN_REMINDERS)
    # On a quiet machine all of them fall asleep before the first wakes; on a busy
    # one the first may wake sooner. Either way, more sleepers than slots at one
    # moment is the proof that a sleeping flow holds no slot.
    most_asleep = max(s.counts[TaskStatus.SUSPENDED] for s in samples)
    checks.check(
        most_asleep > SLOTS,
        f"{most_asleep} of the {FLOWS} flows slept at the same time, on a worker with "
        f"{SLOTS} slots: a sleeping flow holds no slot",
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
                order_input(f"B-{n}"),
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


def panic_reminders(pool: ConnectionPool, checks: Checks, point: str) -> None:
    """Worker A runs the reminder flows and dies at `point`; worker B finishes them."""
    story = PANIC_POINTS[point]
    print(f"== Panic: the worker dies {story.when} ==")
    task_ids = enqueue_reminder_flows(pool, PANIC_SECONDS_BETWEEN_REMINDERS)
    with (
        worker_process(REMINDERS_QUEUE, SLOTS, point) as first,
        worker_process(REMINDERS_QUEUE, SLOTS) as second,
    ):
        first.start()
        print(f"  Worker process A (pid {first.pid}) starts the flows; each sends its first")
        print("  reminder, records its sleep, and is suspended.")
        exit_code, last_logged, at_death = let_die(pool, first, point)
        second.start()
        print_then(second, story)
        running = {task.id for task in at_death.values() if task.status == TaskStatus.RUNNING}
        tasks = check_reminders(
            pool, checks, task_ids, PANIC_SECONDS_BETWEEN_REMINDERS, on_time=False, retried=running
        )
        second_ids = second.ids
    check_died(checks, point, exit_code, last_logged)
    checks.check(
        all(t.worker_id in second_ids for t in tasks),
        "worker B finished every flow worker A had started",
    )


def panic_order(pool: ConnectionPool, checks: Checks, point: str) -> None:
    """Worker A runs an order on one slot and dies at `point`; worker B finishes it."""
    story = PANIC_POINTS[point]
    print(f"== Panic: the worker dies {story.when} ==")
    with worker_process(ORDERS_QUEUE, 1, point) as first, worker_process(ORDERS_QUEUE, 1) as second:
        first.start()
        print(f"  Worker process A (pid {first.pid}) serves the orders queue with one slot:")
        print("  the order and its children take turns in it.")
        with pool.connection() as conn:
            task_id = enqueue(
                conn, "process_order", order_input("B-2001"), queue=ORDERS_QUEUE, durable=True
            )
        print(f"  Enqueued order B-2001 (task {task_id}).")
        exit_code, last_logged, at_death = let_die(pool, first, point)
        print("  The tasks, as A left them:")
        print_tasks(at_death, first.ids)
        second.start()
        print_then(second, story)
        task = wait_for_task(pool, task_id, timeout=30)
        second_ids = second.ids
    finished = tasks_by_id(pool)
    print(f"  Task {task_id}: {task.status} on attempt {task.attempt}: {json.dumps(task.output)}")
    print("  The tasks, once B is done:")
    print_tasks(finished, first.ids)
    with pool.connection() as conn:
        charges, emails = Querier(conn).list_charges(), Querier(conn).list_emails()
    print(f"  Charges made: {len(charges)}; emails sent: {len(emails)}.")
    check_died(checks, point, exit_code, last_logged)
    check_takeover(checks, at_death, finished, second_ids)
    children = Counter(t.task_name for t in finished.values() if t.parent_id == task_id)
    checks.check(
        task.status == TaskStatus.COMPLETED and (task.output or {}).get("status") == "confirmed",
        "order B-2001 completed and was confirmed",
        f"{task.status}: {task.output}",
    )
    checks.check(
        len(charges) == 1 and children["charge_payment"] == 1,
        "the order was charged exactly once, by the one charge_payment task it ever had",
        f"{len(charges)} charges, {children['charge_payment']} charge_payment tasks",
    )
    checks.check(
        len(emails) == 1 and children["send_confirmation_email"] == 1,
        "the confirmation email was sent exactly once, by the one email task it ever had",
        f"{len(emails)} emails, {children['send_confirmation_email']} email tasks",
    )


def let_die(
    pool: ConnectionPool, first: WorkerProcess, point: str
) -> tuple[int, str, dict[int, Task]]:
    """Wait for worker A to die at `point` (or kill it, when main.py picks the moment);
    say so, and return its exit code, the last line it logged, and the tasks as it left them."""
    story = PANIC_POINTS[point]
    if story.kill_when is not None:
        # Generous: on a busy machine, 40 flows on two slots take a while to fall asleep.
        wait_until(
            functools.partial(story.kill_when, pool), f"the moment to kill A: {point}", timeout=60
        )
        first.kill()
    exit_code = first.wait(timeout=30)
    for line in textwrap.wrap(story.dies.format(setting=f"{CRASH_AT}={point}"), width=78):
        print(f"  {line}")
    last_logged = (first.log().strip().splitlines() or [""])[-1]
    return exit_code, last_logged, tasks_by_id(pool)


def print_then(second: WorkerProcess, story: PanicPoint) -> None:
    print(f"  Worker process B (pid {second.pid}) starts. {story.then[0]}")
    for line in story.then[1:]:
        print(f"  {line}")


def check_died(checks: Checks, point: str, exit_code: int, last_logged: str) -> None:
    """A, which was to kill itself, died by SIGKILL at `point`. (When main.py killed it,
    there is nothing to check.)"""
    if PANIC_POINTS[point].kill_when is None:
        checks.check(
            exit_code == -9 and f"crash point {point}: SIGKILL" in last_logged,
            f"worker A died by SIGKILL, at {point}",
            f"exit code {exit_code}, last logged {last_logged!r}",
        )


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


def all_asleep(pool: ConnectionPool) -> bool:
    return count_by_status(pool)[TaskStatus.SUSPENDED] == FLOWS


@dataclass(frozen=True)
class PanicPoint:
    """What `--panic=POINT` does: where A dies, what the run tells, what B does next."""

    where: str  # where the point is, and what survives A there (for --panic=list)
    run: Callable[[ConnectionPool, Checks, str], None]  # the workload that gets there
    when: str  # the headline: "the worker dies ..."
    dies: str  # what A did before it died ({setting}: its COURSE_CRASH_AT=...)
    then: tuple[str, ...]  # lines: what B does, after "Worker process B (pid ...) starts."
    # None: A kills itself at the crash point. Else main.py kills A once this holds.
    kill_when: Callable[[ConnectionPool], bool] | None = None


TAKES_THE_ORDER_OVER = (
    "It takes back the tasks A was running,",
    "and the order goes on from its history: nothing A recorded is done again.",
)
TAKES_THE_FLOWS_OVER = (
    "It takes back the flows A was running, claims",
    "the queued ones, and wakes each sleeper at the time its history records.",
)

# Every point of engine/crash_points.py this demonstration reaches, and the default's.
PANIC_POINTS = {
    "all_asleep": PanicPoint(
        where=f"no crash point: main.py kills A once all {FLOWS} flows sleep; survives: "
        "each flow's history and wake-up time, no flow on A",
        run=panic_reminders,
        when=f"while {FLOWS} reminder flows sleep",
        dies=f"All {FLOWS} asleep: A is killed (SIGKILL).",
        then=(
            "The flows are on no worker:",
            "B claims each one when the wake-up time in its history comes.",
        ),
        kill_when=all_asleep,
    ),
    "call:before_commit": PanicPoint(
        where="the payment task and its event written, the order suspended; not committed; "
        "survives: the order on A, nothing of the payment",
        run=panic_order,
        when="as an order spawns its payment and suspends itself to wait for it",
        dies="A ran with {setting}: it died inside the transaction that creates the "
        "payment task and its event and suspends the order, so none of it happened.",
        then=TAKES_THE_ORDER_OVER,
    ),
    "call:suspended": PanicPoint(
        where="the payment task, its event and the order's suspension committed; survives: "
        "the order suspended, on no worker, the payment queued",
        run=panic_order,
        when="once an order is suspended, waiting for its payment",
        dies="A ran with {setting}: it died once the payment task, its event and the "
        "order's suspension were committed: the order is on no worker, and A was running "
        "nothing.",
        then=TAKES_THE_ORDER_OVER,
    ),
    "wait_for_child:finished": PanicPoint(
        where="the payment finished, the order woken has not used its result; survives: "
        "the completed payment, the order on A",
        run=panic_order,
        when="as a woken order finds its payment done",
        dies="A ran with {setting}: the payment ran and woke the order; the order, run "
        "again, found it completed, and A died before the order used its result.",
        then=TAKES_THE_ORDER_OVER,
    ),
    "sleep:before_commit": PanicPoint(
        where="a flow's sleep event written, the flow suspended; not committed; survives: "
        "its first reminder, the flow on A",
        run=panic_reminders,
        when="as the first reminder flow goes to sleep",
        dies="A ran with {setting}: the first flow to sleep wrote its sleep and its "
        "suspension, and A died before they committed: that flow is still A's.",
        then=TAKES_THE_FLOWS_OVER,
    ),
    "sleep:suspended": PanicPoint(
        where="a flow's sleep committed, the flow suspended; survives: its first reminder "
        "and its wake-up time",
        run=panic_reminders,
        when="once the first reminder flow is asleep",
        dies="A ran with {setting}: it died the moment the first flow's sleep was "
        "committed: that flow sleeps on no worker; any other A had begun is still A's.",
        then=TAKES_THE_FLOWS_OVER,
    ),
    "finish_attempts:before_commit": PanicPoint(
        where="a batch of results written, parents woken; not committed; survives: the "
        "charge, the payment task on A, the order suspended",
        run=panic_order,
        when="as it records that an order's payment went through",
        dies="A ran with {setting}: the payment charged the card, and A died in the "
        "transaction recording its result and waking the order.",
        then=TAKES_THE_ORDER_OVER,
    ),
    "task_returned:process_order": PanicPoint(
        where="process_order returned, its result not recorded; survives: both children "
        "completed, the order on A",
        run=panic_order,
        when="as an order returns",
        dies="A ran with {setting}: the order was charged and emailed, and returned; A "
        "died before its result was recorded.",
        then=TAKES_THE_ORDER_OVER,
    ),
    "task_returned:charge_payment": PanicPoint(
        where="charge_payment returned, its result not recorded; survives: the charge, the "
        "payment task on A, the order suspended",
        run=panic_order,
        when="right after an order's payment charged the card",
        dies="A ran with {setting}: the payment charged the card and returned; A died "
        "before its result was recorded (its second run must find the charge).",
        then=TAKES_THE_ORDER_OVER,
    ),
    "task_returned:send_confirmation_email": PanicPoint(
        where="send_confirmation_email returned, its result not recorded; survives: the "
        "email, the email task on A, the order suspended",
        run=panic_order,
        when="right after an order's email was sent",
        dies="A ran with {setting}: the email task sent the email and returned; A died "
        "before its result was recorded (its second run must find the email).",
        then=TAKES_THE_ORDER_OVER,
    ),
    "task_returned:send_reminders": PanicPoint(
        where="a reminder flow returned, its result not recorded; survives: its three "
        "reminders, the flow on A",
        run=panic_reminders,
        when="as the first reminder flow returns",
        dies="A ran with {setting}: the first flow to finish sent its third reminder and "
        "returned; A died before its result was recorded.",
        then=TAKES_THE_FLOWS_OVER,
    ),
}
DEFAULT_PANIC_POINT = "all_asleep"
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
    "sweep:before_commit": "every worker passes it each heartbeat interval from its start, "
    "so A would die within 0.1 s, maybe before it is ready, having done nothing this "
    "demonstration can count on",
}


def worker_process(queue: str, slots: int, crash_at: str | None = None) -> WorkerProcess:
    return WorkerProcess(
        schema=LESSON.schema,
        queues=[queue],
        slots=slots,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
        environment={CRASH_AT: crash_at} if crash_at else None,
    )


def demonstrate(panic_point: str | None) -> bool:
    checks = Checks()
    LESSON.reset()
    with LESSON.pool(max_size=16) as pool:
        if panic_point is not None:
            PANIC_POINTS[panic_point].run(pool, checks, panic_point)
        else:
            scenario_reminders(pool, checks)
            scenario_one_slot_orders(pool, checks)
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
