"""Task functions for lesson 07's exercise checks (`--functions exercises.lesson07.functions`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lessons.lesson07_durable_tasks.engine.durable import DurableContext, DurableFunction
from lessons.lesson07_durable_tasks.engine.worker import TaskFunction


def print_label(input: dict[str, str]) -> dict[str, str]:
    """A step with an effect the check can count: one line in a file per run."""
    with Path(input["runs"]).open("a") as runs:
        runs.write("printed\n")
    return {"label": "A-1"}


def label_one_order(ctx: DurableContext, input: dict[str, str]) -> Any:
    return ctx.run_step("print_label", print_label, input)


FUNCTIONS: dict[str, TaskFunction] = {}

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {"label_one_order": label_one_order}
