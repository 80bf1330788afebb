"""Durable functions for lesson 14's determinism-check tests, as first deployed
(`--functions tests.lesson15_inherited14.functions_check`).

A worker process of this module records the histories; `functions_check_v2.py`
is the new code the check replays them against. Every effect a function of
either module can have is observable from outside: each run of a step, and each
run of a child task, is a row of the test's `executions` table (see
tests/recording.py), and `append_line` also appends a line to a file. A check
that ran anything would leave one of them behind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from psycopg.types.json import Jsonb

from lessons.lesson15_operating_at_scale.engine.attempts import current_task
from lessons.lesson15_operating_at_scale.engine.durable import DurableContext, DurableFunction
from lessons.lesson15_operating_at_scale.engine.worker import TaskFunction

# Far longer than any test: a wait that ends only when the test pushes its event.
LONG_SECONDS = 3600.0


def note(event: str) -> None:
    """Append what the calling task (a step's task, or a child) did to `executions`."""
    task = current_task()
    with task.pool.connection() as conn:
        conn.execute(
            "INSERT INTO executions (key, attempt, event, pid, detail) VALUES (%s, %s, %s, %s, %s)",
            (task.id, task.attempt, event, os.getpid(), Jsonb({})),
        )


def go_key(key: str) -> str:
    """The external event `flow` waits for."""
    return f"go:{key}"


def counted(input: dict[str, Any]) -> dict[str, Any]:
    """A step that only says it ran (`executions`, event "step <name>")."""
    note(f"step {input['name']}")
    return {"name": input["name"]}


def append_line(input: dict[str, Any]) -> dict[str, Any]:
    """A step with a side effect outside the database: a line appended to a file."""
    with Path(input["file"]).open("a") as file:
        file.write("appended\n")
    note("step append_line")
    return {"appended": True}


def effect_child(input: dict[str, Any]) -> dict[str, Any]:
    """A plain task, the child of the new code: says it ran."""
    note("effect_child ran")
    return {"key": input["key"]}


def flow(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    """A step, then a wait for the test's event."""
    ctx.run_step("first", counted, {"name": "first"})
    payload = ctx.wait_for_event(go_key(input["key"]), timeout=LONG_SECONDS)
    return {"payload": payload}


def quick(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    """One step and done: a task that finishes."""
    ctx.run_step("only", counted, {"name": "only"})
    return {"done": True}


def legacy(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    """A durable function the new code no longer has."""
    ctx.wait_for_event(f"legacy:{input['key']}", timeout=LONG_SECONDS)
    return {"done": True}


FUNCTIONS: dict[str, TaskFunction] = {"effect_child": effect_child}

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {
    "flow": flow,
    "quick": quick,
    "legacy": legacy,
}
