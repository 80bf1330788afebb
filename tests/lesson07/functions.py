"""Task functions for lesson 07's tests (`--functions tests.lesson07.functions`),
next to the lesson's own: process_order and its children come from the lesson."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from lessons.lesson07_durable_tasks.demo.tasks import DURABLE_FUNCTIONS as LESSON_DURABLE_FUNCTIONS
from lessons.lesson07_durable_tasks.demo.tasks import FUNCTIONS as LESSON_FUNCTIONS
from lessons.lesson07_durable_tasks.demo.tasks import process_order
from lessons.lesson07_durable_tasks.engine.attempts import current_task
from lessons.lesson07_durable_tasks.engine.durable import DurableContext, DurableFunction
from lessons.lesson07_durable_tasks.engine.shared import NonRetryableError
from lessons.lesson07_durable_tasks.engine.worker import TaskFunction
from tests.recording import wait_for_gate

# Children of the functions below run on this queue. `scripted_children` sends
# its children to a queue no worker serves: only its history matters.
CHILDREN_QUEUE = "children"
UNSERVED_QUEUE = "unserved"

# How many times each counted step has run, in this process (the tests run their
# workers in-process).
STEP_RUNS: Counter[str] = Counter()


def echo(input: Any) -> Any:
    return input


class Declined(NonRetryableError):
    pass


def decline(input: Any) -> Any:
    raise Declined("no")


def succeed_on_attempt_3(input: Any) -> Any:
    attempt = current_task().attempt
    if attempt < 3:
        raise ConnectionError(f"not yet (attempt {attempt})")
    return {"attempt": attempt}


def scripted_children(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """Spawn the children `input["calls"]` lists for this attempt, as [task name, input]
    pairs (`"1"` for attempt 1, `"2"` for later ones), without waiting for them;
    attempt 1 then fails, so that attempt 2 replays its history."""
    calls = input["calls"]["1" if ctx.attempt == 1 else "2"]
    children = [
        ctx.spawn_child(name, child_input, queue=UNSERVED_QUEUE) for name, child_input in calls
    ]
    if ctx.attempt == 1:
        raise ConnectionError("attempt 1 fails after spawning its children")
    return [child.id for child in children]


def call_echo(ctx: DurableContext, input: Any) -> Any:
    """Call one echo child, and return its output."""
    return ctx.call("echo", {"n": 1}, queue=CHILDREN_QUEUE)


def call_then_fail_on_attempt_1(ctx: DurableContext, input: Any) -> Any:
    """Call echo, and fail attempt 1 after the child has completed."""
    output = ctx.call("echo", {"n": 1}, queue=CHILDREN_QUEUE)
    if ctx.attempt == 1:
        raise ConnectionError("attempt 1 fails after its child completed")
    return output


def call_a_declining_child(ctx: DurableContext, input: Any) -> Any:
    """Call a child that fails for good, and do not catch ChildTaskFailed."""
    return ctx.call("decline", {"card": "4000-0000-0000-0002"}, queue=CHILDREN_QUEUE)


def call_a_flaky_child(ctx: DurableContext, input: Any) -> Any:
    return ctx.call("succeed_on_attempt_3", {}, queue=CHILDREN_QUEUE, max_retries=2)


def spawn_a_child_with_a_nul(ctx: DurableContext, input: Any) -> Any:
    """A child input jsonb cannot hold: the spawn is refused, and nothing is created."""
    return ctx.spawn_child("echo", {"note": "a\x00b"}, queue=CHILDREN_QUEUE).id


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


def hold_at_gate(input: dict[str, str]) -> dict[str, Any]:
    """Touch the file `input["started"]`, then wait for `input["gate"]`: a step that
    runs, with no database, for as long as the test wants."""
    Path(input["started"]).touch()
    wait_for_gate(input["gate"])
    return {}


def process_order_at_gate(ctx: DurableContext, order: dict[str, Any]) -> dict[str, Any]:
    """The lesson's process_order, after a first step held at `order["gate"]`."""
    ctx.run_step("hold_at_gate", hold_at_gate, {"gate": order["gate"], "started": order["started"]})
    return process_order(ctx, order)


FUNCTIONS: dict[str, TaskFunction] = {
    **LESSON_FUNCTIONS,
    "echo": echo,
    "decline": decline,
    "succeed_on_attempt_3": succeed_on_attempt_3,
}

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {
    "call_echo": call_echo,
    **LESSON_DURABLE_FUNCTIONS,
    "scripted_children": scripted_children,
    "call_then_fail_on_attempt_1": call_then_fail_on_attempt_1,
    "call_a_declining_child": call_a_declining_child,
    "call_a_flaky_child": call_a_flaky_child,
    "spawn_a_child_with_a_nul": spawn_a_child_with_a_nul,
    "process_order_at_gate": process_order_at_gate,
    "pack_then_fail_on_attempt_1": pack_then_fail_on_attempt_1,
}
