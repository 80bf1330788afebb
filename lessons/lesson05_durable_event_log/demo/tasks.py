"""The task functions of this lesson's demonstration.

A task function takes the task's JSON input and returns a JSON output. A worker
finds it by the name it is registered under; `FUNCTIONS` lists them all, and is
what `worker_process --functions` loads. A durable function also takes a context
first; `DURABLE_FUNCTIONS` lists those.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

from ..engine.attempts import current_task
from ..engine.durable import DurableContext, DurableFunction
from ..engine.worker import TaskFunction

# How many times each step function below has run in this process. The
# demonstration runs its workers in its own process, so it can read this to
# show which steps ran again on a retry, and which did not.
STEP_RUNS: Counter[str] = Counter()


def reserve_stock(input: dict[str, Any]) -> dict[str, Any]:
    STEP_RUNS["reserve_stock"] += 1
    return {"reservation": f"R-{input['order_id']}"}


def print_label(input: dict[str, Any]) -> dict[str, Any]:
    """Print a shipping label with a fresh, random tracking number.

    Random on purpose: if a retry ran this step again, the order would get a
    second label with a different number, and the parcel two identities.
    """
    STEP_RUNS["print_label"] += 1
    return {"tracking_number": uuid.uuid4().hex[:10].upper()}


# How long the courier's service keeps a caller waiting when it is down.
COURIER_TIMEOUT = 0.5


def book_courier(input: dict[str, Any]) -> dict[str, Any]:
    """Book a pickup. During the task's first attempt the courier's service hangs."""
    STEP_RUNS["book_courier"] += 1
    attempt = current_task().attempt
    if attempt == 1:
        time.sleep(COURIER_TIMEOUT)
        raise TimeoutError(
            f"the courier's service did not answer within {COURIER_TIMEOUT} s (attempt {attempt})"
        )
    return {"pickup": "tomorrow 09:00-12:00"}


def notify_customer(input: dict[str, Any]) -> dict[str, Any]:
    STEP_RUNS["notify_customer"] += 1
    return {"notified": input["email"]}


def ship_order(ctx: DurableContext, order: dict[str, Any]) -> dict[str, Any]:
    """Ship an order in four steps. Each step runs once, however many attempts it takes."""
    reservation = ctx.run_step(
        "reserve_stock",
        reserve_stock,
        {"order_id": order["order_id"], "items": order["items"]},
    )
    label = ctx.run_step(
        "print_label",
        print_label,
        {"order_id": order["order_id"], "address": order["address"]},
    )
    pickup = ctx.run_step(
        "book_courier", book_courier, {"tracking_number": label["tracking_number"]}
    )
    ctx.run_step(
        "notify_customer",
        notify_customer,
        {"email": order["email"], "tracking_number": label["tracking_number"]},
    )
    return {
        "reservation": reservation["reservation"],
        "tracking_number": label["tracking_number"],
        "pickup": pickup["pickup"],
    }


# The demonstration runs durable functions only; `worker_process --functions`
# loads this mapping all the same.
FUNCTIONS: dict[str, TaskFunction] = {}

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {"ship_order": ship_order}
