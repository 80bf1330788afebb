"""Replay, fork and cancel from the task page: the history tool's own functions.

The viewer does not reimplement an operation: it calls the function the
lesson's history tool calls for the same command (`replay_lines`,
`fork_lines`, `cancel_lines`), on a connection of its own, and shows the
lines it returns, or the refusal it raises, the same words as on the command
line. Operations are off unless the viewer is started with them allowed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from .lessons import ViewedLesson


@dataclass(frozen=True)
class OperationResult:
    done: bool
    lines: list[str]


class Operations:
    def __init__(
        self, lesson: ViewedLesson, connect: Callable[[], psycopg.Connection[Any]]
    ) -> None:
        self.lesson = lesson
        self.connect = connect

    @property
    def names(self) -> list[str]:
        """The operations this lesson's history tool has."""
        return ["replay", "fork", *(["cancel"] if self.lesson.has("cancellation") else [])]

    def run(self, operation: str, task_id: int, form: dict[str, str]) -> OperationResult:
        """Run `operation` on task `task_id` with the form's values; never raises for
        a refusal, an unknown operation, a bad value or a database that refused."""
        if operation not in self.names:
            return OperationResult(False, [f"lesson {self.lesson.number} has no {operation!r}"])
        tool = self.lesson.history_tool()
        refusals: tuple[type[Exception], ...] = (
            LookupError,
            ValueError,
            importlib.import_module(f"{self.lesson.lesson.package}.engine.reruns").RerunRefused,
        )
        try:
            with self.connect() as conn:
                match operation:
                    case "replay":
                        lines = tool.replay_lines(conn, task_id)
                    case "fork":
                        lines = tool.fork_lines(conn, task_id, whole_number(form.get("at", "")))
                    case "cancel":
                        by, reason = form.get("by", "").strip(), form.get("reason", "").strip()
                        lines = tool.cancel_lines(conn, task_id, by, reason)
        except refusals as refusal:
            return OperationResult(False, [str(refusal)])
        except psycopg.Error as error:
            return OperationResult(False, [f"the database refused: {error}"])
        return OperationResult(True, list(lines))


def whole_number(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(f"an event number is a whole number, 1 or more, not {text!r}")
    return int(text)
