"""The functions lesson 07's worker processes load: `--functions` names this module.

The lesson's own (`process_order` and its two children among them), the no-op task,
and two durable functions that time one durable operation from inside the task, for
`benchmarks/durable_orders.py`.
"""

from __future__ import annotations

import time
from typing import Any

from lessons.lesson07_durable_tasks.demo.tasks import DURABLE_FUNCTIONS as LESSON_DURABLE_FUNCTIONS
from lessons.lesson07_durable_tasks.demo.tasks import FUNCTIONS as LESSON_FUNCTIONS
from lessons.lesson07_durable_tasks.demo.tasks import ORDER_STEPS_QUEUE
from lessons.lesson07_durable_tasks.engine.durable import DurableContext, DurableFunction
from lessons.lesson07_durable_tasks.engine.worker import TaskFunction

from .noop import TASK_NAME, noop

# What lesson 07's workers get as `--functions`: this module.
LESSON07_FUNCTIONS = __name__


def call_noop_children(ctx: DurableContext, input: dict[str, Any]) -> dict[str, float]:
    """Call `input["calls"]` no-op children one after the other; say how long it took."""
    started = time.perf_counter()
    for number in range(input["calls"]):
        ctx.call(TASK_NAME, {"number": number}, queue=ORDER_STEPS_QUEUE)
    return {"seconds": time.perf_counter() - started}


def run_noop_steps(ctx: DurableContext, input: dict[str, Any]) -> dict[str, float]:
    """Run `input["calls"]` no-op steps one after the other; say how long it took."""
    started = time.perf_counter()
    for number in range(input["calls"]):
        ctx.run_step(TASK_NAME, noop, {"number": number})
    return {"seconds": time.perf_counter() - started}


FUNCTIONS: dict[str, TaskFunction] = {**LESSON_FUNCTIONS, TASK_NAME: noop}
DURABLE_FUNCTIONS: dict[str, DurableFunction] = {
    **LESSON_DURABLE_FUNCTIONS,
    "call_noop_children": call_noop_children,
    "run_noop_steps": run_noop_steps,
}
