"""Version 2 of the checks' order, unsafe: the card is charged in the order's currency.

Replayed against an order that version 1 charged, the charge at event 2 has
another input: `NonDeterminismError`. Orders paid by invoice replay.
"""

from __future__ import annotations

from typing import Any

from lessons.lesson14_changing_code_safely.engine.durable import DurableContext, DurableFunction
from lessons.lesson14_changing_code_safely.engine.worker import TaskFunction

from .orders_v1 import echo, wait_for_go_ahead


def settle(ctx: DurableContext, order: dict[str, Any]) -> dict[str, Any]:
    order_id = order["order_id"]
    ctx.run_step("take order", echo, {"order_id": order_id})
    if order["pay_by"] == "card":
        ctx.run_step(
            "charge card",
            echo,
            {
                "order_id": order_id,
                "amount_cents": order["amount_cents"],
                "currency": order["currency"],
            },
        )
    else:
        ctx.run_step("send invoice", echo, {"order_id": order_id})
    return wait_for_go_ahead(ctx, order_id)


FUNCTIONS: dict[str, TaskFunction] = {}

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {"settle": settle}
