"""Durable functions for lesson 15's continue-as-new tests
(`--functions tests.lesson15.functions_continue`).

`chain` is a long-running loop: each iteration runs a step and a child task,
both with an effect, and the loop continues as new whenever its history is
long (`ctx.history_is_long`, the worker's `--history-limit`), carrying its
state (the next iteration) over. Every run of a step or a child is a row of
the test's `executions` table (see tests/recording.py), keyed by its
iteration, so that a test counts what really ran, across the whole chain.

`paced` waits for an event at each iteration, so that a test can stop its
worker with the history ending right where the function will continue as new
(it continues once its history holds `events_per_task` events, or, `by_limit`,
once it is long).

`continuing_child` is a child that tries to continue as new, `held_then_continued`
holds in a step until a gate opens, then continues as new, unless it is
cancelled, when it compensates.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from psycopg.types.json import Jsonb

from lessons.lesson15_operating_at_scale.engine.attempts import current_task
from lessons.lesson15_operating_at_scale.engine.durable import (
    Cancelled,
    ChildTaskFailed,
    DurableContext,
    DurableFunction,
)
from lessons.lesson15_operating_at_scale.engine.worker import TaskFunction

# Far longer than any test: a wait that ends only when the test pushes its event.
LONG_SECONDS = 3600.0

# The longest a hold waits: a bound only a broken engine reaches.
HOLD_SECONDS = 30.0


def note(key: int, event: str, detail: dict[str, Any] | None = None) -> None:
    """Append what the calling task did to the test's `executions` table."""
    task = current_task()
    with task.pool.connection() as conn:
        conn.execute(
            "INSERT INTO executions (key, attempt, event, pid, detail) VALUES (%s, %s, %s, %s, %s)",
            (key, task.attempt, event, os.getpid(), Jsonb({"task": task.id, **(detail or {})})),
        )


def effect_step(input: dict[str, Any]) -> dict[str, Any]:
    note(input["iteration"], "step")
    return {"iteration": input["iteration"], "stepped_in": current_task().id}


def effect_child(input: dict[str, Any]) -> dict[str, Any]:
    note(input["iteration"], "child")
    return {"iteration": input["iteration"], "child": current_task().id}


def chain(ctx: DurableContext, state: dict[str, Any]) -> dict[str, Any]:
    """`iterations` iterations of a step and a child; continues as new when long."""
    while state["iteration"] < state["iterations"]:
        if ctx.history_is_long:
            ctx.continue_as_new(state)
        iteration = state["iteration"] + 1
        ctx.run_step("effect", effect_step, {"iteration": iteration})
        ctx.call("effect_child", {"iteration": iteration})
        state = {**state, "iteration": iteration}
    return state


def next_key(run: str, iteration: int) -> str:
    """The event `paced` waits for after iteration `iteration`'s step."""
    return f"next:{run}:{iteration}"


def paced(ctx: DurableContext, state: dict[str, Any]) -> dict[str, Any]:
    """A step, then a wait for next:<run>:<iteration>, per iteration; continues as new
    once the history holds `events_per_task` events (or, `by_limit`, once it is long)."""
    while state["iteration"] < state["iterations"]:
        if state.get("by_limit"):
            long = ctx.history_is_long
        else:
            long = ctx.history_length >= state["events_per_task"]
        if long:
            ctx.continue_as_new(state)
        iteration = state["iteration"] + 1
        ctx.run_step("effect", effect_step, {"iteration": iteration})
        ctx.wait_for_event(next_key(state["run"], iteration), timeout=LONG_SECONDS)
        state = {**state, "iteration": iteration}
    return state


def continuing_child(ctx: DurableContext, state: dict[str, Any]) -> dict[str, Any]:
    ctx.run_step("effect", effect_step, {"iteration": 1})
    ctx.continue_as_new(state)


def parent_of_continuing_child(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    try:
        ctx.call("continuing_child", {"iteration": 0}, durable=True, max_retries=0)
    except ChildTaskFailed as failure:
        return {"child": failure.child_id, "error": failure.error_type}
    return {"child": None}


def arrival_file(gate: str, task_id: int) -> Path:
    return Path(f"{gate}.{task_id}.arrived")


def hold(input: dict[str, Any]) -> dict[str, Any]:
    """A step that says it has arrived, then waits for its gate."""
    task = current_task()
    note(0, "hold began")
    arrival_file(input["gate"], task.id).touch()
    deadline = time.monotonic() + HOLD_SECONDS
    while not Path(input["gate"]).exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the gate was never opened")
        time.sleep(0.01)
    return {"held": True}


def undo(input: dict[str, Any]) -> dict[str, Any]:
    note(0, "undone")
    return {"undone": True}


def held_then_continued(ctx: DurableContext, state: dict[str, Any]) -> dict[str, Any]:
    """Hold in a step, then continue as new; cancelled, undo instead."""
    try:
        ctx.run_step("hold", hold, {"gate": state["gate"]})
        ctx.continue_as_new({**state, "continued": True})
    except Cancelled:
        ctx.run_step("undo", undo, {})
        raise


FUNCTIONS: dict[str, TaskFunction] = {"effect_child": effect_child}

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {
    "chain": chain,
    "paced": paced,
    "continuing_child": continuing_child,
    "parent_of_continuing_child": parent_of_continuing_child,
    "held_then_continued": held_then_continued,
}
