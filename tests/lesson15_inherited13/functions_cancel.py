"""Task functions for lesson 13's cancellation tests
(`--functions tests.lesson15_inherited13.functions_cancel`).

The shop's own effects come from the lesson (charges, refunds, emails and
reservations, one row per order, see demo/tasks.py); what this module adds is a
way to hold a task *running* at a chosen moment: `hold`, a step (or a plain
task) that says it has arrived, then waits until its attempt's cancellation flag
is raised, or a gate file is opened, or its bound passes. What it saw is in its
output, and every run of a step or task here is one row of the test's
`executions` table (see tests/recording.py), so that a test counts what really
ran, not what the history says.

Two environment variables arm the engine's crash points (engine/crash_points.py)
at a moment of `order` that the points alone cannot single out, because the
same point is passed earlier: TEST_ARM_FREEZE_AT is made COURSE_FREEZE_AT right
before the email's spawn (the charge's spawn passed the same points), and
TEST_ARM_CRASH_AT is made COURSE_CRASH_AT at the start of the compensation.
Each is armed once per process (popped from the environment).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from psycopg.types.json import Jsonb

from lessons.lesson15_operating_at_scale.demo.tasks import FUNCTIONS as SHOP_FUNCTIONS
from lessons.lesson15_operating_at_scale.demo.tasks import release_stock, reserve_stock
from lessons.lesson15_operating_at_scale.engine.attempts import current_task
from lessons.lesson15_operating_at_scale.engine.crash_points import CRASH_AT, FREEZE_AT
from lessons.lesson15_operating_at_scale.engine.durable import (
    Cancelled,
    DurableContext,
    DurableFunction,
)
from lessons.lesson15_operating_at_scale.engine.shared import NonRetryableError
from lessons.lesson15_operating_at_scale.engine.worker import TaskFunction

ARM_FREEZE_AT = "TEST_ARM_FREEZE_AT"
ARM_CRASH_AT = "TEST_ARM_CRASH_AT"

# A queue no worker of these tests serves: a child sent there stays queued.
UNSERVED_QUEUE = "unserved"

# The longest a hold waits: a bound that only a broken engine reaches (the
# tests wait for far less, and fail first).
HOLD_SECONDS = 60.0

# How long the durable children of `family` sleep, or wait: far longer than any test.
LONG_SECONDS = 3600.0


def note(event: str, detail: dict[str, Any] | None = None) -> None:
    """Append what the calling task did to the test's `executions` table, on the
    database's clock (clock_timestamp), through the task's own pool."""
    task = current_task()
    with task.pool.connection() as conn:
        conn.execute(
            "INSERT INTO executions (key, attempt, event, pid, detail) VALUES (%s, %s, %s, %s, %s)",
            (task.id, task.attempt, event, os.getpid(), Jsonb(detail or {})),
        )


def arrival_file(gate: str, task_id: int) -> Path:
    """The file a hold of task `task_id` at `gate` creates once it runs."""
    return Path(f"{gate}.{task_id}.arrived")


def hold(input: dict[str, Any]) -> dict[str, Any]:
    """Say it has arrived, then wait until the attempt's cancellation flag is raised,
    or the file `input["gate"]` exists, or HOLD_SECONDS pass; say which.

    A step of a durable function, or a plain task: either way the attempt is
    running, and `current_task()` is its own.
    """
    task = current_task()
    note("hold began")
    arrival_file(input["gate"], task.id).touch()
    deadline = time.monotonic() + HOLD_SECONDS
    released_by = "timeout"
    while time.monotonic() < deadline:
        if task.cancelled.wait(0.01):
            # Recorded on the database's clock, to be compared with the task's
            # cancel_requested_at: how long the flag took to be raised.
            note("flag raised")
            released_by = "cancellation"
            break
        if Path(input["gate"]).exists():
            released_by = "gate"
            break
    note("hold returned", {"released_by": released_by})
    return {"released_by": released_by}


def work(input: dict[str, Any]) -> dict[str, Any]:
    """A task that does nothing but say it ran."""
    note("work ran")
    return {"n": input.get("n")}


class Refused(NonRetryableError):
    """Trying again cannot help."""


def fail_for_good(input: dict[str, Any]) -> None:
    raise Refused(f"refused {input}")


def counted_step(input: dict[str, Any]) -> dict[str, Any]:
    """A step whose every run is counted (`executions`, event "step <name>")."""
    note(f"step {input['name']}")
    return {"name": input["name"]}


def arm(variable: str, crash_point_variable: str) -> None:
    """Make the crash point this process was given in `variable` its live one, once."""
    point = os.environ.pop(variable, None)
    if point is not None:
        os.environ[crash_point_variable] = point


def order(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    """The shop's checkout saga, held between its charge and its email.

    Reserve the stock (a step), charge the card (a child), hold (a step, when
    `input["hold"]`: waits for the cancellation flag or the gate), then send the
    confirmation email (a child). Cancelled, it refunds the charge (a child)
    and releases the stock (a step), and raises Cancelled again.
    """
    order_id = input["order_id"]
    try:
        ctx.run_step("reserve_stock", reserve_stock, {"order_id": order_id, "item": "grinder"})
        ctx.call("charge_payment", {"order_id": order_id, "amount_cents": 1500})
        if input.get("hold"):
            ctx.run_step("hold", hold, {"gate": input["gate"]})
        arm(ARM_FREEZE_AT, FREEZE_AT)
        ctx.call("send_confirmation_email", {"order_id": order_id})
    except Cancelled:
        # An armed freeze was meant for the email's spawn, not the refund's.
        os.environ.pop(FREEZE_AT, None)
        arm(ARM_CRASH_AT, CRASH_AT)
        ctx.call("refund_payment", {"order_id": order_id})
        ctx.run_step("release_stock", release_stock, {"order_id": order_id})
        raise
    return {"order_id": order_id, "emailed": True}


def sleep_long(ctx: DurableContext, input: dict[str, Any]) -> None:
    """A durable child that has run (a step), then sleeps for an hour."""
    ctx.run_step("began", counted_step, {"name": f"sleeper {input['n']}"})
    ctx.sleep(LONG_SECONDS)


def wait_long(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """A durable child that has run (a step), then waits an hour for an event."""
    ctx.run_step("began", counted_step, {"name": f"waiter {input['n']}"})
    return ctx.wait_for_event(input["event"], timeout=LONG_SECONDS)


def family(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """Spawn one child in every state a child can be in when its parent is
    cancelled, then wait for the running one:

    - `sleep_long`, durable: it runs a step, then sleeps (suspended);
    - `wait_long`, durable: it runs a step, then waits for an event (suspended);
    - `hold`, plain: running, until its cancellation flag is raised;
    - `work`, plain, on a queue no worker serves: queued;
    - `sleep_long`, durable, on that queue: queued, never started.
    """
    ctx.spawn_child("sleep_long", {"n": 1}, durable=True)
    ctx.spawn_child("wait_long", {"n": 2, "event": input["event"]}, durable=True)
    running = ctx.spawn_child("hold", {"n": 3, "gate": input["gate"]})
    ctx.spawn_child("work", {"n": 4}, queue=UNSERVED_QUEUE)
    ctx.spawn_child("sleep_long", {"n": 5}, queue=UNSERVED_QUEUE, durable=True)
    return ctx.wait_for_child(running)


def compensate_and_return(ctx: DurableContext, input: dict[str, Any]) -> dict[str, Any]:
    """Hold, then a step; cancelled, it compensates (a step) and *returns* a value."""
    try:
        held = ctx.run_step("hold", hold, {"gate": input["gate"]})
        ctx.run_step("after", counted_step, {"name": "after"})
    except Cancelled as cancellation:
        ctx.run_step("undo", counted_step, {"name": "undo"})
        return {"compensated": True, "cancelled_by": cancellation.cancelled_by}
    return {"completed": True, "hold": held["released_by"]}


def swallow_with_except_exception(ctx: DurableContext, input: dict[str, Any]) -> str:
    """Hold, then a step, inside an `except Exception` meant for ordinary errors:
    Cancelled is a BaseException, and goes through it."""
    try:
        ctx.run_step("hold", hold, {"gate": input["gate"]})
        ctx.run_step("after", counted_step, {"name": "after"})
    except Exception:
        return "swallowed"
    return "completed"


FUNCTIONS: dict[str, TaskFunction] = {
    **SHOP_FUNCTIONS,
    "hold": hold,
    "work": work,
    "fail_for_good": fail_for_good,
}

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {
    "order": order,
    "sleep_long": sleep_long,
    "wait_long": wait_long,
    "family": family,
    "compensate_and_return": compensate_and_return,
    "swallow_with_except_exception": swallow_with_except_exception,
}
