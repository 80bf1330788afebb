"""The functions the scale benchmark's worker processes load: `--functions` names this module.

Which lesson's worker loads them is in the environment (`BENCH_LESSON`, a lesson package
name, set by `systems/scale.py` and `systems/lesson_orders.py` for their children): the
children of an order are that lesson's own `charge_payment` and `send_confirmation_email`,
each writing its row keyed by the order (lesson 12's shop has no email: a stand-in writes
its row instead). The durable functions use only the context's own operations, so they
are the same for every lesson:

- `process_order`: lesson 09's order (charge, then email: two child tasks, one after the
  other). The shops of lessons 10, 11 and 14 wait for a person's approval in between,
  which a throughput benchmark cannot give them, and lesson 13's has a checkout instead;
  so the benchmarks run this one on every lesson from 09 on;
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


def _lesson() -> str:
    """The lesson package the environment names (the parent's `--lesson`)."""
    lesson = os.environ.get(LESSON_VARIABLE)
    if not lesson:
        raise RuntimeError(f"{LESSON_VARIABLE} is not set: which lesson's children to run?")
    return lesson


_demo = importlib.import_module(f"lessons.{_lesson()}.demo.tasks")
_attempts = importlib.import_module(f"lessons.{_lesson()}.engine.attempts")


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


def send_stand_in_email(input: dict[str, Any]) -> dict[str, Any]:
    """For a shop with no email (lesson 12's): lesson 13's, a row keyed by the order, once.

    Its table is the benchmark's (`lesson_engine.STAND_IN_EMAILS_SQL`), added to the
    lesson's schema, so the order does the same work as in the other lessons.
    """
    task = _attempts.current_task()
    with task.pool.connection() as conn:
        conn.execute(
            "INSERT INTO emails (order_id, task_id) VALUES (%s, %s)"
            " ON CONFLICT (order_id) DO NOTHING",
            (input["order_id"], task.id),
        )
    return {"order_id": input["order_id"], "sent": True}


def sleep_once(ctx: Any, input: dict[str, Any]) -> None:
    ctx.sleep(input["seconds"])


# The children of an order, where the lesson's shop has them (all but lesson 12's email;
# the parent checks before it runs orders: `LessonEngine.missing_order_children`).
FUNCTIONS: dict[str, Any] = {
    TASK_NAME: noop,
    "send_confirmation_email": send_stand_in_email,
    **{name: getattr(_demo, name) for name in ORDER_CHILDREN if hasattr(_demo, name)},
}
DURABLE_FUNCTIONS: dict[str, Any] = {"process_order": process_order, "sleep_once": sleep_once}
