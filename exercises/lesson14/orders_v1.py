"""Durable functions for lesson 14's exercise checks: an order, as version 1 runs it.

`settle` takes the order, charges a card or sends an invoice, as the order
says, and waits for a person's go-ahead (an external event, `go_key`), where
the checks hold it. Version 2 changes the card's charge only: an order paid
by invoice replays on any version, an order paid by card breaks on
`orders_v2_unsafe` at event 2, and replays on `orders_v2_patched`.
"""

from __future__ import annotations

from typing import Any

from lessons.lesson14_changing_code_safely.engine.durable import DurableContext, DurableFunction
from lessons.lesson14_changing_code_safely.engine.worker import TaskFunction

# Long enough never to end while a check runs: the go-ahead ends it.
GO_AHEAD_TIMEOUT_SECONDS = 3600.0


def go_key(order_id: str) -> str:
    """The external event that lets an order finish."""
    return f"go:{order_id}"


def echo(input: Any) -> Any:
    """A step with no effect: its event is what the checks need."""
    return input


def settle(ctx: DurableContext, order: dict[str, Any]) -> dict[str, Any]:
    """Take the order, charge its card (no currency: the bug) or invoice it, then wait."""
    order_id = order["order_id"]
    ctx.run_step("take order", echo, {"order_id": order_id})
    if order["pay_by"] == "card":
        ctx.run_step(
            "charge card", echo, {"order_id": order_id, "amount_cents": order["amount_cents"]}
        )
    else:
        ctx.run_step("send invoice", echo, {"order_id": order_id})
    return wait_for_go_ahead(ctx, order_id)


def wait_for_go_ahead(ctx: DurableContext, order_id: str) -> dict[str, Any]:
    """The rest of an order, the same in every version."""
    go = ctx.wait_for_event(go_key(order_id), timeout=GO_AHEAD_TIMEOUT_SECONDS)
    return {"order_id": order_id, "approved_by": go["approved_by"]}


FUNCTIONS: dict[str, TaskFunction] = {}

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {"settle": settle}
