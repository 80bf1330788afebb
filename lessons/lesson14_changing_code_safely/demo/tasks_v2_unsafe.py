"""Version 2 of the shop, as anyone would write the fix first: charge in the order's currency.

It is right for new orders, and it breaks every order in flight. An order
charged by version 1 and waiting for its approval has, as event 1 of its
history, the charge without a currency; this code, replaying it, makes the
charge with one, a call the history does not hold, and the order fails with a
`NonDeterminismError`. `history_tool check --functions` finds them all before
the deploy.
"""

from __future__ import annotations

from typing import Any

from ..engine.durable import DurableContext, DurableFunction
from ..engine.worker import TaskFunction
from . import tasks
from .tasks import approve_and_confirm


def process_order(ctx: DurableContext, order: dict[str, Any]) -> dict[str, Any]:
    """Charge the order in its currency, wait for its approval, send the email."""
    order_id = order["order_id"]
    charge = ctx.call(
        "charge_payment",
        {
            "order_id": order_id,
            "amount_cents": order["amount_cents"],
            "currency": order["currency"],
        },
        idempotency_key=f"charge:{order_id}",
    )
    return approve_and_confirm(ctx, order_id, charge)


FUNCTIONS: dict[str, TaskFunction] = tasks.FUNCTIONS

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {
    "process_order": process_order,
}
