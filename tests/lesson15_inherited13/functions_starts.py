"""Task functions for lesson 13's worker processes in the tests of idempotency keys,
delayed starts and schedules (`--functions tests.lesson15_inherited13.functions_starts`).

Every function writes its own account of each run into the test schema's
`executions` table (tests/recording.py's layout), through the worker's pool: the
tests count what ran from those rows, never from the engine's word alone. A row's
`key` is the task's id, its `attempt` the attempt that ran.

No function here is named `unserved`: that is the task no worker of these tests
can run (a delayed task left to its schedule timeout).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from psycopg.types.json import Jsonb

from lessons.lesson15_operating_at_scale.engine.attempts import current_task
from lessons.lesson15_operating_at_scale.engine.durable import (
    DurableContext,
    DurableFunction,
)
from lessons.lesson15_operating_at_scale.engine.worker import TaskFunction
from tests.recording import wait_for_gate

# The task no worker of these tests has a function for.
UNSERVED_TASK = "unserved"


def record_run(event: str, detail: Any) -> None:
    """One row in `executions` for the attempt running now, committed before this returns."""
    task = current_task()
    with task.pool.connection() as conn:
        conn.execute(
            "INSERT INTO executions (key, attempt, event, pid, detail) VALUES (%s, %s, %s, %s, %s)",
            (task.id, task.attempt, event, os.getpid(), Jsonb(detail)),
        )


def note(input: Any) -> dict[str, Any]:
    """Record that it ran (event "ran", its input as the detail), and return its attempt."""
    record_run("ran", input)
    return {"attempt": current_task().attempt}


def charge(input: dict[str, Any]) -> dict[str, Any]:
    """The effect that must happen once per order: each run is a "charged" row."""
    record_run("charged", input)
    return {"order_id": input["order_id"], "charged_by_task": current_task().id}


def digest(input: dict[str, Any]) -> dict[str, Any]:
    """What a schedule's tick enqueues: each run is a "digest" row naming its tick."""
    record_run("digest", {"schedule": input["schedule"], "tick_at": input["tick_at"]})
    return {"tick_at": input["tick_at"]}


def arrival_file(gate: str, task_id: int) -> Path:
    """The file a task at `gate` creates once it runs: it is at the gate."""
    return Path(f"{gate}.{task_id}.arrived")


def wait_at_gate(input: dict[str, Any]) -> dict[str, Any]:
    """Record "started", say it has arrived (a file), then hold its slot until the
    file `input["gate"]` exists."""
    task = current_task()
    record_run("started", input)
    arrival_file(input["gate"], task.id).touch()
    wait_for_gate(input["gate"], timeout=60)
    return {"gate": input["gate"], "task": task.id}


def call_child(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    """Event 1 a step, event 2 a child (`input["child"]` with `input["child_input"]`,
    spawned with the business key `input["child_key"]`, or none), event 3 a step."""
    ctx.run_step("before", lambda step_input: {"order_id": step_input}, input["order_id"])
    output = ctx.call(input["child"], input["child_input"], idempotency_key=input.get("child_key"))
    ctx.run_step("after", lambda step_input: {"done": step_input}, input["order_id"])
    return {"order_id": input["order_id"], "child_output": output}


FUNCTIONS: dict[str, TaskFunction] = {
    "note": note,
    "charge": charge,
    "digest": digest,
    "wait_at_gate": wait_at_gate,
}

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {"call_child": call_child}
