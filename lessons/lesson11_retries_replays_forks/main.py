"""Lesson 11: three ways to run a durable task again: retry, replay and fork.

    python lessons/lesson11_retries_replays_forks/main.py [-v]

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
"""

from __future__ import annotations

import io
import json
import os
import sys
from contextlib import redirect_stderr, redirect_stdout

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
    argument_parser,
    configure_logging,
    run_lesson,
    wait_until,
)
from lessons.lesson11_retries_replays_forks.db.models import (
    Charge,
    Email,
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
from lessons.lesson11_retries_replays_forks.engine.worker import Worker
from lessons.lesson11_retries_replays_forks.tools import history_tool

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


def effects(pool: ConnectionPool) -> tuple[list[Charge], list[Email]]:
    """What the payment provider and the mail server saw of the order."""
    with pool.connection() as conn:
        queries = Querier(conn)
        charges = [charge for charge in queries.list_charges() if charge.order_id == ORDER_ID]
        emails = [email for email in queries.list_emails() if email.order_id == ORDER_ID]
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


def demonstrate() -> bool:
    checks = Checks()
    LESSON.reset()
    os.environ.pop(EMAIL_FIX, None)  # the story starts before the fix
    with LESSON.pool(max_size=16) as pool, local_worker(pool):
        original_id = the_first_run(pool, checks)
        fork_id = the_fork(pool, checks, original_id)
        first_run = the_replay(pool, checks, original_id)
        side_by_side(pool, first_run, original_id, fork_id)
    return checks.passed


if __name__ == "__main__":
    options = argument_parser(__doc__ or "").parse_args()
    configure_logging(options.verbose)
    run_lesson(demonstrate)
