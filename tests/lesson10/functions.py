"""Task functions for lesson 10's tests (`--functions tests.lesson10.functions`),
next to the lesson's own: process_order comes from the lesson."""

from __future__ import annotations

from typing import Any

from lessons.lesson10_durable_events.demo.tasks import DURABLE_FUNCTIONS as LESSON_DURABLE_FUNCTIONS
from lessons.lesson10_durable_events.demo.tasks import FUNCTIONS as LESSON_FUNCTIONS
from lessons.lesson10_durable_events.engine.durable import (
    DurableContext,
    DurableFunction,
    EventTimeout,
)
from lessons.lesson10_durable_events.engine.worker import TaskFunction


def wait_for_key(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """Wait for the event `input["key"]`: its payload, or that it timed out."""
    try:
        return {"payload": ctx.wait_for_event(input["key"], timeout=input["timeout"])}
    except EventTimeout:
        return {"timed_out": True}


def wait_then_fail_on_attempt_1(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """Like wait_for_key, but attempt 1 fails once the wait has ended, so that
    attempt 2 replays it: it must get the same outcome."""
    outcome = wait_for_key(ctx, input)
    if ctx.attempt == 1:
        raise ConnectionError(f"attempt 1 fails after its wait ended: {outcome}")
    return outcome


FUNCTIONS: dict[str, TaskFunction] = dict(LESSON_FUNCTIONS)

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {
    **LESSON_DURABLE_FUNCTIONS,
    "wait_for_key": wait_for_key,
    "wait_then_fail_on_attempt_1": wait_then_fail_on_attempt_1,
}
