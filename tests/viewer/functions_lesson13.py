"""Lesson 13's task functions for the viewer's tests: a durable task that has run a
step and then waits for an event nobody pushes; cancelled, it compensates."""

from __future__ import annotations

from typing import Any

from lessons.lesson13_cancellation_and_schedules.engine.durable import (
    Cancelled,
    DurableContext,
    DurableFunction,
)
from lessons.lesson13_cancellation_and_schedules.engine.worker import TaskFunction


def reserve(input: dict[str, Any]) -> dict[str, Any]:
    return {"reserved": input["item"]}


def release(input: dict[str, Any]) -> dict[str, Any]:
    return {"released": input["item"]}


def reserve_then_wait(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    """Reserve (a step), then wait an hour for a payment; cancelled, release (a step)."""
    ctx.run_step("reserve", reserve, {"item": input["item"]})
    try:
        ctx.wait_for_event(f"paid:{input['item']}", timeout=3600)
    except Cancelled:
        ctx.run_step("release", release, {"item": input["item"]})
        raise
    return {"sold": input["item"]}


FUNCTIONS: dict[str, TaskFunction] = {}
DURABLE_FUNCTIONS: dict[str, DurableFunction] = {"reserve_then_wait": reserve_then_wait}
