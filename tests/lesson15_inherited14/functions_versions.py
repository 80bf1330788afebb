"""Task functions for the tests of pinned code versions (`--functions
tests.lesson15_inherited14.functions_versions`).

Every run of a function writes its own account into the test schema's
`executions` table (tests/recording.py's layout), through the worker's pool: the
task's id as its `key`, the attempt, the process (`pid`), and, read from the
database in the same statement, the worker the task runs on now and that
worker's registered code version. A durable function runs its body once per
claim (it replays its history from the top), so its "ran" rows are its claims,
as its function saw them.

The tests start these with different declared versions (`--code-version v1`,
`v2`): the same code under two names stands for an old and a new deploy.
"""

from __future__ import annotations

import os
from typing import Any

from lessons.lesson15_operating_at_scale.engine.attempts import current_task
from lessons.lesson15_operating_at_scale.engine.durable import DurableContext, DurableFunction
from lessons.lesson15_operating_at_scale.engine.worker import TaskFunction
from tests.recording import wait_for_gate

# How long an event waiter waits before its wait times out: longer than any test.
EVENT_TIMEOUT_SECONDS = 600.0

RECORD_RUN = """
INSERT INTO executions (key, attempt, event, pid, detail)
SELECT tasks.id, tasks.attempt, %s, %s, jsonb_build_object(
    'worker_id', workers.id,
    'worker_version', workers.code_version,
    'task_version', tasks.code_version,
    'durable', tasks.durable
)
FROM tasks JOIN workers ON workers.id = tasks.worker_id
WHERE tasks.id = %s
"""


def record_run(event: str = "ran") -> None:
    """One row in `executions` for the run going on now, committed before this returns."""
    task = current_task()
    with task.pool.connection() as conn:
        conn.execute(RECORD_RUN, (event, os.getpid(), task.id))


def sleeper(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    """Sleep `input["seconds"]`, then a step."""
    record_run()
    ctx.sleep(input["seconds"])
    slept = ctx.run_step("after_sleep", lambda step_input: {"slept": step_input}, input["seconds"])
    return {"after_sleep": slept}


def event_waiter(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    """Wait for the external event `input["key"]`, and return its payload."""
    record_run()
    payload = ctx.wait_for_event(input["key"], timeout=EVENT_TIMEOUT_SECONDS)
    return {"payload": payload}


def parent(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    """Call the plain task `child` on `input["child_queue"]` (held at the gate
    `input["child_gate"]`, if there is one), and return its output."""
    record_run()
    return {"child_output": call_child(ctx, input)}


def waiting_parent(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    """Wait for the event `input["key"]`, then call `child` as `parent` does."""
    record_run()
    ctx.wait_for_event(input["key"], timeout=EVENT_TIMEOUT_SECONDS)
    return {"child_output": call_child(ctx, input)}


def call_child(ctx: DurableContext, input: dict[str, Any]) -> Any:
    child_input = {"parent": current_task().id, "gate": input.get("child_gate")}
    return ctx.call("child", child_input, queue=input["child_queue"])


def gated(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    """Hold the slot until the file `input["gate"]` exists (every run, outside any
    step: a worker killed here has recorded nothing), then a step."""
    record_run()
    wait_for_gate(input["gate"], timeout=60)
    passed = ctx.run_step("after_gate", lambda step_input: {"gate": step_input}, input["gate"])
    return {"after_gate": passed}


def steps(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    """Two steps: a history of two events, to fork and replay."""
    record_run()
    first = ctx.run_step("first", lambda step_input: {"first": step_input}, input)
    second = ctx.run_step("second", lambda step_input: {"second": step_input}, first)
    return {"steps": [first, second]}


def child(input: dict[str, Any]) -> dict[str, Any]:
    """A plain child: record the run, and hold the slot until the file
    `input["gate"]` exists, when it names one."""
    record_run()
    if input.get("gate"):
        wait_for_gate(input["gate"], timeout=60)
    return {"parent": input["parent"]}


def probe(input: Any) -> dict[str, Any]:
    """A plain task a test puts behind others, to see that a worker's claim went past them."""
    record_run()
    return {"probe": input}


FUNCTIONS: dict[str, TaskFunction] = {"child": child, "probe": probe}

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {
    "sleeper": sleeper,
    "event_waiter": event_waiter,
    "parent": parent,
    "waiting_parent": waiting_parent,
    "gated": gated,
    "steps": steps,
}
