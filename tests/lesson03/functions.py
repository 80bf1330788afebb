"""Task functions for lesson 03's workers (`--functions tests.lesson03.functions`)."""

from __future__ import annotations

import os
import time
from typing import Any

from lessons.lesson03_concurrency_limits.worker import TaskFunction
from tests.recording import record, wait_for_gate


def timed_sleep(input: dict[str, Any]) -> dict[str, Any]:
    """Sleep for `input["seconds"]`, and say, by this process's own clock, when the
    function started and finished, and in which process it ran."""
    started = time.monotonic()
    time.sleep(input["seconds"])
    return {"pid": os.getpid(), "started": started, "finished": time.monotonic()}


def wait_at_gate(input: dict[str, Any]) -> dict[str, Any]:
    """Record the start, then block until the test opens the gate."""
    record(input["schema"], input["n"], "started")
    wait_for_gate(input["gate"])
    return {"n": input["n"]}


FUNCTIONS: dict[str, TaskFunction] = {"timed_sleep": timed_sleep, "wait_at_gate": wait_at_gate}
