"""The task functions of this lesson's demonstration.

A task function takes the task's JSON input and returns a JSON output. A worker
finds it by the name it is registered under; `FUNCTIONS` lists them all, and is
what `worker_process --functions` loads.
"""

from __future__ import annotations

import time
from typing import Any

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


FUNCTIONS: dict[str, TaskFunction] = {"example_task": example_task, "sleep_task": sleep_task}
