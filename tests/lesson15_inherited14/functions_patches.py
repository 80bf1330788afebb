"""Durable functions for lesson 14's patch tests (`--functions tests.lesson15_inherited14.functions_patches`).

`staged` is a durable function in four versions, the way a deploy changes it:
it waits for event `a:<key>`, charges (a step), and waits for `b:<key>`; the
charge is what changes. Version 1 runs `charge_old`; version 2 puts
`charge_new` behind the patch `charge-new` (`ctx.patched`); version 3 has
deprecated the patch (`ctx.deprecate_patch`); `renamed` asks for the patch by
another id. A worker process runs the version that its environment's
TEST_STAGED_CODE names (v1, v2, v3 or renamed), as each deploy would ship its
own module.

`patch_then_hold` records a marker and then, on the new path, holds in a step
until a gate file exists, so that a test can kill its worker right after the
marker is recorded.

Every run of a step is a row of the test's `executions` table (see
tests/recording.py), with the task's id and attempt: what ran, not what the
history says.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from psycopg.types.json import Jsonb

from lessons.lesson15_operating_at_scale.engine.attempts import current_task
from lessons.lesson15_operating_at_scale.engine.durable import DurableContext, DurableFunction
from lessons.lesson15_operating_at_scale.engine.worker import TaskFunction

CODE_VARIABLE = "TEST_STAGED_CODE"

# The patch's name, for its marker.
CHARGE_NEW = "charge-new"
# Far longer than any test: a wait that ends only when the test pushes its event.
LONG_SECONDS = 3600.0
# The longest a hold waits for its gate: only a broken test reaches it.
HOLD_SECONDS = 30.0


def note(event: str) -> None:
    """Append what the calling step did to `executions`, with its task's id and attempt."""
    task = current_task()
    with task.pool.connection() as conn:
        conn.execute(
            "INSERT INTO executions (key, attempt, event, pid, detail) VALUES (%s, %s, %s, %s, %s)",
            (task.id, task.attempt, event, os.getpid(), Jsonb({})),
        )


def charge(input: dict[str, Any]) -> dict[str, Any]:
    """A step that says which path ran it (`executions`, event "step <path>")."""
    note(f"step {input['path']}")
    return {"path": input["path"]}


def held(input: dict[str, Any]) -> dict[str, Any]:
    """A step that says it began, then holds until the file `input["gate"]` exists."""
    note(f"step {input['path']} began")
    deadline = time.monotonic() + HOLD_SECONDS
    while not Path(input["gate"]).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gate {input['gate']} was never opened")
        time.sleep(0.01)
    return {"path": input["path"]}


def first_key(key: str) -> str:
    return f"a:{key}"


def second_key(key: str) -> str:
    return f"b:{key}"


def staged_v1(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    """As first deployed: the old charge."""
    key = input["key"]
    ctx.wait_for_event(first_key(key), timeout=LONG_SECONDS)
    charged = ctx.run_step("charge_old", charge, {"path": "charge_old"})
    ctx.wait_for_event(second_key(key), timeout=LONG_SECONDS)
    return {"charged_by": charged["path"]}


def staged_v2(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    """The new charge behind a patch marker."""
    key = input["key"]
    ctx.wait_for_event(first_key(key), timeout=LONG_SECONDS)
    if ctx.patched(CHARGE_NEW):
        charged = ctx.run_step("charge_new", charge, {"path": "charge_new"})
    else:
        charged = ctx.run_step("charge_old", charge, {"path": "charge_old"})
    ctx.wait_for_event(second_key(key), timeout=LONG_SECONDS)
    return {"charged_by": charged["path"]}


def staged_v3(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    """The patch deprecated: the old path gone, the marker skipped where there is one."""
    key = input["key"]
    ctx.wait_for_event(first_key(key), timeout=LONG_SECONDS)
    ctx.deprecate_patch(CHARGE_NEW)
    charged = ctx.run_step("charge_new", charge, {"path": "charge_new"})
    ctx.wait_for_event(second_key(key), timeout=LONG_SECONDS)
    return {"charged_by": charged["path"]}


def staged_renamed(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    """Version 2 with the patch's id changed: a marker of `charge-new` is not its own."""
    key = input["key"]
    ctx.wait_for_event(first_key(key), timeout=LONG_SECONDS)
    if ctx.patched("charge-new-renamed"):
        charged = ctx.run_step("charge_new", charge, {"path": "charge_new"})
    else:
        charged = ctx.run_step("charge_old", charge, {"path": "charge_old"})
    ctx.wait_for_event(second_key(key), timeout=LONG_SECONDS)
    return {"charged_by": charged["path"]}


def patch_then_hold(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    """A marker, then a step that holds on the gate: on the path the marker chose."""
    path = "new_path" if ctx.patched("hold-patch") else "old_path"
    return dict(ctx.run_step(path, held, {"path": path, "gate": input["gate"]}))


STAGED_VERSIONS: dict[str, DurableFunction] = {
    "v1": staged_v1,
    "v2": staged_v2,
    "v3": staged_v3,
    "renamed": staged_renamed,
}

FUNCTIONS: dict[str, TaskFunction] = {}

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {
    "staged": STAGED_VERSIONS[os.environ.get(CODE_VARIABLE, "v2")],
    "patch_then_hold": patch_then_hold,
}
