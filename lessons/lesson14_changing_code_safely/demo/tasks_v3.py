"""Version 3 of the shop: the patch deprecated, once no order in flight takes its old path.

`history_tool patches` said that no unfinished order takes the old path of
`charge-in-currency` any more: the `if` goes, and the new path stays. Orders
that version 2 charged hold the patch's marker as event 1; `deprecate_patch`
passes over it, so that their charge is event 2 as before. New orders record
no marker. When no order with the marker is left either, the
`deprecate_patch` line goes too (version 4, not shown).
"""

from __future__ import annotations

from typing import Any

from ..engine.durable import DurableContext, DurableFunction
from ..engine.worker import TaskFunction
from . import tasks
from .tasks import approve_and_confirm
from .tasks_v2_patched import CHARGE_IN_CURRENCY


def process_order(ctx: DurableContext, order: dict[str, Any]) -> dict[str, Any]:
    """Charge the order in its currency, wait for its approval, send the email."""
    order_id = order["order_id"]
    ctx.deprecate_patch(CHARGE_IN_CURRENCY)
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
