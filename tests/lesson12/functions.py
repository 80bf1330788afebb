"""Task functions for lesson 12's worker processes (`--functions tests.lesson12.functions`).

The concurrency-key tests need tasks that end in every way a task can end:
completed, failed for good, failed once then retried, held running at a gate
(until the test kills their worker, times them out or deletes them), and a
durable task that suspends. No function here is named `new_kind`: that is the
task a rolling deploy brings, which these workers do not serve.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lessons.lesson12_flow_control.engine.attempts import current_task
from lessons.lesson12_flow_control.engine.durable import DurableContext, DurableFunction
from lessons.lesson12_flow_control.engine.shared import NonRetryableError
from lessons.lesson12_flow_control.engine.worker import TaskFunction
from tests.recording import wait_for_gate

# The task no worker of these tests has a function for.
UNSERVED_TASK = "new_kind"


def work(input: dict[str, Any]) -> dict[str, Any]:
    """A task that takes `input["seconds"]` (0 when not given)."""
    time.sleep(input.get("seconds", 0))
    return {"attempt": current_task().attempt}


def arrival_file(gate: str, task_id: int) -> Path:
    """The file a task at `gate` creates once it runs: it is at the gate."""
    return Path(f"{gate}.{task_id}.arrived")


def wait_at_gate(input: dict[str, Any]) -> dict[str, Any]:
    """Say it has arrived (a file), then hold its slot until the file `input["gate"]`
    exists. Held long enough for a test to kill, freeze, time out or delete it."""
    task = current_task()
    arrival_file(input["gate"], task.id).touch()
    wait_for_gate(input["gate"], timeout=120)
    return {"attempt": task.attempt}


class Refused(NonRetryableError):
    """Trying again cannot help."""


def fail_for_good(input: dict[str, Any]) -> None:
    raise Refused(f"refused {input}")


def fail_on_attempt_1(input: dict[str, Any]) -> dict[str, Any]:
    """Attempt 1 fails (and is retried); attempt 2 completes."""
    attempt = current_task().attempt
    if attempt == 1:
        raise ConnectionError("attempt 1 fails")
    return {"attempt": attempt}


def wait_for_go(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """Suspend until the event `input["event"]` is pushed."""
    return ctx.wait_for_event(input["event"], timeout=120)


FUNCTIONS: dict[str, TaskFunction] = {
    "work": work,
    "wait_at_gate": wait_at_gate,
    "fail_for_good": fail_for_good,
    "fail_on_attempt_1": fail_on_attempt_1,
}

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {"wait_for_go": wait_for_go}
