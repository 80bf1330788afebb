"""The new code of lesson 14's determinism-check tests
(`--functions tests.lesson15_inherited14.functions_check_v2`): what the histories of
`functions_check.py` are checked against.

`DURABLE_FUNCTIONS` is the deploy the command-line check is given: `flow` goes
on, after what its history holds, with a step that appends to a file and a
child task; `quick` is unchanged; `legacy` is gone. The other versions of
`flow` below are handed to the check directly (`check_task`), one way each in
which new code would write something if the check ran it: every kind of
operation at the end of the history, and new calls in the middle of it.
"""

from __future__ import annotations

from typing import Any

from lessons.lesson15_operating_at_scale.engine.durable import DurableContext, DurableFunction
from lessons.lesson15_operating_at_scale.engine.worker import TaskFunction
from tests.lesson15_inherited14.functions_check import (
    FUNCTIONS as FIRST_FUNCTIONS,
)
from tests.lesson15_inherited14.functions_check import (
    LONG_SECONDS,
    append_line,
    counted,
    go_key,
    quick,
)


def replay_the_recorded_run(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """What every version of `flow` here does first: exactly what the history holds."""
    ctx.run_step("first", counted, {"name": "first"})
    return ctx.wait_for_event(go_key(input["key"]), timeout=LONG_SECONDS)


def flow(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    """The recorded run, then a step with a side effect, then a child."""
    payload = replay_the_recorded_run(ctx, input)
    ctx.run_step("append_line", append_line, {"file": input["file"]})
    ctx.call("effect_child", {"key": input["key"]})
    return {"payload": payload}


def flow_child_at_end(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    payload = replay_the_recorded_run(ctx, input)
    ctx.call("effect_child", {"key": input["key"]})
    return {"payload": payload}


def flow_patch_at_end(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    payload = replay_the_recorded_run(ctx, input)
    if ctx.patched("late-patch"):
        ctx.run_step("append_line", append_line, {"file": input["file"]})
    return {"payload": payload}


def flow_sleep_at_end(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    payload = replay_the_recorded_run(ctx, input)
    ctx.sleep(LONG_SECONDS)
    return {"payload": payload}


def flow_wait_at_end(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    payload = replay_the_recorded_run(ctx, input)
    ctx.wait_for_event(f"more:{input['key']}", timeout=LONG_SECONDS)
    return {"payload": payload}


def flow_step_in_the_middle(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    """A new step between the recorded step and the recorded wait."""
    ctx.run_step("first", counted, {"name": "first"})
    ctx.run_step("append_line", append_line, {"file": input["file"]})
    payload = ctx.wait_for_event(go_key(input["key"]), timeout=LONG_SECONDS)
    return {"payload": payload}


def flow_child_in_the_middle(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    """A new child between the recorded step and the recorded wait."""
    ctx.run_step("first", counted, {"name": "first"})
    ctx.call("effect_child", {"key": input["key"]})
    payload = ctx.wait_for_event(go_key(input["key"]), timeout=LONG_SECONDS)
    return {"payload": payload}


def flow_first_step_changed(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    """The recorded step, with another input, then a step with a side effect."""
    ctx.run_step("first", counted, {"name": "first", "extra": True})
    ctx.run_step("append_line", append_line, {"file": input["file"]})
    return {}


FUNCTIONS: dict[str, TaskFunction] = FIRST_FUNCTIONS

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {
    "flow": flow,
    "quick": quick,
}
