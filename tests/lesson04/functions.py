"""Task functions for lesson 04's workers (`--functions tests.lesson04.functions`).

Each records its own account of every attempt in the test schema's `executions`
table (named by `input["schema"]`), keyed by task id, with the attempt number
and the process that ran it.
"""

from __future__ import annotations

import os
import time
from typing import Any

from lessons.lesson04_queue_improvements.engine.attempts import current_task
from lessons.lesson04_queue_improvements.engine.shared import NonRetryableError
from lessons.lesson04_queue_improvements.engine.worker import TaskFunction
from tests.recording import record, wait_for_gate


def _record(input: dict[str, Any], event: str, detail: dict[str, Any] | None = None) -> None:
    task = current_task()
    record(input["schema"], task.id, event, attempt=task.attempt, detail=detail)


def stall_on_first_attempt(input: dict[str, Any]) -> dict[str, Any]:
    """Attempt 1 blocks until the test opens `input["gate"]`, paying no attention
    to its cancellation flag; later attempts return at once. Returns the process
    and attempt that produced the result."""
    _record(input, "started")
    if current_task().attempt == 1:
        wait_for_gate(input["gate"])
    _record(input, "finished")
    return {"pid": os.getpid(), "attempt": current_task().attempt}


def always_fail(input: dict[str, Any]) -> None:
    """Fail every attempt with an ordinary, retryable error."""
    _record(input, "started")
    raise ConnectionError(f"the service is unavailable (attempt {current_task().attempt})")


class CardDeclined(NonRetryableError):
    pass


def decline_card(input: dict[str, Any]) -> None:
    """Fail with a NonRetryableError: trying again cannot help."""
    _record(input, "started")
    raise CardDeclined(f"card {input['card']} was declined")


def wait_for_cancellation(input: dict[str, Any]) -> dict[str, Any]:
    """Wait up to `input["seconds"]` for the attempt's cancellation flag, record
    whether it was raised, and return that (a result that comes too late)."""
    _record(input, "started")
    cancelled = current_task().cancelled.wait(input["seconds"])
    _record(input, "finished", {"cancelled": cancelled})
    return {"cancelled": cancelled}


def hold_slot(input: dict[str, Any]) -> dict[str, Any]:
    """Occupy the worker's slot until the test opens `input["gate"]`."""
    _record(input, "started")
    wait_for_gate(input["gate"])
    return {}


def note_start(input: dict[str, Any]) -> dict[str, Any]:
    """Record that the task started (with its label), and return at once."""
    _record(input, "started", {"label": input.get("label")})
    return {"label": input.get("label")}


def return_at_gate(input: dict[str, Any]) -> Any:
    """Wait for `input["gate"]`, then return a result of the kind `input["kind"]`
    names: one JSON cannot express, one jsonb cannot store, or a good one."""
    _record(input, "started")
    wait_for_gate(input["gate"])
    kind = input["kind"]
    if kind == "set":
        return {"tags": {"a", "b"}}
    if kind == "nan":
        return {"ratio": float("nan")}
    if kind == "nul":
        return {"text": "a\x00b"}
    if kind == "deep":
        return deeply_nested(100_000)
    if kind == "poison":
        return {"poison": True}  # the test's trigger refuses it (see the test)
    if kind == "unwritable":
        return UnwritableDict(good=input["n"])
    return {"good": input["n"]}


def deeply_nested(depth: int) -> list[Any]:
    """[[[...]]], `depth` lists deep: too deep for json.dumps, which recurses."""
    nested: list[Any] = []
    for _ in range(depth):
        nested = [nested]
    return nested


class UnwritableDict(dict[str, Any]):
    """A dict whose own code raises while json.dumps writes it out."""

    def items(self) -> Any:
        raise RuntimeError("these items cannot be listed")


def nap(input: dict[str, Any]) -> dict[str, Any]:
    """Record the start, sleep `input["seconds"]`, and return the attempt it ran in."""
    _record(input, "started")
    time.sleep(input["seconds"])
    return {"attempt": current_task().attempt}


def new_kind(input: dict[str, Any]) -> dict[str, Any]:
    """A task function only the workers deployed after it was written have."""
    _record(input, "started")
    return {"new": True}


def import_report(input: dict[str, Any]) -> None:
    """Fail with a message naming a file whose name is not UTF-8 (as os.listdir()
    returns it): the message holds a lone surrogate, which jsonb cannot hold."""
    _record(input, "started")
    name = os.fsdecode(b"report-\xff.csv")
    raise ValueError(f"cannot import {name}: no header line")


class UnprintableError(Exception):
    """An exception whose message cannot be read: its __str__ itself raises."""

    def __str__(self) -> str:
        raise RuntimeError("this message cannot be rendered")


def raise_unprintable(input: dict[str, Any]) -> None:
    """Fail with an exception whose str() raises."""
    _record(input, "started")
    raise UnprintableError()


FUNCTIONS: dict[str, TaskFunction] = {
    "stall_on_first_attempt": stall_on_first_attempt,
    "always_fail": always_fail,
    "decline_card": decline_card,
    "wait_for_cancellation": wait_for_cancellation,
    "hold_slot": hold_slot,
    "note_start": note_start,
    "return_at_gate": return_at_gate,
    "import_report": import_report,
    "raise_unprintable": raise_unprintable,
    "nap": nap,
    "new_kind": new_kind,
}
