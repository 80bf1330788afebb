"""Durable functions for lesson 05's tests (`--functions tests.lesson05.functions`).

Every step records its own account of each run in the test schema's `executions`
table (named by `input["schema"]`), keyed by task id, with the attempt and the
process that ran it, so the tests count what really ran, not what the engine says.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from lessons.lesson05_durable_event_log.engine.attempts import current_task
from lessons.lesson05_durable_event_log.engine.durable import DurableContext, DurableFunction
from lessons.lesson05_durable_event_log.engine.shared import NonRetryableError
from lessons.lesson05_durable_event_log.engine.worker import TaskFunction
from tests.recording import record, wait_for_gate

STEPS = ["one", "two", "three"]


def counted_step(input: dict[str, Any]) -> dict[str, Any]:
    """Record that this step ran; on the task's first attempt, stall at the gate or
    fail when told to. Returns a fresh random value, so a step that ran twice
    would show two different values."""
    task = current_task()
    record(input["schema"], task.id, f"ran {input['step']}", attempt=task.attempt)
    if task.attempt == 1 and input["stall"]:
        wait_for_gate(input["gate"])
    if task.attempt == 1 and input["fail"]:
        raise ConnectionError(f"step {input['step']} failed on attempt 1")
    return {"step": input["step"], "nonce": uuid.uuid4().hex}


def three_steps(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    """Steps one, two and three. `input["stall_in"]` names a step that blocks at
    `input["gate"]` on attempt 1; `input["fail_in"]` one that raises on attempt 1."""
    outputs = {}
    for step in STEPS:
        step_input = {
            "schema": input["schema"],
            "gate": input.get("gate"),
            "step": step,
            "stall": input.get("stall_in") == step,
            "fail": input.get("fail_in") == step,
        }
        outputs[step] = ctx.run_step(step, counted_step, step_input)["nonce"]
    return outputs


def count_in_a_file(input: dict[str, Any]) -> str:
    """Append this step's name to the file `input["runs"]` (no database: a cut
    connection cannot lose the count), then wait at `input["gate"]`, if any, and
    for `input["pause"]` seconds."""
    with open(input["runs"], "a") as runs:
        runs.write(f"{input['step']}\n")
    if input["gate"] is not None:
        wait_for_gate(input["gate"])
    time.sleep(input["pause"])
    return str(input["step"])


def four_steps_through_a_blip(ctx: DurableContext, input: dict[str, Any]) -> list[Any]:
    """Steps one to four, each counted in `input["runs"]` and lasting `input["pause"]`
    seconds (0 if not given); step two waits at `input["gate"]`, if given."""
    return [
        ctx.run_step(
            step,
            count_in_a_file,
            {
                "runs": input["runs"],
                "step": step,
                "gate": input.get("gate") if step == "two" else None,
                "pause": input.get("pause", 0),
            },
        )
        for step in ("one", "two", "three", "four")
    ]


def return_a_tuple_and_none(ctx: DurableContext, input: Any) -> Any:
    """Steps whose outputs change shape on the way through JSON; fail attempt 1 after them."""
    pair = ctx.run_step("pair", lambda _: (1, 2), None)
    nothing = ctx.run_step("nothing", lambda _: None, None)
    if ctx.attempt == 1:
        raise ConnectionError("fail after the steps, so that attempt 2 replays them")
    return {"pair": pair, "nothing": nothing}


def return_a_set(ctx: DurableContext, input: Any) -> Any:
    return ctx.run_step("a_set", lambda _: {1, 2}, None)


def pass_a_set(ctx: DurableContext, input: Any) -> Any:
    return ctx.run_step("given_a_set", lambda value: value, {3, 4})


def return_a_nul(ctx: DurableContext, input: Any) -> Any:
    """JSON, but jsonb cannot hold the character U+0000."""
    return ctx.run_step("nul", lambda _: "a\x00b", None)


def return_a_lone_surrogate(ctx: DurableContext, input: Any) -> Any:
    """What the bytes of a file name that is not UTF-8 decode to."""
    return ctx.run_step("surrogate", lambda _: b"caf\xe9".decode(errors="surrogateescape"), None)


class OutOfStock(NonRetryableError):
    pass


def step_out_of_stock(ctx: DurableContext, input: Any) -> Any:
    def reserve(_: Any) -> Any:
        raise OutOfStock("no teapots left")

    return ctx.run_step("reserve", reserve, None)


def pack_in_place(order: dict[str, Any]) -> int:
    """A step that changes the input it was given: adds a lid to its items, drops its note."""
    record(order["schema"], current_task().id, "ran pack")
    order["items"].append("lid")
    del order["note"]
    return len(order["items"])


def pack_then_fail_on_attempt_1(ctx: DurableContext, input: dict[str, Any]) -> int:
    """Step pack, whose function changes its input in place; attempt 1 fails after it,
    so that attempt 2 calls the step again, with the input built afresh."""
    order = {"schema": input["schema"], "items": ["teapot", "cup"], "note": "fragile"}
    packed: int = ctx.run_step("pack", pack_in_place, order)
    if ctx.attempt == 1:
        raise ConnectionError("attempt 1 fails after its step")
    return packed


def plain(input: Any) -> Any:
    return input


FUNCTIONS: dict[str, TaskFunction] = {"plain": plain}

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {
    "three_steps": three_steps,
    "return_a_tuple_and_none": return_a_tuple_and_none,
    "return_a_set": return_a_set,
    "pass_a_set": pass_a_set,
    "return_a_nul": return_a_nul,
    "return_a_lone_surrogate": return_a_lone_surrogate,
    "step_out_of_stock": step_out_of_stock,
    "four_steps_through_a_blip": four_steps_through_a_blip,
    "pack_then_fail_on_attempt_1": pack_then_fail_on_attempt_1,
}
