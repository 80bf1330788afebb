"""The task functions of this lesson's demonstration.

A task function takes the task's JSON input and returns a JSON output. A worker
finds it by the name it is registered under; `FUNCTIONS` and
`DURABLE_FUNCTIONS` list them all, and are what `worker_process --functions`
loads.

The example is a shop's checkout, a saga: `checkout` reserves the stock,
charges the card (a child task), waits for the warehouse to say the parcel is
packed (an external event), and sends the confirmation email (a child task).
Cancelled on the way, it compensates: it refunds the charge and releases the
stock, and sends no email. Every effect is a row of the example's tables
(schema.sql), keyed by its order, the way a real API takes an idempotency
key: a second run of an effect finds the first one's row.

`send_digest` is what a schedule enqueues at each of its ticks: it records the
tick it ran for, once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..db.queries import Querier
from ..engine.attempts import current_task
from ..engine.durable import Cancelled, DurableContext, DurableFunction
from ..engine.worker import TaskFunction

# How long an order waits for the warehouse to pack it.
PACKING_TIMEOUT_SECONDS = 3600.0


def packed_event_key(order_id: str) -> str:
    """The external event the warehouse pushes when an order's parcel is packed."""
    return f"packed:{order_id}"


def checkout(ctx: DurableContext, order: dict[str, Any]) -> dict[str, Any]:
    """Reserve, charge, wait for the packing, email; or, cancelled, refund and release.

    The compensation undoes what *may* have happened, found by the order's id,
    not only what the history says happened: a charge cancelled while it ran
    may have reached the payment API before its worker heard of it.
    """
    order_id = order["order_id"]
    try:
        ctx.run_step("reserve_stock", reserve_stock, {"order_id": order_id, "item": order["item"]})
        # The order's id is the charge's business key: a fork, or a replay, of
        # this checkout finds this charge instead of charging again.
        charge = ctx.call(
            "charge_payment",
            {"order_id": order_id, "amount_cents": order["amount_cents"]},
            idempotency_key=f"charge:{order_id}",
        )
        ctx.wait_for_event(packed_event_key(order_id), timeout=PACKING_TIMEOUT_SECONDS)
        ctx.call("send_confirmation_email", {"order_id": order_id})
    except Cancelled:
        ctx.call("refund_payment", {"order_id": order_id})
        ctx.run_step("release_stock", release_stock, {"order_id": order_id})
        raise
    return {"order_id": order_id, "charge_id": charge["charge_id"], "emailed": True}


def reserve_stock(input: dict[str, Any]) -> dict[str, Any]:
    """A step: hold the order's item in the warehouse."""
    with current_task().pool.connection() as conn:
        reservation = Querier(conn).reserve_stock(order_id=input["order_id"], item=input["item"])
    if reservation is None:  # INSERT ... ON CONFLICT DO UPDATE always returns the row
        raise RuntimeError(f"no reservation for order {input['order_id']}")
    return {"order_id": reservation.order_id, "item": reservation.item}


def release_stock(input: dict[str, Any]) -> dict[str, Any]:
    """A compensation step: give the order's item back (nothing, if none was held)."""
    with current_task().pool.connection() as conn:
        released = Querier(conn).release_stock(order_id=input["order_id"])
    return {"order_id": input["order_id"], "released": released is not None}


def charge_payment(input: dict[str, Any]) -> dict[str, Any]:
    """Charge the order through the payment API: a row in `charges`, once per order."""
    task = current_task()
    with task.pool.connection() as conn:
        queries = Querier(conn)
        charge = queries.record_charge(
            order_id=input["order_id"], amount_cents=input["amount_cents"], task_id=task.id
        ) or queries.get_charge_of_order(order_id=input["order_id"])
    if charge is None:  # one of the two queries always finds it
        raise RuntimeError(f"order {input['order_id']} was neither charged nor found charged")
    return {"charge_id": charge.id, "amount_cents": charge.amount_cents}


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
    "checkout": checkout,
}
