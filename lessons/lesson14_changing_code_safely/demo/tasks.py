"""The task functions of this lesson's demonstration: a shop, as first deployed.

A task function takes the task's JSON input and returns a JSON output. A worker
finds it by the name it is registered under; `FUNCTIONS` and
`DURABLE_FUNCTIONS` list them all, and are what `worker_process --functions`
loads.

`process_order` charges an order (a child task), waits for a person's
approval (an external event), and sends the confirmation email (a child
task). It has a bug: it charges every order in US dollars, whatever the
customer's currency. The modules beside this one are the versions of the code
that fix it, one deploy each:

- `tasks_v2_unsafe.py`: the fix as anyone would write it first; it breaks
  every order in flight (see `history_tool check`);
- `tasks_v2_patched.py`: the same fix behind a patch marker;
- `tasks_v3.py`: the patch deprecated, once no order takes the old path.

Every effect is a row of the example's tables (schema.sql), keyed by its
order, the way a real API takes an idempotency key: a second run of an effect
finds the first one's row.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..db.queries import Querier
from ..engine.attempts import current_task
from ..engine.durable import DurableContext, DurableFunction
from ..engine.worker import TaskFunction

# How long an order waits for a person's approval.
APPROVAL_TIMEOUT_SECONDS = 86400.0


def approval_event_key(order_id: str) -> str:
    """The external event a person's approval of an order is."""
    return f"approval:{order_id}"


def process_order(ctx: DurableContext, order: dict[str, Any]) -> dict[str, Any]:
    """Charge the order, wait for its approval, and send the confirmation email."""
    order_id = order["order_id"]
    # The bug: no currency, so the payment API charges USD.
    charge = ctx.call(
        "charge_payment",
        {"order_id": order_id, "amount_cents": order["amount_cents"]},
        idempotency_key=f"charge:{order_id}",
    )
    return approve_and_confirm(ctx, order_id, charge)


def approve_and_confirm(
    ctx: DurableContext, order_id: str, charge: dict[str, Any]
) -> dict[str, Any]:
    """The rest of an order, the same in every version: approval, then the email."""
    approval = ctx.wait_for_event(approval_event_key(order_id), timeout=APPROVAL_TIMEOUT_SECONDS)
    ctx.call("send_confirmation_email", {"order_id": order_id})
    return {
        "order_id": order_id,
        "charge_id": charge["charge_id"],
        "currency": charge["currency"],
        "approved_by": approval["approved_by"],
    }


def charge_payment(input: dict[str, Any]) -> dict[str, Any]:
    """Charge the order through the payment API: a row in `charges`, once per order."""
    task = current_task()
    with task.pool.connection() as conn:
        queries = Querier(conn)
        charge = queries.record_charge(
            order_id=input["order_id"],
            amount_cents=input["amount_cents"],
            # What the payment API does when it is told no currency.
            currency=input.get("currency", "USD"),
            task_id=task.id,
        ) or queries.get_charge_of_order(order_id=input["order_id"])
    if charge is None:  # one of the two queries always finds it
        raise RuntimeError(f"order {input['order_id']} was neither charged nor found charged")
    return {
        "charge_id": charge.id,
        "amount_cents": charge.amount_cents,
        "currency": charge.currency,
    }


def refund_payment(input: dict[str, Any]) -> dict[str, Any]:
    """Refund the order's charge, if it was charged, once."""
    task = current_task()
    with task.pool.connection() as conn:
        queries = Querier(conn)
        charge = queries.get_charge_of_order(order_id=input["order_id"])
        if charge is None:
            return {"order_id": input["order_id"], "refunded_cents": 0}
        refund = queries.record_refund(
            charge_id=charge.id, amount_cents=charge.amount_cents, task_id=task.id
        ) or queries.get_refund_of_charge(charge_id=charge.id)
    if refund is None:  # one of the two queries always finds it
        raise RuntimeError(f"charge {charge.id} was neither refunded nor found refunded")
    return {"order_id": input["order_id"], "refunded_cents": refund.amount_cents}


def send_confirmation_email(input: dict[str, Any]) -> dict[str, Any]:
    """Send the order's confirmation email: a row in `emails`, once per order."""
    task = current_task()
    with task.pool.connection() as conn:
        Querier(conn).record_email(order_id=input["order_id"], task_id=task.id)
    return {"order_id": input["order_id"], "sent": True}


def send_digest(input: dict[str, Any]) -> dict[str, Any]:
    """What a schedule enqueues: the digest of one tick, recorded once per tick."""
    task = current_task()
    with task.pool.connection() as conn:
        Querier(conn).record_digest(
            schedule=input["schedule"],
            tick_at=datetime.fromisoformat(input["tick_at"]),
            task_id=task.id,
        )
    return {"schedule": input["schedule"], "tick_at": input["tick_at"]}


FUNCTIONS: dict[str, TaskFunction] = {
    "charge_payment": charge_payment,
    "refund_payment": refund_payment,
    "send_confirmation_email": send_confirmation_email,
    "send_digest": send_digest,
}

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {
    "process_order": process_order,
}
