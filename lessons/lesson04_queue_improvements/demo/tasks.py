"""The task functions of this lesson's demonstration.

A task function takes the task's JSON input and returns a JSON output. A worker
finds it by the name it is registered under; `FUNCTIONS` lists them all, and is
what `worker_process --functions` loads.
"""

from __future__ import annotations

import time
from typing import Any

from ..engine.attempts import current_task
from ..engine.shared import NonRetryableError
from ..engine.worker import TaskFunction


def example_task(input: dict[str, Any]) -> dict[str, Any]:
    message = input["message"]
    return {"reply": f"Processed: {message}"}


def sleep_task(input: dict[str, Any]) -> dict[str, float]:
    """Sleep for `input["seconds"]`, and report when it started and finished.

    The times are the task's own account of when it ran (seconds since the
    epoch), so a check of how many tasks ran at once need not trust the worker.
    """
    started_at = time.time()
    time.sleep(input["seconds"])
    return {"started_at": started_at, "finished_at": time.time()}


def cancellable_sleep_task(input: dict[str, Any]) -> dict[str, Any]:
    """Like sleep_task, but it stops early when its attempt is cancelled.

    `Event.wait(seconds)` sleeps until the flag is raised or the time is up, and
    says which: the polite way for a long task to notice it should give up.
    """
    started_at = time.time()
    cancelled = current_task().cancelled.wait(input["seconds"])
    return {"started_at": started_at, "finished_at": time.time(), "cancelled": cancelled}


def flaky_task(input: dict[str, Any]) -> dict[str, Any]:
    """Fail every attempt before `input["succeed_on_attempt"]`, like a service that is down."""
    attempt = current_task().attempt
    if attempt < input["succeed_on_attempt"]:
        raise ConnectionError(f"the service is unavailable (attempt {attempt})")
    return {"succeeded_on_attempt": attempt}


class CardDeclined(NonRetryableError):
    """Trying again will not make the bank say yes."""


def charge_card(input: dict[str, Any]) -> dict[str, Any]:
    if input["card"].endswith("0002"):
        raise CardDeclined(f"card {input['card']} was declined")
    return {"charged": input["amount"]}


FUNCTIONS: dict[str, TaskFunction] = {
    "example_task": example_task,
    "sleep_task": sleep_task,
    "cancellable_sleep_task": cancellable_sleep_task,
    "flaky_task": flaky_task,
    "charge_card": charge_card,
}
