"""The task functions of this lesson's demonstration.

A task function takes the task's JSON input and returns a JSON output. A worker
finds it by the name it is registered under; `FUNCTIONS` lists them all, and is
what `worker_process --functions` loads. A durable function also takes a context
first; `DURABLE_FUNCTIONS` lists those.
"""

from __future__ import annotations

import os
from typing import Any

from ..db.queries import Querier
from ..engine.attempts import current_task
from ..engine.durable import ChildTaskFailed, DurableContext, DurableFunction, EventTimeout
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


FUNCTIONS: dict[str, TaskFunction] = {
    "charge_payment": charge_payment,
    "send_confirmation_email": send_confirmation_email,
}

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {"process_order": process_order}
