"""A later lesson's engine, named by its package: what the scale and replay benchmarks call.

    engine = LessonEngine.named("lesson14_changing_code_safely")
    engine.querier(conn).claim_tasks(...)   # the lesson's own generated queries
    engine.worker_process(...)              # its own worker processes, unchanged

Lessons 09 and on keep the same modules (`db.queries`, `db.models`, `engine.client`,
`engine.durable`, `engine.worker`, `tools.worker_process`, `sql/schema.sql`); what grows
from lesson to lesson is the arguments of a few calls (lesson 12's claim takes a bound
on the keys it visits, lesson 14's claim and worker registration a code version). The
calls here pass those arguments to the lessons that take them, read from the lesson's
own signatures, so that a benchmark written against lesson 14 runs against a lesson
copied from it (lesson 15) without a line changed, and against lesson 09 as it was.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg

from lessons.common.database import REPOSITORY_ROOT

LESSONS_DIRECTORY = REPOSITORY_ROOT / "lessons"
# What a claim of a queue with concurrency keys visits at most (lesson 12's poller's bound).
KEYS_VISITED_PER_CLAIM = 200
# The code version the benchmarks' worker processes declare, and the tasks they write
# straight into the tables are pinned to (lesson 14 on).
BENCH_CODE_VERSION = "bench"
# The environment variable that names the lesson to a child process that loads a
# benchmark's functions module (`scale_functions.py`).
LESSON_VARIABLE = "BENCH_LESSON"
# The plain tasks of an order, from the lesson's own shop (`demo/tasks.py`).
ORDER_CHILDREN = ("charge_payment", "send_confirmation_email")
# Lesson 12's shop sends no email: the benchmarks' orders give it a stand-in
# (`scale_functions.send_stand_in_email`), which writes its row here, as lesson 13's
# `emails` table has it.
STAND_IN_EMAILS_SQL = """
CREATE TABLE emails (
    order_id text PRIMARY KEY,
    task_id bigint NOT NULL,
    sent_at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


class NoSuchLesson(ValueError):
    """`--lesson` names no lesson of this repository that has an engine to measure."""


@dataclass(frozen=True)
class LessonEngine:
    package: str  # "lesson14_changing_code_safely"

    @classmethod
    def named(cls, package: str) -> LessonEngine:
        """The lesson `package`, checked: a directory of lessons/ with an engine and a schema."""
        directory = LESSONS_DIRECTORY / package
        needed = [directory / "sql" / "schema.sql", directory / "engine" / "durable.py"]
        if not package.startswith("lesson") or not all(path.exists() for path in needed):
            durable = sorted(
                path.parent.parent.name
                for path in LESSONS_DIRECTORY.glob("lesson*/engine/durable.py")
            )
            raise NoSuchLesson(
                f"no lesson package {package!r} with an engine and a schema under "
                f"{LESSONS_DIRECTORY}; lessons with durable tasks: {', '.join(durable)}"
            )
        return cls(package)

    @property
    def number(self) -> str:
        return self.package.removeprefix("lesson")[:2]

    @property
    def title(self) -> str:
        """ "lesson 14" for the tables."""
        return f"lesson {self.number}"

    @property
    def schema_sql(self) -> Path:
        return LESSONS_DIRECTORY / self.package / "sql" / "schema.sql"

    def module(self, name: str) -> ModuleType:
        """The lesson's module `name` ("db.queries", "engine.durable", ...)."""
        return importlib.import_module(f"lessons.{self.package}.{name}")

    def querier(self, conn: psycopg.Connection[Any]) -> Any:
        return self.module("db.queries").Querier(conn)

    @property
    def pins_code_versions(self) -> bool:
        """Whether durable tasks are pinned to the code version they started on (lesson 14 on)."""
        return "code_version" in self._parameters("db.queries", "Querier", "register_worker")

    def register_worker(self, conn: psycopg.Connection[Any], *, name: str, queue: str) -> int:
        """A row in `workers` for this process, as a worker registers itself; its id."""
        arguments: dict[str, Any] = {
            "name": name,
            "queue": queue,
            "slots": 10,
            "lease_seconds": 600.0,
        }
        if self.pins_code_versions:
            arguments["code_version"] = BENCH_CODE_VERSION
        worker = self.querier(conn).register_worker(**arguments)
        return int(worker.id)

    def claim(
        self,
        conn: psycopg.Connection[Any],
        *,
        worker_id: int,
        queue: str,
        task_names: Sequence[str],
        durable_task_names: Sequence[str],
        max_tasks: int,
    ) -> list[Any]:
        """One ClaimTasks call, with the arguments the lesson's poller passes."""
        taken = self._parameters("db.queries", "Querier", "claim_tasks")
        arguments: dict[str, Any] = {
            "worker_id": worker_id,
            "queue": queue,
            "task_names": list(task_names),
            "durable_task_names": list(durable_task_names),
            "max_tasks": max_tasks,
        }
        if "max_keys_visited" in taken:
            arguments["max_keys_visited"] = max(KEYS_VISITED_PER_CLAIM, max_tasks)
        if "code_version" in taken:
            arguments["code_version"] = BENCH_CODE_VERSION
        return list(self.querier(conn).claim_tasks(**arguments))

    def plan_claims_once(self, conn: psycopg.Connection[Any]) -> None:
        """What the lesson's poller does to its own connection before it claims (lesson 12 on)."""
        queries = self.querier(conn)
        if hasattr(queries, "plan_once"):
            queries.plan_once()

    def finish_completed(
        self, conn: psycopg.Connection[Any], worker_id: int, tasks: Sequence[Any]
    ) -> None:
        """The lesson's own FinishAttempts: every task in `tasks` completed, no output."""
        count = len(tasks)
        arguments: dict[str, Any] = {
            "worker_id": worker_id,
            "ids": [task.id for task in tasks],
            "attempts": [task.attempt for task in tasks],
            "succeeded": [True] * count,
            "retryable": [False] * count,
            "outputs": ["null"] * count,
        }
        for flag in ("infrastructure", "cancelled"):
            if flag in self._parameters("db.queries", "Querier", "finish_attempts"):
                arguments[flag] = [False] * count
        self.querier(conn).finish_attempts(**arguments)

    def missing_order_children(self) -> list[str]:
        """The children of an order the lesson's shop lacks (lesson 12's sends no email)."""
        demo = self.module("demo.tasks")
        return [name for name in ORDER_CHILDREN if not hasattr(demo, name)]

    def worker_process(self, **arguments: Any) -> Any:
        """The lesson's own `WorkerProcess` (a worker in a child process), pinned to the
        benchmarks' code version where the lesson pins durable tasks to one."""
        worker_process_class = self.module("tools.worker_process").WorkerProcess
        if self.pins_code_versions:
            arguments.setdefault("code_version", BENCH_CODE_VERSION)
        return worker_process_class(**arguments)

    def _parameters(self, module: str, class_name: str, method: str) -> set[str]:
        function = getattr(getattr(self.module(module), class_name), method)
        return set(inspect.signature(function).parameters)
