"""Task functions for lesson 15's exercise checks: a shop whose trees span queues.

`checkout` is a durable root that calls `note` on the queue its input names,
so that a tree's child may run on another queue than its root. `audited_checkout`
leaves a history with a column of every kind `history_tool history` shows: a
step, a child that completes, a child that fails (handled), a durable child
with a history of its own, and a sleep. `held` waits for an event that never
comes, so that an unfinished task stays in `tasks` whatever the policy.
"""

from __future__ import annotations

from typing import Any

from lessons.lesson15_operating_at_scale.engine.durable import (
    ChildTaskFailed,
    DurableContext,
    DurableFunction,
)
from lessons.lesson15_operating_at_scale.engine.worker import TaskFunction

# Long enough never to end while a check runs.
HELD_FOR_SECONDS = 3600.0


def note(input: Any) -> Any:
    """A plain task with no effect: its row is what the checks need."""
    return input


def decline(input: dict[str, Any]) -> Any:
    """A plain task that always fails: the card is declined."""
    raise RuntimeError(f"card declined for order {input['order_id']}")


def checkout(ctx: DurableContext, order: dict[str, Any]) -> dict[str, Any]:
    """Note the order on the queue the order names, as a child."""
    noted = ctx.call("note", {"order_id": order["order_id"]}, queue=order["child_queue"])
    return {"order_id": order["order_id"], "noted": noted}


def audited_checkout(ctx: DurableContext, order: dict[str, Any]) -> dict[str, Any]:
    """A step, a child that completes, one that fails, a durable child, and a sleep."""
    order_id = order["order_id"]
    ctx.run_step("take order", note, {"order_id": order_id})
    ctx.call("note", {"order_id": order_id, "what": "charge"})
    try:
        ctx.call("decline", {"order_id": order_id}, max_retries=0)
        declined = False
    except ChildTaskFailed:
        declined = True
    receipt = ctx.call("receipt", {"order_id": order_id}, durable=True)
    ctx.sleep(0.05)
    return {"order_id": order_id, "declined": declined, "receipt": receipt}


def receipt(ctx: DurableContext, order: dict[str, Any]) -> Any:
    """A durable child: one step of its own."""
    return ctx.run_step("write receipt", note, {"order_id": order["order_id"]})


def held(ctx: DurableContext, order: dict[str, Any]) -> Any:
    """Wait for an event no one pushes: a task that stays unfinished."""
    return ctx.wait_for_event(f"never:{order['order_id']}", timeout=HELD_FOR_SECONDS)


FUNCTIONS: dict[str, TaskFunction] = {"note": note, "decline": decline}

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {
    "checkout": checkout,
    "audited_checkout": audited_checkout,
    "receipt": receipt,
    "held": held,
}
