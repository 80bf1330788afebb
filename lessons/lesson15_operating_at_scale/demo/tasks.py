"""The task functions of this lesson's demonstration: a shop that runs for a year.

A task function takes the task's JSON input and returns a JSON output. A worker
finds it by the name it is registered under; `FUNCTIONS` and
`DURABLE_FUNCTIONS` list them all, and are what `worker_process --functions`
loads.

`process_order` charges an order (a child task) and sends its confirmation
email (a child task): a tree of three tasks, finished within a second, which
retention removes once the policy's period has passed. `subscription`
renews a customer's subscription every period, for ever: it sleeps, charges
the renewal, and, when its history is long, continues as new with the state
it carries (its renewals so far). Every effect is a row of the example's
tables (schema.sql), keyed by its order or renewal, the way a real API takes
an idempotency key: a second run of an effect finds the first one's row.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..db.queries import Querier
from ..engine.attempts import current_task
from ..engine.durable import DurableContext, DurableFunction
from ..engine.worker import TaskFunction


def process_order(ctx: DurableContext, order: dict[str, Any]) -> dict[str, Any]:
    """Charge the order, and send the confirmation email."""
    order_id = order["order_id"]
    charge = ctx.call(
        "charge_payment",
        {"order_id": order_id, "amount_cents": order["amount_cents"], "currency": "EUR"},
        idempotency_key=f"charge:{order_id}",
    )
    ctx.call("send_confirmation_email", {"order_id": order_id})
    return {"order_id": order_id, "charge_id": charge["charge_id"]}


def renewal_id(subscription: str, renewal: int) -> str:
    """The charge of one renewal: the payment API's idempotency key."""
    return f"{subscription}/renewal-{renewal}"


def subscription(ctx: DurableContext, state: dict[str, Any]) -> dict[str, Any]:
    """Renew every `period_seconds`, `renewals_wanted` times, continuing as new when long.

    The state carried over is all the next task needs: which renewal comes
    next. Each renewal is two events (the sleep, the charge), so a history of
    `history_limit` events holds half as many renewals.
    """
    while state["renewals"] < state["renewals_wanted"]:
        if ctx.history_is_long:
            ctx.continue_as_new(state)
        ctx.sleep(state["period_seconds"])
        renewal = state["renewals"] + 1
        charge_id = renewal_id(state["subscription"], renewal)
        ctx.call(
            "charge_payment",
            {"order_id": charge_id, "amount_cents": state["amount_cents"], "currency": "EUR"},
            idempotency_key=f"charge:{charge_id}",
        )
        state = {**state, "renewals": renewal}
    return state


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
    "subscription": subscription,
}
