"""The task the queue benchmarks run: it does nothing, so what is measured is the queue.

The queue benchmarks' workers load `FUNCTIONS` from here (`--functions` names this module).
"""

from __future__ import annotations

from typing import Any

TASK_NAME = "noop"
# What the queue benchmarks' workers get as `--functions`: this module.
NOOP_FUNCTIONS = __name__


def noop(input: Any) -> None:
    return None


FUNCTIONS = {TASK_NAME: noop}
