"""Task functions for lesson 11's tests, next to the lesson's own (process_order
and its children come from the lesson). Children run on their parent's queue."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from lessons.lesson11_retries_replays_forks.demo.tasks import (
    DURABLE_FUNCTIONS as LESSON_DURABLE_FUNCTIONS,
)
from lessons.lesson11_retries_replays_forks.demo.tasks import FUNCTIONS as LESSON_FUNCTIONS
from lessons.lesson11_retries_replays_forks.engine.durable import (
    ChildTimeout,
    DurableContext,
    DurableFunction,
    EventTimeout,
)
from lessons.lesson11_retries_replays_forks.engine.worker import TaskFunction

# A queue no worker serves: a child sent there never finishes.
UNSERVED_QUEUE = "unserved"

# How many times each label's step has run, in this process (the tests run
# their workers in-process, except where they say otherwise).
STEP_RUNS: Counter[str] = Counter()

# Which version of versioned_labels the workers of this process run.
DEPLOYED = {"version": 1}


def echo(input: Any) -> Any:
    return input


def count_run(input: dict[str, Any]) -> dict[str, Any]:
    STEP_RUNS[input["label"]] += 1
    return {"run": STEP_RUNS[input["label"]]}


def step_then_three_children(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """Event 1 is a step; events 2, 3 and 4 are echo children, called one by one."""
    step = ctx.run_step("count_run", count_run, {"label": input["label"]})
    children = [ctx.call("echo", {"n": n}) for n in (1, 2, 3)]
    return {"step": step, "children": children}


def step_with_an_unkeyable_input(ctx: DurableContext, input: Any) -> Any:
    """One step whose input is JSON (keys become strings) but has no canonical form:
    its keys, ints and strs, cannot be sorted."""
    return ctx.run_step("s", count_run, {1: "a", "b": 2, "label": "unkeyable"})


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


def sleep_wait_then_call(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """Event 1 a sleep, event 2 a wait for the event `input["key"]`, event 3 a child."""
    ctx.sleep(input["sleep"])
    try:
        payload = ctx.wait_for_event(input["key"], timeout=input["timeout"])
    except EventTimeout:
        payload = "timed out"
    return {"payload": payload, "child": ctx.call("echo", {"after": "the wait"})}


def versioned_labels(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """Three steps. Version 2 renamed the second one: another call at event 2."""
    ctx.run_step("count_run", count_run, {"label": input["label"]})
    label = "print_label" if DEPLOYED["version"] == 1 else "print_shipping_label"
    ctx.run_step(label, echo, {"order": input["label"]})
    return ctx.run_step("notify", echo, {"version": DEPLOYED["version"]})


def spawn_and_return(ctx: DurableContext, input: Any) -> Any:
    """Spawn a child nobody runs (event 2) between two steps, and complete
    without waiting for it."""
    ctx.run_step("count_run", count_run, {"label": "spawn_and_return"})
    child = ctx.spawn_child("echo", {"never": "run"}, queue=UNSERVED_QUEUE)
    ctx.run_step("echo", echo, {"spawned": child.id})
    return child.id


def call_children_in_sequence(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """Call echo `input["children"]` times, one after the other: each run replays
    every child before the new one."""
    return [ctx.call("echo", {"n": n}) for n in range(input["children"])]


def call_with_a_timeout(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """Event 1 a child on `input["queue"]`, event 2 its wait with a timeout of
    `input["timeout"]` s, event 3 a step that records what the wait gave."""
    try:
        output = ctx.call("echo", {"n": input["n"]}, queue=input["queue"], timeout=input["timeout"])
    except ChildTimeout:
        output = "timed out"
    return ctx.run_step("echo", echo, {"output": output})


def refuse(input: Any) -> Any:
    """A child task that fails, every attempt."""
    raise ValueError(f"refused {input}")


def fail_on_one_of_two_children(ctx: DurableContext, input: Any) -> Any:
    """Spawn a child nobody runs (event 1) and one that fails (event 2), then wait
    for the failing one: the task fails on ChildTaskFailed, the first still queued."""
    queued = ctx.spawn_child("echo", {"never": "run"}, queue=UNSERVED_QUEUE)
    failing = ctx.spawn_child("refuse", {"child": 2}, max_retries=0)
    ctx.wait_for_child(failing)
    return ctx.wait_for_child(queued)


def always_fail(ctx: DurableContext, input: Any) -> Any:
    raise ConnectionError(f"attempt {ctx.attempt} fails, like every attempt")


def record_nothing(ctx: DurableContext, input: Any) -> Any:
    """A durable function that returns at once: its history stays empty."""
    return input


def wait_for_ever(ctx: DurableContext, input: Any) -> Any:
    """Wait for an event nobody pushes: the task stays suspended."""
    return ctx.wait_for_event("nobody:pushes:this", timeout=3600)


def wait_at_gate(input: dict[str, Any]) -> dict[str, Any]:
    """A step that says it has reached the gate (it creates the file `input["arrived"]`),
    then returns once the file `input["gate"]` exists (the test creates it)."""
    Path(input["arrived"]).touch()
    while not Path(input["gate"]).exists():
        time.sleep(0.02)
    return {"passed": input["gate"]}


def arrival_file(gate: str, order_id: str) -> str:
    """The file an order's gate step creates once it runs: the order is at the gate."""
    return f"{gate}.{order_id}.arrived"


def order_at_gate(ctx: DurableContext, order: dict[str, Any]) -> Any:
    """An order held, running, at the gate (a step), then charged and confirmed by
    the lesson's two children: what a worker is busy with when the database goes."""
    arrived = arrival_file(order["gate"], order["order_id"])
    ctx.run_step("wait_at_gate", wait_at_gate, {"gate": order["gate"], "arrived": arrived})
    payment = ctx.call(
        "charge_payment",
        {"order_id": order["order_id"], "card": order["card"], "amount_cents": 4200},
    )
    email = ctx.call(
        "send_confirmation_email",
        {"order_id": order["order_id"], "to": order["email"], "charge_id": payment["charge_id"]},
    )
    return {"charge_id": payment["charge_id"], "email_id": email["email_id"]}


def new_kind(ctx: DurableContext, input: Any) -> Any:
    """A durable function only the workers deployed after it was written have. It
    waits for a child, so that the task is suspended, and resumed, at least once."""
    return {"new": ctx.call("echo", input)}


FUNCTIONS: dict[str, TaskFunction] = {**LESSON_FUNCTIONS, "echo": echo, "refuse": refuse}

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {
    **LESSON_DURABLE_FUNCTIONS,
    "step_then_three_children": step_then_three_children,
    "step_with_an_unkeyable_input": step_with_an_unkeyable_input,
    "pack_then_fail_on_attempt_1": pack_then_fail_on_attempt_1,
    "sleep_wait_then_call": sleep_wait_then_call,
    "versioned_labels": versioned_labels,
    "spawn_and_return": spawn_and_return,
    "fail_on_one_of_two_children": fail_on_one_of_two_children,
    "call_children_in_sequence": call_children_in_sequence,
    "call_with_a_timeout": call_with_a_timeout,
    "always_fail": always_fail,
    "record_nothing": record_nothing,
    "wait_for_ever": wait_for_ever,
    "order_at_gate": order_at_gate,
    "new_kind": new_kind,
}
