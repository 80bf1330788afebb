"""The task functions of this lesson's demonstration.

A task function takes the task's JSON input and returns a JSON output. A worker
finds it by the name it is registered under; `FUNCTIONS` lists them all, and is
what `worker_process --functions` loads.
"""

from __future__ import annotations

from typing import Any

from ..engine.worker import TaskFunction


def example_task(input: dict[str, Any]) -> dict[str, Any]:
    message = input["message"]
    return {"reply": f"Processed: {message}"}


FUNCTIONS: dict[str, TaskFunction] = {"example_task": example_task}
