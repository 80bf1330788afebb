"""Task functions for lesson 15's retention tests
(`--functions tests.lesson15.functions_retention`).

`shop` is an order: it charges (a child), emails (a child), and, as its input
says, then waits for an external event (`go:<name>`, so that it stays
unfinished as long as the test wants, its children finished long before), or
spawns a third child it never waits for (fire and forget, on a queue of the
test's choosing), or charges through a child with a business key, shared with
another order's. Every run of a child is one row of the test's `executions`
table (see tests/recording.py), so that a test counts what really ran, not
what the history says.

The plain functions are the other ways a task ends, for the `finished_at`
tests: `fail` raises, `hold` runs until its attempt is taken from it (an
execution timeout, a lost worker) or its gate opens; `compensating` waits,
and undoes its step when it is cancelled.
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
    DurableContext,
    DurableFunction,
)
from lessons.lesson15_operating_at_scale.engine.worker import TaskFunction

# A queue no worker serves until the test starts one for it.
UNSERVED_QUEUE = "unserved"

# Far longer than any test: a wait that ends only when the test pushes its event.
LONG_SECONDS = 3600.0

# The longest a hold runs: a bound only a broken engine reaches.
HOLD_SECONDS = 30.0


def note(event: str, detail: dict[str, Any] | None = None) -> None:
    """Append what the calling task did to the test's `executions` table."""
    task = current_task()
    with task.pool.connection() as conn:
        conn.execute(
            "INSERT INTO executions (key, attempt, event, pid, detail) VALUES (%s, %s, %s, %s, %s)",
            (task.id, task.attempt, event, os.getpid(), Jsonb(detail or {})),
        )


def go_key(name: str) -> str:
    """The external event a `shop` order named `name` waits for."""
    return f"go:{name}"


def charge(input: dict[str, Any]) -> dict[str, Any]:
    note("charged", {"order": input["order"]})
    return {"order": input["order"], "charged_by": current_task().id}


def email(input: dict[str, Any]) -> dict[str, Any]:
    note("emailed", {"order": input["order"]})
    return {"order": input["order"], "emailed_by": current_task().id}


def forgotten(input: dict[str, Any]) -> dict[str, Any]:
    note("forgotten ran", {"order": input["order"]})
    return {"order": input["order"]}


def fail(input: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("the card was declined")


def arrival_file(gate: str, task_id: int) -> Path:
    return Path(f"{gate}.{task_id}.arrived")


def hold(input: dict[str, Any]) -> dict[str, Any]:
    """Say it has arrived, then run until its attempt's cancellation flag is raised
    (the attempt was taken from it), or its gate opens."""
    task = current_task()
    arrival_file(input["gate"], task.id).touch()
    deadline = time.monotonic() + HOLD_SECONDS
    while not task.cancelled.is_set() and not Path(input["gate"]).exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the hold was never released")
        time.sleep(0.01)
    return {"released": not task.cancelled.is_set()}


def shop(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    """Charge, email, then (as the input says) wait for go:<name>, or forget a child."""
    name = input["name"]
    charged = ctx.call("charge", {"order": name}, idempotency_key=input.get("charge_key"))
    emailed = ctx.call("email", {"order": name})
    output: dict[str, Any] = {"charge": charged, "email": emailed}
    if input.get("wait"):
        output["payload"] = ctx.wait_for_event(go_key(name), timeout=LONG_SECONDS)
    if input.get("forget_on"):
        child = ctx.spawn_child("forgotten", {"order": name}, queue=input["forget_on"])
        output["forgotten"] = child.id
    return output


def undo(input: dict[str, Any]) -> dict[str, Any]:
    note("undone", input)
    return {"undone": input["name"]}


def compensating(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    """Charge, then wait; cancelled, undo the charge and end cancelled."""
    try:
        ctx.call("charge", {"order": input["name"]})
        ctx.wait_for_event(go_key(input["name"]), timeout=LONG_SECONDS)
    except Cancelled:
        ctx.run_step("undo", undo, {"name": input["name"]})
        raise
    return {"done": True}


def waits_twice(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    """Two waits in a row: the first event ends one while the task goes on waiting."""
    first = ctx.wait_for_event(f"first:{input['name']}", timeout=LONG_SECONDS)
    second = ctx.wait_for_event(f"second:{input['name']}", timeout=LONG_SECONDS)
    return {"first": first, "second": second}


def two_shared_charges(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    """Two charges, each a child with a business key (which another order may share),
    with a wait for go:<name> in between if the input says so."""
    name = input["name"]
    first = ctx.call("charge", {"order": f"{name}/1"}, idempotency_key=input["first_key"])
    if input.get("wait_between"):
        ctx.wait_for_event(go_key(name), timeout=LONG_SECONDS)
    second = ctx.call("charge", {"order": f"{name}/2"}, idempotency_key=input["second_key"])
    return {"first": first, "second": second}


def parent_of_order(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    """A durable child (an order, with children of its own): a tree three deep."""
    return {"order": ctx.call("shop", {"name": input["name"]}, durable=True)}


FUNCTIONS: dict[str, TaskFunction] = {
    "charge": charge,
    "email": email,
    "forgotten": forgotten,
    "fail": fail,
    "hold": hold,
}

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {
    "shop": shop,
    "compensating": compensating,
    "waits_twice": waits_twice,
    "parent_of_order": parent_of_order,
    "two_shared_charges": two_shared_charges,
}
