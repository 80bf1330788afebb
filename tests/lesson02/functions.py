"""Task functions for lesson 02's worker processes (`--functions tests.lesson02.functions`).

Each records what it does in the test schema's `executions` table, named in its
input, keyed by the number `n` its input carries.
"""

from __future__ import annotations

import os
from typing import Any

from lessons.lesson02_simple_task_queue.engine.worker import TaskFunction
from tests.recording import record, wait_for_gate


def record_execution(input: dict[str, Any]) -> dict[str, Any]:
    """Record one execution, and return which process ran it."""
    record(input["schema"], input["n"], "executed")
    return {"n": input["n"], "pid": os.getpid()}


def wait_at_gate(input: dict[str, Any]) -> dict[str, Any]:
    """Record the start, block until the test opens the gate, record the end."""
    record(input["schema"], input["n"], "started")
    wait_for_gate(input["gate"])
    record(input["schema"], input["n"], "finished")
    return {"n": input["n"]}


FUNCTIONS: dict[str, TaskFunction] = {
    "record_execution": record_execution,
    "wait_at_gate": wait_at_gate,
}
