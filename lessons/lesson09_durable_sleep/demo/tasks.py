"""The task functions of this lesson's demonstration.

A task function takes the task's JSON input and returns a JSON output. A worker
finds it by the name it is registered under; `FUNCTIONS` lists them all, and is
what `worker_process --functions` loads. A durable function also takes a context
first; `DURABLE_FUNCTIONS` lists those.
"""

from __future__ import annotations

from typing import Any

from ..db.queries import Querier
from ..engine.attempts import current_task
from ..engine.durable import ChildTaskFailed, DurableContext, DurableFunction
from ..engine.shared import NonRetryableError
from ..engine.worker import TaskFunction


class CardDeclined(NonRetryableError):
    """Trying again will not make the bank say yes."""


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


def send_confirmation_email(input: dict[str, Any]) -> dict[str, Any]:
    """Email the customer: a row in `emails`, keyed by this task's id like a charge."""
    task = current_task()
    with task.pool.connection() as conn:
        queries = Querier(conn)
        email = queries.record_email(
            order_id=input["order_id"],
            recipient=input["to"],
            subject=f"Order {input['order_id']}: paid, charge {input['charge_id']}",
            task_id=task.id,
        ) or queries.get_email_of_task(task_id=task.id)
    if email is None:  # one of the two queries always finds it
        raise RuntimeError(f"task {task.id} neither sent nor found its email")
    return {"email_id": email.id}


# process_order and its children share one queue. (Before this lesson they could
# not: a parent waiting for its child held its slot, and enough waiting parents
# would take every slot from the children they wait for. Now a waiting parent
# is suspended, and its slot goes to whichever task needs it.)
ORDERS_QUEUE = "orders"


def process_order(ctx: DurableContext, order: dict[str, Any]) -> dict[str, Any]:
    """Charge the customer, then email them a confirmation: two child tasks.

    However many attempts this takes, and whichever workers die along the way,
    the order is charged once and the email sent once: each child is spawned
    once (its event in the history), and does its effect once (its task id as
    the idempotency key).
    """
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


FUNCTIONS: dict[str, TaskFunction] = {
    "charge_payment": charge_payment,
    "send_confirmation_email": send_confirmation_email,
}

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {
    "process_order": process_order,
    "send_reminders": send_reminders,
}
