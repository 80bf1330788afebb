"""Task functions for lesson 09's tests (`--functions tests.lesson09.functions`),
next to the lesson's own: process_order and send_reminders come from the lesson."""

from __future__ import annotations

import os
from typing import Any

from lessons.lesson09_durable_sleep.demo.tasks import DURABLE_FUNCTIONS as LESSON_DURABLE_FUNCTIONS
from lessons.lesson09_durable_sleep.demo.tasks import FUNCTIONS as LESSON_FUNCTIONS
from lessons.lesson09_durable_sleep.engine.crash_points import FREEZE_AT
from lessons.lesson09_durable_sleep.engine.durable import (
    ChildTimeout,
    DurableContext,
    DurableFunction,
    TaskSuspended,
)
from lessons.lesson09_durable_sleep.engine.worker import TaskFunction
from tests.recording import wait_for_gate

# The children of the functions below run on this queue.
CHILDREN_QUEUE = "children"

# A queue no worker serves: a child sent there never finishes.
UNSERVED_QUEUE = "unserved"

# In a process whose environment holds it, spawn_two_children_then_wait makes
# its value the freeze point (COURSE_FREEZE_AT) once its first child is spawned:
# a point that the first child's spawn passes too can then freeze the second's.
ARM_FREEZE_AT = "TEST_ARM_FREEZE_AT"


def echo(input: Any) -> Any:
    return input


def hold_slot(input: dict[str, Any]) -> None:
    """Occupy a slot of its worker until the test opens `input["gate"]`."""
    wait_for_gate(input["gate"])


def nap(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """A step, a sleep of `input["seconds"]`, and another step: the history shows
    when the sleep began (the sleep event), when it was to end (its wake_at), and
    when the function went on (the second step's event)."""
    ctx.run_step("before", echo, {"n": input["n"]})
    ctx.sleep(input["seconds"])
    ctx.run_step("after", echo, {"n": input["n"]})
    return input["n"]


def call_a_child(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """Call echo, on this task's own queue, and return what it returns."""
    return ctx.call("echo", {"n": input["n"]})


def call_children_in_sequence(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """Call echo `input["children"]` times, one after the other, on this task's queue:
    each call suspends the task once, and each run replays every child before it."""
    return [ctx.call("echo", {"n": n}) for n in range(input["children"])]


def call_with_a_timeout(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """Call echo on `input["queue"]` with a timeout of `input["timeout"]` s, then a
    step that records what the call gave: the child's output, or "timed out"."""
    try:
        output = ctx.call("echo", {"n": input["n"]}, queue=input["queue"], timeout=input["timeout"])
    except ChildTimeout:
        output = "timed out"
    return ctx.run_step("after", echo, {"output": output})


def wait_for_an_unserved_child(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """Call echo on a queue nobody serves, with a timeout it does not catch."""
    return ctx.call("echo", {"n": input["n"]}, queue=UNSERVED_QUEUE, timeout=input["timeout"])


def spawn_sleep_then_wait(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """Spawn a child, sleep while it runs, then wait for it: the child finishes
    first and wakes its parent early, and the parent must go back to sleep."""
    child = ctx.spawn_child("echo", {"n": input["n"]}, queue=CHILDREN_QUEUE)
    ctx.sleep(input["seconds"])
    ctx.run_step("after", echo, {"n": input["n"]})
    return ctx.wait_for_child(child)


def call_on_the_children_queue(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """Call echo on the children's queue, and return what it returns."""
    return ctx.call("echo", {"n": input["n"]}, queue=CHILDREN_QUEUE)


def spawn_two_children_then_wait(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """Spawn two echo children on the children's queue, then wait for both. Between
    the two spawns, arm the freeze point this process was given (ARM_FREEZE_AT)."""
    first = ctx.spawn_child("echo", {"n": input["n"], "child": 1}, queue=CHILDREN_QUEUE)
    point = os.environ.pop(ARM_FREEZE_AT, None)
    if point is not None:
        os.environ[FREEZE_AT] = point
    second = ctx.spawn_child("echo", {"n": input["n"], "child": 2}, queue=CHILDREN_QUEUE)
    return [ctx.wait_for_child(first), ctx.wait_for_child(second)]


def process_order_spawning_then_waiting(
    ctx: DurableContext, order: dict[str, Any]
) -> dict[str, Any]:
    """The lesson's process_order with each child spawned, then waited for, instead of
    called: the two transactions of `spawn_child` and `wait_for_child`, and their crash
    points, which `call` makes one."""
    payment = ctx.wait_for_child(
        ctx.spawn_child(
            "charge_payment",
            {
                "order_id": order["order_id"],
                "card": order["card"],
                "amount_cents": order["amount_cents"],
            },
        )
    )
    email = ctx.wait_for_child(
        ctx.spawn_child(
            "send_confirmation_email",
            {
                "order_id": order["order_id"],
                "to": order["email"],
                "charge_id": payment["charge_id"],
            },
        )
    )
    return {
        "order_id": order["order_id"],
        "status": "confirmed",
        "charge_id": payment["charge_id"],
        "email_id": email["email_id"],
    }


def spawn_then_wait_on_the_children_queue(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """call_on_the_children_queue in two operations: spawn_child, then wait_for_child."""
    return ctx.wait_for_child(ctx.spawn_child("echo", {"n": input["n"]}, queue=CHILDREN_QUEUE))


def swallow_the_suspension(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """Catch TaskSuspended and return as if nothing happened: the engine must not
    complete the task with that result."""
    try:
        ctx.sleep(input["seconds"])
    except TaskSuspended:
        return "woke up early"
    return "slept"


FUNCTIONS: dict[str, TaskFunction] = {**LESSON_FUNCTIONS, "echo": echo, "hold_slot": hold_slot}

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {
    **LESSON_DURABLE_FUNCTIONS,
    "nap": nap,
    "call_a_child": call_a_child,
    "call_children_in_sequence": call_children_in_sequence,
    "call_with_a_timeout": call_with_a_timeout,
    "wait_for_an_unserved_child": wait_for_an_unserved_child,
    "spawn_sleep_then_wait": spawn_sleep_then_wait,
    "swallow_the_suspension": swallow_the_suspension,
    "call_on_the_children_queue": call_on_the_children_queue,
    "spawn_two_children_then_wait": spawn_two_children_then_wait,
    "process_order_spawning_then_waiting": process_order_spawning_then_waiting,
    "spawn_then_wait_on_the_children_queue": spawn_then_wait_on_the_children_queue,
}
