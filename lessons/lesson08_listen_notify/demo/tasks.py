"""The task functions of this lesson's demonstration.

A task function takes the task's JSON input and returns a JSON output. A worker
finds it by the name it is registered under; `FUNCTIONS` lists them all, and is
what `worker_process --functions` loads. A durable function also takes a context
first; `DURABLE_FUNCTIONS` lists those.
"""

from __future__ import annotations

import time
from typing import Any

from ..db.queries import Querier
from ..engine.attempts import current_task
from ..engine.durable import ChildTaskFailed, DurableContext, DurableFunction
from ..engine.shared import NonRetryableError
from ..engine.worker import TaskFunction


def note_start(input: Any) -> dict[str, float]:
    """Do nothing but say when it started (seconds since the epoch), to measure latency."""
    return {"started_at": time.time()}


def flaky_task(input: dict[str, Any]) -> dict[str, Any]:
    """Fail every attempt before `input["succeed_on_attempt"]`, like a service that is down."""
    attempt = current_task().attempt
    if attempt < input["succeed_on_attempt"]:
        raise ConnectionError(f"the service is unavailable (attempt {attempt})")
    return {"succeeded_on_attempt": attempt}


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


# process_order runs on one queue and its children on another. A parent waiting
# for its child holds its slot: if both shared a queue, enough waiting parents
# would take every slot, and the children they wait for would never run.
ORDERS_QUEUE = "orders"
ORDER_STEPS_QUEUE = "order_steps"


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
            queue=ORDER_STEPS_QUEUE,
        )
    except ChildTaskFailed as failure:
        # The payment failed for good (the child had its own retries): the
        # order is over, and there is nothing to confirm.
        return {"order_id": order["order_id"], "status": "payment failed", "reason": str(failure)}
    email = ctx.call(
        "send_confirmation_email",
        {"order_id": order["order_id"], "to": order["email"], "charge_id": payment["charge_id"]},
        queue=ORDER_STEPS_QUEUE,
    )
    return {
        "order_id": order["order_id"],
        "status": "confirmed",
        "charge_id": payment["charge_id"],
        "email_id": email["email_id"],
    }


FUNCTIONS: dict[str, TaskFunction] = {
    "note_start": note_start,
    "flaky_task": flaky_task,
    "charge_payment": charge_payment,
    "send_confirmation_email": send_confirmation_email,
}

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {"process_order": process_order}
