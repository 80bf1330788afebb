"""Lesson 11: three ways to run a durable task again: retry, replay and fork.

    python lessons/lesson11_retries_replays_forks/main.py [-v] [--panic[=POINT]]

An order is approved by a person, charged, and confirmed by email; but
`send_confirmation_email` has a bug, and tells the customer that the payment
failed. The fix is deployed. A retry would not help (the history records the
email, so a retry reuses it). Forking the order at its email event reuses the
approval and the charge, and sends the fixed email: charged once. Replaying
the order instead runs all of it again: it waits for a second approval, and
charges a second time. The demo prints the three histories side by side, and
checks those counts.

Every replay and fork goes through the lesson's command-line tool, and the
demo prints each command it runs and what the tool answers.

With `--panic`, two worker processes run one approved order, on one slot each.
The first kills itself (SIGKILL) the moment charge_payment has charged the card,
before its result is recorded. The second retries the payment task (its attempt
2 runs the function again, and finds the charge its attempt 1 made: a retry is
safe because the charge is keyed by the task) and the order replays its history.
`--panic=POINT` kills the first at another point of the crash table
(`PANIC_POINTS` below); `--panic=list` lists them.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass

# A Python without the course installed (`make install` puts it in .venv) would stop at
# the imports below with "No module named 'lessons'": say what to run instead.
try:
    import lessons.common.cli  # noqa: F401
except ModuleNotFoundError:
    print(
        f"error: this Python ({sys.executable}) does not have the course installed: run "
        "`make install`, then `.venv/bin/python lessons/lesson11_retries_replays_forks/main.py`.",
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
from lessons.lesson11_retries_replays_forks.db.models import (
    Charge,
    Email,
    EventWait,
    Task,
    TaskEvent,
    TaskStatus,
)
from lessons.lesson11_retries_replays_forks.db.queries import Querier
from lessons.lesson11_retries_replays_forks.demo.tasks import (
    DURABLE_FUNCTIONS,
    EMAIL_FIX,
    FUNCTIONS,
    ORDERS_QUEUE,
)
from lessons.lesson11_retries_replays_forks.engine.client import enqueue, push_event, wait_for_task
from lessons.lesson11_retries_replays_forks.engine.crash_points import CRASH_AT
from lessons.lesson11_retries_replays_forks.engine.worker import Worker
from lessons.lesson11_retries_replays_forks.tools import history_tool
from lessons.lesson11_retries_replays_forks.tools.worker_process import WorkerProcess

LESSON = Lesson.of(__file__)

# Lesson 08's fallback: the worker hears of forks, replays and approvals by
# notifications, not by polling.
POLL_INTERVAL = 5.0
HEARTBEAT_INTERVAL = 0.1
INACTIVITY_THRESHOLD = 1.0
SLOTS = 2

ORDER_ID = "A-1101"
APPROVAL = f"approval:{ORDER_ID}"
# process_order's events: 1 the approval, 2 the charge, 3 the email.
EMAIL_EVENT = 3
BROKEN_SUBJECT = f"Order {ORDER_ID}: your payment failed"

# The order of the --panic run.
PANIC_ORDER_ID = "A-2101"
PANIC_ORDER = {
    "order_id": PANIC_ORDER_ID,
    "card": "4242",
    "amount_cents": 4200,
    "email": "ada@x.org",
}
DEFAULT_PANIC_POINT = "task_returned:charge_payment"


def local_worker(pool: ConnectionPool) -> Worker:
    """A worker in this process for the orders and their children."""
    return Worker(
        pool,
        FUNCTIONS,
        durable_functions=DURABLE_FUNCTIONS,
        queue=ORDERS_QUEUE,
        slots=SLOTS,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
    )


def tool(*arguments: str) -> int:
    """Run a history_tool command, and print it and its answer, indented."""
    print(f"  $ history_tool {' '.join(arguments)}")
    answer = io.StringIO()
    with redirect_stdout(answer), redirect_stderr(answer):
        exit_code = history_tool.main(["--schema", LESSON.schema, *arguments])
    for line in answer.getvalue().splitlines():
        print(f"    {line}")
    if exit_code:
        print(f"    (exit code {exit_code})")
    return exit_code


def approve(pool: ConnectionPool, task_id: int) -> None:
    """What the person does, once the order waits for them: push the approval."""
    wait_until(lambda: get_task(pool, task_id).status == TaskStatus.SUSPENDED, "the order to wait")
    with pool.connection() as conn:
        pushed = push_event(conn, APPROVAL, {"approved": True, "by": "ada"})
    print(f"  Task {task_id} waits for {APPROVAL}; ada approves it (event {pushed.id}).")


def get_task(pool: ConnectionPool, task_id: int) -> Task:
    with pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    if task is None:
        raise LookupError(f"there is no task {task_id}")
    return task


def history_of(pool: ConnectionPool, task_id: int) -> list[TaskEvent]:
    with pool.connection() as conn:
        return Querier(conn).list_task_events(task_id=task_id)


def effects(pool: ConnectionPool, order_id: str = ORDER_ID) -> tuple[list[Charge], list[Email]]:
    """What the payment provider and the mail server saw of the order."""
    with pool.connection() as conn:
        queries = Querier(conn)
        charges = [charge for charge in queries.list_charges() if charge.order_id == order_id]
        emails = [email for email in queries.list_emails() if email.order_id == order_id]
    return charges, emails


def print_effects(pool: ConnectionPool) -> None:
    charges, emails = effects(pool)
    for charge in charges:
        print(f"  charge {charge.id}: {charge.amount_cents} cents, made by task {charge.task_id}")
    for email in emails:
        print(f'  email {email.id}: "{email.subject}", sent by task {email.task_id}')


def the_first_run(pool: ConnectionPool, checks: Checks) -> int:
    print("== The first run: approved, charged, and an email with a bug ==")
    with pool.connection() as conn:
        order = {"order_id": ORDER_ID, "card": "4242", "amount_cents": 4200, "email": "ada@x.org"}
        task_id = enqueue(conn, "process_order", order, queue=ORDERS_QUEUE, durable=True)
    approve(pool, task_id)
    task = wait_for_task(pool, task_id)
    print(f"  Task {task_id}: {task.status} on attempt {task.attempt}: {json.dumps(task.output)}")
    tool("history", str(task_id))
    print_effects(pool)
    charges, emails = effects(pool)
    checks.check(
        len(charges) == 1 and [email.subject for email in emails] == [BROKEN_SUBJECT],
        "the first run charged the order once, and told the customer the payment failed",
        f"{len(charges)} charges, emails {[email.subject for email in emails]}",
    )
    print("\n  The fix is deployed. Retrying would not help: the order completed, so")
    print("  nothing retries it, and a retry keeps the history anyway: it would find")
    print(f"  event {EMAIL_EVENT}, reuse the email it records, and send nothing.")
    os.environ[EMAIL_FIX] = "deployed"
    return task_id


def the_fork(pool: ConnectionPool, checks: Checks, original_id: int) -> int:
    print(f"\n== Fork at the email, event {EMAIL_EVENT}: the approval and the charge are reused ==")
    original, original_events = get_task(pool, original_id), history_of(pool, original_id)
    tool("fork", str(original_id), "--at", str(EMAIL_EVENT))
    [forked] = [task for task in all_tasks(pool) if task.forked_from_task_id == original_id]
    forked = wait_for_task(pool, forked.id)
    print(f"  Task {forked.id}: {forked.status} on attempt {forked.attempt}, with no new approval.")
    tool("history", str(forked.id))
    print_effects(pool)
    charges, emails = effects(pool)
    fork_events = history_of(pool, forked.id)
    reused = EMAIL_EVENT - 1
    checks.check(
        (forked.forked_from_task_id, forked.forked_at_event) == (original_id, EMAIL_EVENT)
        and [(e.key, e.child_task_id) for e in fork_events[:reused]]
        == [(e.key, e.child_task_id) for e in original_events[:reused]],
        f"the fork records task {original_id} and event {EMAIL_EVENT}, and replayed the "
        "recorded approval and charge_payment task",
    )
    checks.check(
        len(charges) == 1 and len(emails) == 2 and emails[-1].subject != BROKEN_SUBJECT,
        "after the fork: still one charge, and the fixed email sent",
        f"{len(charges)} charges, emails {[email.subject for email in emails]}",
    )
    checks.check(
        get_task(pool, original_id) == original
        and history_of(pool, original_id) == original_events,
        f"task {original_id} and its history are as they were before the fork",
    )
    return forked.id


def the_replay(pool: ConnectionPool, checks: Checks, original_id: int) -> list[TaskEvent]:
    print("\n== Replay instead: the history is deleted, and the order runs again ==")
    first_run = history_of(pool, original_id)
    tool("replay", str(original_id))
    cleared = not history_of(pool, original_id)
    print("  The replay starts from scratch, so it waits for a person's approval again:")
    approve(pool, original_id)
    task = wait_for_task(pool, original_id)
    print(f"  Task {original_id}: {task.status} on attempt {task.attempt}.")
    print_effects(pool)
    charges, emails = effects(pool)
    replayed = history_of(pool, original_id)
    checks.check(
        cleared and task.status == TaskStatus.COMPLETED,
        "the replay started with an empty history, and completed",
    )
    children = {e.child_task_id for e in replayed if e.child_task_id}
    checks.check(
        len(children) == 2 and not children & {e.child_task_id for e in first_run},
        "the replay spawned every child again: none of the first run's was reused",
    )
    checks.check(
        len(charges) == 2 and len(emails) == 3,
        "after the replay: the order is charged twice, and a third email sent",
        f"{len(charges)} charges, {len(emails)} emails",
    )
    return first_run


def side_by_side(
    pool: ConnectionPool, first_run: list[TaskEvent], original_id: int, fork_id: int
) -> None:
    print("\n== The three histories, side by side: each event, and what it did ==")
    runs = {
        f"first run (task {original_id})": first_run,
        f"fork at {EMAIL_EVENT} (task {fork_id})": history_of(pool, fork_id),
        f"replay (task {original_id})": history_of(pool, original_id),
    }
    rows = [["event", "kind", "name", *runs]]
    for event in first_run:
        number = event.event_number
        cells = [cell(pool, events, number) for events in runs.values()]
        rows.append([str(number), event.kind, short_name(event), *cells])
    for line in history_tool.table(rows, right_aligned={0}):
        print(f"  {line}")
    tool("tree", str(original_id))
    tool("fork", str(original_id), "--at", "4")


def short_name(event: TaskEvent) -> str:
    return event.name.removeprefix("send_confirmation_")


def cell(pool: ConnectionPool, events: list[TaskEvent], number: int) -> str:
    """`task 3: charge 1, copied`: what event `number` did, for the side-by-side table."""
    event = next((event for event in events if event.event_number == number), None)
    if event is None:
        return ""
    copied = ", copied" if event.copied_from_task_id else ""
    if event.child_task_id is None:
        return f"approved by ada{copied}"
    output = get_task(pool, event.child_task_id).output or {}
    effect = f"charge {output['charge_id']}" if "charge_id" in output else ""
    effect = f"email {output['email_id']}" if "email_id" in output else effect
    return f"task {event.child_task_id}: {effect}{copied}"


def all_tasks(pool: ConnectionPool) -> list[Task]:
    with pool.connection() as conn:
        return Querier(conn).list_tasks()


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
        with pool.connection() as conn:
            task_id = enqueue(conn, "process_order", PANIC_ORDER, queue=ORDERS_QUEUE, durable=True)
        print(f"  Enqueued order {PANIC_ORDER_ID} (task {task_id}).")
        wait_until(
            lambda: open_wait(pool, task_id) or exited(first), "the order to wait, or A to die"
        )
        approval = approve_panic_order(pool, task_id) if open_wait(pool, task_id) else None
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
            approval = approve_panic_order(pool, task_id)
        task = wait_for_task(pool, task_id, timeout=30)
        second_ids = second.ids
    finished = tasks_by_id(pool)
    wait = wait_of(pool, task_id)
    print(f"  Task {task_id}: {task.status} on attempt {task.attempt}: {json.dumps(task.output)}")
    print(f"  Its wait: ended by event {wait.external_event_id}.")
    print("  The tasks, once B is done:")
    print_tasks(finished, first.ids)
    charges, emails = (len(made) for made in effects(pool, PANIC_ORDER_ID))
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
        f"order {PANIC_ORDER_ID} completed and was confirmed",
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


def wait_of(pool: ConnectionPool, task_id: int) -> EventWait:
    """The order's one wait, as `event_waits` recorded it."""
    with pool.connection() as conn:
        [wait] = [w for w in Querier(conn).list_event_waits() if w.task_id == task_id]
    return wait


def open_wait(pool: ConnectionPool, task_id: int) -> bool:
    """Whether the task has a wait open: committed, so that a push now ends it."""
    with pool.connection() as conn:
        waits = Querier(conn).list_event_waits()
    return any(w.task_id == task_id and w.ended_at is None for w in waits)


def approve_panic_order(pool: ConnectionPool, task_id: int) -> int:
    """What the person does, once the order waits for them: push the approval."""
    with pool.connection() as conn:
        pushed = push_event(conn, f"approval:{PANIC_ORDER_ID}", {"approved": True, "by": "ada"})
    print(f"  The order waits for approval:{PANIC_ORDER_ID}; ada approves it (event {pushed.id}).")
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
    os.environ.pop(EMAIL_FIX, None)  # the story starts before the fix
    with LESSON.pool(max_size=16) as pool:
        if panic_point is not None:
            panic_order(pool, checks, panic_point)
            return checks.passed
        with local_worker(pool):
            original_id = the_first_run(pool, checks)
            fork_id = the_fork(pool, checks, original_id)
            first_run = the_replay(pool, checks, original_id)
            side_by_side(pool, first_run, original_id, fork_id)
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
