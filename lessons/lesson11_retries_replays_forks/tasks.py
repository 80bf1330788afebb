"""The task functions of this lesson's demonstration.

A task function takes the task's JSON input and returns a JSON output. A worker
finds it by the name it is registered under; `FUNCTIONS` lists them all, and is
what `worker_process --functions` loads. A durable function also takes a context
first; `DURABLE_FUNCTIONS` lists those.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from typing import Any

from .db.queries import Querier
from .durable import ChildTaskFailed, DurableContext, DurableFunction, EventTimeout
from .worker import NonRetryableError, TaskFunction, current_task


def example_task(input: dict[str, Any]) -> dict[str, Any]:
    message = input["message"]
    return {"reply": f"Processed: {message}"}


def sleep_task(input: dict[str, Any]) -> dict[str, float]:
    """Sleep for `input["seconds"]`, and report when it started and finished.

    The times are the task's own account of when it ran (seconds since the
    epoch), so a check of how many tasks ran at once need not trust the worker.
    """
    started_at = time.time()
    time.sleep(input["seconds"])
    return {"started_at": started_at, "finished_at": time.time()}


def note_start(input: Any) -> dict[str, float]:
    """Do nothing but say when it started (seconds since the epoch), to measure latency."""
    return {"started_at": time.time()}


def cancellable_sleep_task(input: dict[str, Any]) -> dict[str, Any]:
    """Like sleep_task, but it stops early when its attempt is cancelled.

    `Event.wait(seconds)` sleeps until the flag is raised or the time is up, and
    says which: the polite way for a long task to notice it should give up.
    """
    started_at = time.time()
    cancelled = current_task().cancelled.wait(input["seconds"])
    return {"started_at": started_at, "finished_at": time.time(), "cancelled": cancelled}


def flaky_task(input: dict[str, Any]) -> dict[str, Any]:
    """Fail every attempt before `input["succeed_on_attempt"]`, like a service that is down."""
    attempt = current_task().attempt
    if attempt < input["succeed_on_attempt"]:
        raise ConnectionError(f"the service is unavailable (attempt {attempt})")
    return {"succeeded_on_attempt": attempt}


class CardDeclined(NonRetryableError):
    """Trying again will not make the bank say yes."""


def charge_card(input: dict[str, Any]) -> dict[str, Any]:
    if input["card"].endswith("0002"):
        raise CardDeclined(f"card {input['card']} was declined")
    return {"charged": input["amount"]}


def charge_payment(input: dict[str, Any]) -> dict[str, Any]:
    """Charge the order's card: a row in `charges`, the payment provider's ledger.

    This task can run more than once: its worker may die after the charge, before
    the task is recorded complete. So the charge carries this task's id, unique,
    the way a payment API takes an idempotency key: a second run finds the
    first run's charge, and returns it instead of charging again.
    """
    if input["card"].endswith("0002"):
        raise CardDeclined(f"card {input['card']} was declined")
    task = current_task()
    with task.pool.connection() as conn:
        queries = Querier(conn)
        charge = queries.record_charge(
            order_id=input["order_id"], amount_cents=input["amount_cents"], task_id=task.id
        ) or queries.get_charge_of_task(task_id=task.id)
    if charge is None:  # one of the two queries always finds it
        raise RuntimeError(f"task {task.id} neither charged nor found its charge")
    return {"charge_id": charge.id, "amount_cents": charge.amount_cents}


# The bug of this lesson's story: until its fix is deployed, the confirmation
# email tells the customer that their payment failed, when it went through.
# Deploying the fix is setting COURSE_EMAIL_FIX=deployed in the environment of
# the workers. send_confirmation_email looks at it on every call, so main.py can
# deploy the fix to the workers it runs in its own process, halfway through.
EMAIL_FIX = "COURSE_EMAIL_FIX"


def confirmation_subject(input: dict[str, Any]) -> str:
    if os.environ.get(EMAIL_FIX) == "deployed":
        return f"Order {input['order_id']}: paid, charge {input['charge_id']}"
    return f"Order {input['order_id']}: your payment failed"  # the bug


def send_confirmation_email(input: dict[str, Any]) -> dict[str, Any]:
    """Email the customer: a row in `emails`, keyed by this task's id like a charge."""
    task = current_task()
    with task.pool.connection() as conn:
        queries = Querier(conn)
        email = queries.record_email(
            order_id=input["order_id"],
            recipient=input["to"],
            subject=confirmation_subject(input),
            task_id=task.id,
        ) or queries.get_email_of_task(task_id=task.id)
    if email is None:  # one of the two queries always finds it
        raise RuntimeError(f"task {task.id} neither sent nor found its email")
    return {"email_id": email.id}


FUNCTIONS: dict[str, TaskFunction] = {
    "example_task": example_task,
    "sleep_task": sleep_task,
    "note_start": note_start,
    "cancellable_sleep_task": cancellable_sleep_task,
    "flaky_task": flaky_task,
    "charge_card": charge_card,
    "charge_payment": charge_payment,
    "send_confirmation_email": send_confirmation_email,
}


# How many times each step function below has run in this process. The
# demonstration runs its workers in its own process, so it can read this to
# show which steps ran again on a retry, and which did not.
STEP_RUNS: Counter[str] = Counter()


def reserve_stock(input: dict[str, Any]) -> dict[str, Any]:
    STEP_RUNS["reserve_stock"] += 1
    return {"reservation": f"R-{input['order_id']}"}


def print_label(input: dict[str, Any]) -> dict[str, Any]:
    """Print a shipping label with a fresh, random tracking number.

    Random on purpose: if a retry ran this step again, the order would get a
    second label with a different number, and the parcel two identities.
    """
    STEP_RUNS["print_label"] += 1
    return {"tracking_number": uuid.uuid4().hex[:10].upper()}


# How long the courier's service keeps a caller waiting when it is down.
COURIER_TIMEOUT = 0.5


def book_courier(input: dict[str, Any]) -> dict[str, Any]:
    """Book a pickup. During the task's first attempt the courier's service hangs."""
    STEP_RUNS["book_courier"] += 1
    attempt = current_task().attempt
    if attempt == 1:
        time.sleep(COURIER_TIMEOUT)
        raise TimeoutError(
            f"the courier's service did not answer within {COURIER_TIMEOUT} s (attempt {attempt})"
        )
    return {"pickup": "tomorrow 09:00-12:00"}


def notify_customer(input: dict[str, Any]) -> dict[str, Any]:
    STEP_RUNS["notify_customer"] += 1
    return {"notified": input["email"]}


def ship_order(ctx: DurableContext, order: dict[str, Any]) -> dict[str, Any]:
    """Ship an order in four steps. Each step runs once, however many attempts it takes."""
    reservation = ctx.run_step(
        "reserve_stock",
        reserve_stock,
        {"order_id": order["order_id"], "items": order["items"]},
    )
    label = ctx.run_step(
        "print_label",
        print_label,
        {"order_id": order["order_id"], "address": order["address"]},
    )
    pickup = ctx.run_step(
        "book_courier", book_courier, {"tracking_number": label["tracking_number"]}
    )
    ctx.run_step(
        "notify_customer",
        notify_customer,
        {"email": order["email"], "tracking_number": label["tracking_number"]},
    )
    return {
        "reservation": reservation["reservation"],
        "tracking_number": label["tracking_number"],
        "pickup": pickup["pickup"],
    }


# Two later versions of ship_order, as a deploy might bring them while tasks
# that the old version started wait for their retry. The demonstration registers
# each under the name "ship_order", where it meets the old version's history.


def ship_order_with_renamed_step(ctx: DurableContext, order: dict[str, Any]) -> dict[str, Any]:
    """The label step is now called print_shipping_label: another call at event 2."""
    ctx.run_step(
        "reserve_stock",
        reserve_stock,
        {"order_id": order["order_id"], "items": order["items"]},
    )
    label = ctx.run_step(
        "print_shipping_label",
        print_label,
        {"order_id": order["order_id"], "address": order["address"]},
    )
    return {"tracking_number": label["tracking_number"]}


def ship_order_with_changed_input(ctx: DurableContext, order: dict[str, Any]) -> dict[str, Any]:
    """The label now has a paper size: the same step, but with another input at event 2."""
    ctx.run_step(
        "reserve_stock",
        reserve_stock,
        {"order_id": order["order_id"], "items": order["items"]},
    )
    label = ctx.run_step(
        "print_label",
        print_label,
        {"order_id": order["order_id"], "address": order["address"], "paper": "A6"},
    )
    return {"tracking_number": label["tracking_number"]}


# process_order and its children share one queue. (Before this lesson they could
# not: a parent waiting for its child held its slot, and enough waiting parents
# would take every slot from the children they wait for. Now a waiting parent
# is suspended, and its slot goes to whichever task needs it.)
ORDERS_QUEUE = "orders"


# How long an order waits for a person to approve it, unless it says otherwise.
APPROVAL_TIMEOUT = 24 * 3600.0


def process_order(ctx: DurableContext, order: dict[str, Any]) -> dict[str, Any]:
    """Wait for a person to approve the order, then charge the customer, then email
    them a confirmation: two child tasks.

    The approval is an external event, `approval:<order id>`, pushed with a
    payload such as `{"approved": true, "by": "ada"}`; the order waits for it
    without holding a worker, for `order["approval_timeout"]` seconds at most.
    However many attempts this takes, and whichever workers die along the way,
    the order is charged once and the email sent once: each child is spawned
    once (its event in the history), and does its effect once (its task id as
    the idempotency key).
    """
    order_id = order["order_id"]
    try:
        approval = ctx.wait_for_event(
            f"approval:{order_id}", timeout=order.get("approval_timeout", APPROVAL_TIMEOUT)
        )
    except EventTimeout:
        return {"order_id": order_id, "status": "not approved in time"}
    if not approval.get("approved"):
        return {"order_id": order_id, "status": "rejected", "by": approval.get("by")}
    try:
        payment = ctx.call(
            "charge_payment",
            {
                "order_id": order["order_id"],
                "card": order["card"],
                "amount_cents": order["amount_cents"],
            },
        )
    except ChildTaskFailed as failure:
        # The payment failed for good (the child had its own retries): the
        # order is over, and there is nothing to confirm.
        return {"order_id": order["order_id"], "status": "payment failed", "reason": str(failure)}
    email = ctx.call(
        "send_confirmation_email",
        {"order_id": order["order_id"], "to": order["email"], "charge_id": payment["charge_id"]},
    )
    return {
        "order_id": order["order_id"],
        "status": "confirmed",
        "charge_id": payment["charge_id"],
        "email_id": email["email_id"],
    }


REMINDERS_QUEUE = "reminders"


def send_reminder(input: dict[str, Any]) -> dict[str, Any]:
    """A step: send reminder number `input["number"]`, a row in `reminders`."""
    task = current_task()
    with task.pool.connection() as conn:
        reminder = Querier(conn).record_reminder(
            task_id=task.id, number=input["number"], recipient=input["to"]
        )
    if reminder is None:  # INSERT ... RETURNING always returns the row
        raise RuntimeError(f"task {task.id} could not record its reminder")
    return {"reminder_id": reminder.id}


def send_reminders(ctx: DurableContext, plan: dict[str, Any]) -> dict[str, Any]:
    """Remind `plan["to"]` `plan["times"]` times, `plan["every_seconds"]` apart.

    Between two reminders the task sleeps: it is suspended, and holds no worker
    slot. Each time it wakes, it replays its history from the top: the
    reminders already sent are recorded steps, and are not sent again.
    """
    sent = []
    for number in range(1, plan["times"] + 1):
        if number > 1:
            ctx.sleep(plan["every_seconds"])
        reminder = ctx.run_step(
            "send_reminder", send_reminder, {"to": plan["to"], "number": number}
        )
        sent.append(reminder["reminder_id"])
    return {"to": plan["to"], "reminder_ids": sent}


DURABLE_FUNCTIONS: dict[str, DurableFunction] = {
    "ship_order": ship_order,
    "process_order": process_order,
    "send_reminders": send_reminders,
}
