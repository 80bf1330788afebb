"""Lesson 15's task functions for the viewer's escaping test: every name the function
chooses (its step's, the key it waits on) and the error a plain task raises come from
the task's input, so that the test can put markup in each."""

from __future__ import annotations

from typing import Any

from lessons.lesson15_operating_at_scale.engine.durable import DurableContext, DurableFunction
from lessons.lesson15_operating_at_scale.engine.worker import TaskFunction


def echo(input: Any) -> Any:
    return input


def refuse(input: dict[str, Any]) -> Any:
    raise ValueError(input["why"])


def named_step_then_wait(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """A step named `input["step"]`, then a wait for the event `input["key"]`."""
    ctx.run_step(input["step"], echo, {"note": input["note"]})
    return ctx.wait_for_event(input["key"], timeout=3600)


FUNCTIONS: dict[str, TaskFunction] = {"echo": echo, "refuse": refuse}
DURABLE_FUNCTIONS: dict[str, DurableFunction] = {"named_step_then_wait": named_step_then_wait}
