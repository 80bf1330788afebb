"""Task functions for lesson 09's tests (`--functions tests.lesson09.functions`),
next to the lesson's own: process_order and send_reminders come from the lesson."""

from __future__ import annotations

from typing import Any

from lessons.lesson09_durable_sleep.demo.tasks import DURABLE_FUNCTIONS as LESSON_DURABLE_FUNCTIONS
from lessons.lesson09_durable_sleep.demo.tasks import FUNCTIONS as LESSON_FUNCTIONS
from lessons.lesson09_durable_sleep.engine.durable import (
    DurableContext,
    DurableFunction,
    TaskSuspended,
)
from lessons.lesson09_durable_sleep.engine.worker import TaskFunction

# The children of the functions below run on this queue.
CHILDREN_QUEUE = "children"


def echo(input: Any) -> Any:
    return input


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


def spawn_sleep_then_wait(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """Spawn a child, sleep while it runs, then wait for it: the child finishes
    first and wakes its parent early, and the parent must go back to sleep."""
    child = ctx.spawn_child("echo", {"n": input["n"]}, queue=CHILDREN_QUEUE)
    ctx.sleep(input["seconds"])
    ctx.run_step("after", echo, {"n": input["n"]})
    return ctx.wait_for_child(child)


def swallow_the_suspension(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """Catch TaskSuspended and return as if nothing happened: the engine must not
    complete the task with that result."""
    try:
        ctx.sleep(input["seconds"])
    except TaskSuspended:
        return "woke up early"
    return "slept"


FUNCTIONS: dict[str, TaskFunction] = {**LESSON_FUNCTIONS, "echo": echo}

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {
    **LESSON_DURABLE_FUNCTIONS,
    "nap": nap,
    "call_a_child": call_a_child,
    "spawn_sleep_then_wait": spawn_sleep_then_wait,
    "swallow_the_suspension": swallow_the_suspension,
}
