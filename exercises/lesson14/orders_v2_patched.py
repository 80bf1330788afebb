"""Version 2 of the checks' order, made safe: the new charge behind a patch marker.

An order that version 1 charged replays the old charge; every order replays.
"""

from __future__ import annotations

from typing import Any

from lessons.lesson14_changing_code_safely.engine.durable import DurableContext, DurableFunction
from lessons.lesson14_changing_code_safely.engine.worker import TaskFunction

from .orders_v1 import echo, wait_for_go_ahead

CHARGE_IN_CURRENCY = "charge-in-currency"


def settle(ctx: DurableContext, order: dict[str, Any]) -> dict[str, Any]:
    order_id = order["order_id"]
    ctx.run_step("take order", echo, {"order_id": order_id})
    if order["pay_by"] != "card":
        ctx.run_step("send invoice", echo, {"order_id": order_id})
    elif ctx.patched(CHARGE_IN_CURRENCY):
        charge = {
            "order_id": order_id,
            "amount_cents": order["amount_cents"],
            "currency": order["currency"],
        }
        ctx.run_step("charge card", echo, charge)
    else:  # charged by version 1: replay what it did
        ctx.run_step(
            "charge card", echo, {"order_id": order_id, "amount_cents": order["amount_cents"]}
        )
    return wait_for_go_ahead(ctx, order_id)


FUNCTIONS: dict[str, TaskFunction] = {}

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {"settle": settle}
