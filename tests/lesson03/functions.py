"""Task functions for lesson 03's workers (`--functions tests.lesson03.functions`)."""

from __future__ import annotations

import os
import time
from typing import Any

from lessons.lesson03_concurrency_limits.engine.worker import TaskFunction
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


def import_report(input: dict[str, Any]) -> None:
    """Fail with a message naming a file whose name is not UTF-8 (as os.listdir()
    returns it): the message holds a lone surrogate, which jsonb cannot hold."""
    name = os.fsdecode(b"report-\xff.csv")
    raise ValueError(f"cannot import {name}: no header line")


FUNCTIONS: dict[str, TaskFunction] = {
    "timed_sleep": timed_sleep,
    "wait_at_gate": wait_at_gate,
    "import_report": import_report,
}
