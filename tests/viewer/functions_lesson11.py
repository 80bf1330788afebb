"""Lesson 11's task functions for the viewer's tests: the lesson's and its tests' own,
and two more. One records a step and then waits (suspended) for an event, so that a
page can be open on a step's output while the task goes on; one spawns many children
on a queue no worker serves, and ends with them still queued."""

from __future__ import annotations

from typing import Any

from lessons.lesson11_retries_replays_forks.engine.durable import DurableContext, DurableFunction
from lessons.lesson11_retries_replays_forks.engine.worker import TaskFunction
from tests.lesson11.functions import DURABLE_FUNCTIONS as LESSON_TESTS_DURABLE_FUNCTIONS
from tests.lesson11.functions import FUNCTIONS as LESSON_TESTS_FUNCTIONS
from tests.lesson11.functions import UNSERVED_QUEUE, echo


def step_then_wait(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """Event 1 the step `prepare` (its output: `input["data"]`), event 2 a wait for
    the event `input["key"]`; returns what the event brought."""
    ctx.run_step("prepare", echo, input["data"])
    return ctx.wait_for_event(input["key"], timeout=3600)


def spawn_children(ctx: DurableContext, input: dict[str, Any]) -> int:
    """`input["children"]` children, none of which ever runs."""
    for number in range(input["children"]):
        ctx.spawn_child("echo", {"child": number}, queue=UNSERVED_QUEUE)
    return int(input["children"])


FUNCTIONS: dict[str, TaskFunction] = LESSON_TESTS_FUNCTIONS
DURABLE_FUNCTIONS: dict[str, DurableFunction] = {
    **LESSON_TESTS_DURABLE_FUNCTIONS,
    "step_then_wait": step_then_wait,
    "spawn_children": spawn_children,
}
