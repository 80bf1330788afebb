"""Durable functions for lesson 06's tests (`--functions tests.lesson06.functions`).

A deploy between two attempts is played by a function that makes different calls
depending on its attempt: `scripted` reads the calls of each attempt from its
input, so each test writes down the old code and the new code side by side.
"""

from __future__ import annotations

import contextlib
from typing import Any

from lessons.lesson06_non_determinism.engine.attempts import current_task
from lessons.lesson06_non_determinism.engine.durable import DurableContext, DurableFunction
from lessons.lesson06_non_determinism.engine.worker import TaskFunction
from tests.recording import wait_for_gate


def echo(input: Any) -> Any:
    return input


def scripted(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """Make the calls `input["calls"]` lists for this attempt, as [name, input] pairs:
    `input["calls"]["1"]` on attempt 1, and so on; an attempt not listed makes the
    calls of the last one that is. Then fail if this attempt is in
    `input["fail_on_attempts"]`, or return the steps' outputs."""
    script: dict[str, list[list[Any]]] = input["calls"]
    listed = [attempt for attempt in map(int, script) if attempt <= ctx.attempt]
    calls = script[str(max(listed))]
    outputs = [ctx.run_step(name, echo, step_input) for name, step_input in calls]
    if ctx.attempt in input.get("fail_on_attempts", []):
        raise ConnectionError(f"attempt {ctx.attempt} fails after its calls")
    return outputs


def equal_inputs_built_differently(ctx: DurableContext, input: Any) -> Any:
    """The same calls on every attempt, with inputs that are equal as JSON but built
    in another order, or of other Python types; attempts 1 and 2 fail after them."""
    if ctx.attempt == 1:
        order = {"id": "A-1", "lines": [{"sku": "teapot", "qty": 1}], "note": "Zoë's 🫖, naïve"}
        amounts = {"total": 0.1 + 0.2, "big": 2**70, "tags": ("gift", "fragile")}
    else:
        order = {"note": "Zoë's 🫖, naïve", "lines": [{"qty": 1, "sku": "teapot"}], "id": "A-1"}
        amounts = {"tags": ["gift", "fragile"], "big": 2**70, "total": 0.1 + 0.2}
    outputs = [
        ctx.run_step("order", echo, order),
        ctx.run_step("amounts", echo, amounts),
        ctx.run_step("nothing", echo, None),
        ctx.run_step("ünïcode name", echo, ""),
    ]
    if ctx.attempt < 3:
        raise ConnectionError(f"attempt {ctx.attempt} fails after its calls")
    return outputs


def swallow_the_mismatch(ctx: DurableContext, input: Any) -> Any:
    """Attempt 1 records step a and fails; attempt 2 calls step b there, catches the
    NonDeterminismError, and carries on as if nothing happened."""
    if ctx.attempt == 1:
        ctx.run_step("a", echo, 1)
        raise ConnectionError("attempt 1 fails after its call")
    with contextlib.suppress(Exception):
        ctx.run_step("b", echo, 1)
    return "pretended all was well"


# How many times `count_run` and `pack_in_place` have run, in this process (the
# worker runs in-process).
STEP_RUNS = {"count_run": 0, "pack_in_place": 0}


def count_run(input: Any) -> Any:
    STEP_RUNS["count_run"] += 1
    return input


def step_with_an_unkeyable_input(ctx: DurableContext, input: Any) -> Any:
    """One step whose input is JSON (keys become strings) but has no canonical form:
    its keys, an int and a str, cannot be sorted."""
    return ctx.run_step("s", count_run, {1: "a", "b": 2})


def pack_in_place(order: dict[str, Any]) -> int:
    """A step that changes the input it was given: adds a lid to its items, drops its note."""
    STEP_RUNS["pack_in_place"] += 1
    order["items"].append("lid")
    del order["note"]
    return len(order["items"])


def pack_then_fail_on_attempt_1(ctx: DurableContext, input: Any) -> int:
    """Step pack, whose function changes its input in place; attempt 1 fails after it,
    so that attempt 2 calls the step again, with the input built afresh."""
    order = {"items": ["teapot", "cup"], "note": "fragile"}
    packed: int = ctx.run_step("pack", pack_in_place, order)
    if ctx.attempt == 1:
        raise ConnectionError("attempt 1 fails after its step")
    return packed


def stall_in_step_two(input: Any) -> Any:
    if current_task().attempt == 1:
        wait_for_gate(input["gate"])
    return input["n"]


def two_steps_stalling_on_attempt_1(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """Step one's input is a dict built from a set, whose order differs from one
    process to the next (string hashing is randomised per process); step two blocks
    at `input["gate"]` on attempt 1."""
    colours = {"red", "green", "blue", "yellow", "violet"}
    one = ctx.run_step("one", echo, {colour: len(colour) for colour in colours})
    two = ctx.run_step("two", stall_in_step_two, {"gate": input["gate"], "n": 2})
    return [one, two]


FUNCTIONS: dict[str, TaskFunction] = {}

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {
    "scripted": scripted,
    "equal_inputs_built_differently": equal_inputs_built_differently,
    "swallow_the_mismatch": swallow_the_mismatch,
    "two_steps_stalling_on_attempt_1": two_steps_stalling_on_attempt_1,
    "step_with_an_unkeyable_input": step_with_an_unkeyable_input,
    "pack_then_fail_on_attempt_1": pack_then_fail_on_attempt_1,
}
