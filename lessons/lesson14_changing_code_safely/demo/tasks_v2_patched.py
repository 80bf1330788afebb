"""Version 2 of the shop, made safe: the fix behind a patch marker.

An order that reaches the charge with this code records a marker,
`charge-in-currency`, and is charged in its currency. An order charged by
version 1 has its charge as event 1 and no marker: replayed here, it takes
the old path, the charge without a currency, which matches its history, and
goes on. Both kinds of order run on the same workers.
"""

from __future__ import annotations

from typing import Any

from ..engine.durable import DurableContext, DurableFunction
from ..engine.worker import TaskFunction
from . import tasks
from .tasks import approve_and_confirm

# The patch's name, for its marker: it must never change, nor be reused.
CHARGE_IN_CURRENCY = "charge-in-currency"


def process_order(ctx: DurableContext, order: dict[str, Any]) -> dict[str, Any]:
    """Charge the order (in its currency, since the patch), wait for approval, email."""
    order_id = order["order_id"]
    if ctx.patched(CHARGE_IN_CURRENCY):
        charge_input = {
            "order_id": order_id,
            "amount_cents": order["amount_cents"],
            "currency": order["currency"],
        }
    else:  # charged by version 1, before the fix: replay what it did
        charge_input = {"order_id": order_id, "amount_cents": order["amount_cents"]}
    charge = ctx.call("charge_payment", charge_input, idempotency_key=f"charge:{order_id}")
    return approve_and_confirm(ctx, order_id, charge)


FUNCTIONS: dict[str, TaskFunction] = tasks.FUNCTIONS

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {
    "process_order": process_order,
}
