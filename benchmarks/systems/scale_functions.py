"""The functions the scale benchmark's worker processes load: `--functions` names this module.

Which lesson's worker loads them is in the environment (`BENCH_LESSON`, a lesson package
name, set by `systems/scale.py` for its children): the children of an order are that
lesson's own `charge_payment` and `send_confirmation_email`, each writing its row keyed
by the order. The durable functions use only the context's own operations, so they are
the same for every lesson:

- `process_order`: lesson 09's order (charge, then email: two child tasks, one after the
  other). Lesson 14's shop waits for a person's approval in between, which a throughput
  benchmark cannot give it; so the benchmark runs this one;
- `sleep_once`: sleep once, then return. The wake-up benchmark writes a history of one
  sleep event straight into the tables, so a run of it is the replay of the sleep and
  the task's completion.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from .lesson_engine import LESSON_VARIABLE, ORDER_CHILDREN
from .noop import TASK_NAME, noop


def _lesson_demo() -> Any:
    """The demo tasks of the lesson the environment names (the parent's `--lesson`)."""
    lesson = os.environ.get(LESSON_VARIABLE)
    if not lesson:
        raise RuntimeError(f"{LESSON_VARIABLE} is not set: which lesson's children to run?")
    return importlib.import_module(f"lessons.{lesson}.demo.tasks")


_demo = _lesson_demo()


def process_order(ctx: Any, order: dict[str, Any]) -> dict[str, Any]:
    """Charge the order, then send its confirmation email: two children, one after the other.

    The inputs are lesson 09's (a superset of what lessons 12-14's children read).
    """
    payment = ctx.call(
        "charge_payment",
        {
            "order_id": order["order_id"],
            "card": order["card"],
            "amount_cents": order["amount_cents"],
        },
    )
    ctx.call(
        "send_confirmation_email",
        {"order_id": order["order_id"], "to": order["email"], "charge_id": payment["charge_id"]},
    )
    return {"order_id": order["order_id"], "charge_id": payment["charge_id"]}


def sleep_once(ctx: Any, input: dict[str, Any]) -> None:
    ctx.sleep(input["seconds"])


# The children of an order, where the lesson's shop has them (all but lesson 12; the
# parent checks before it runs orders: `LessonEngine.missing_order_children`).
FUNCTIONS: dict[str, Any] = {
    TASK_NAME: noop,
    **{name: getattr(_demo, name) for name in ORDER_CHILDREN if hasattr(_demo, name)},
}
DURABLE_FUNCTIONS: dict[str, Any] = {"process_order": process_order, "sleep_once": sleep_once}
