"""Lessons 11 and 12 as the flow-control benchmark drives them: their claims, their workers.

Two measurements, both on a queue of no-op tasks (`noop.py`):

- **one claim**, in this process: the lesson's own `Querier.claim_tasks`, timed alone,
  in a loop on a queue that holds the same number of queued tasks before every
  claim (`ClaimLoop`, below, says how);
- **a drain**, in worker processes: the lesson's own `WorkerProcess`, unchanged, as a
  `QueueSystem` (`harness/queue_system.py`) for the harness's burn-down case.

A `Shape` says what the queue holds: keyless tasks (lesson 11's only kind, and lesson
12's keyless lane), or keyed tasks spread evenly over `keys` keys (lesson 12's fair
lane), with a limit per key, and optionally most keys already full.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg

from lessons.common.database import REPOSITORY_ROOT, connect, reset_schema
from lessons.common.stats import percentile
from lessons.lesson11_retries_replays_forks.db.queries import Querier as Lesson11Querier
from lessons.lesson11_retries_replays_forks.tools.worker_process import (
    WorkerProcess as Lesson11WorkerProcess,
)
from lessons.lesson12_flow_control.db.queries import Querier as Lesson12Querier
from lessons.lesson12_flow_control.engine.client import set_concurrency_limit
from lessons.lesson12_flow_control.engine.poller import KEYS_VISITED_PER_CLAIM
from lessons.lesson12_flow_control.tools.worker_process import (
    WorkerProcess as Lesson12WorkerProcess,
)

from ..harness.processes import started_together
from ..harness.queue_system import Layout
from ..harness.vacuum import Vacuum, apply_vacuum
from .lesson04 import FIRST_START_SQL, LATENCY_SQL, UNFINISHED_SQL
from .noop import NOOP_FUNCTIONS, TASK_NAME

LESSONS = REPOSITORY_ROOT / "lessons"
LESSON11_SCHEMA_SQL = LESSONS / "lesson11_retries_replays_forks" / "sql" / "schema.sql"
LESSON12_SCHEMA_SQL = LESSONS / "lesson12_flow_control" / "sql" / "schema.sql"
QUEUE = "bench"
QUEUE_TABLES = ("tasks", "concurrency_keys")
# Notifications wake the workers; polling is only the fallback (the lessons' default).
POLL_INTERVAL = 5.0
# Long leases: nothing dies here, and sweeps should not weigh on the figures.
LEASE_SECONDS = 600.0


@dataclass(frozen=True)
class Shape:
    """What the queue holds. `keys` None: keyless tasks; else tasks spread over `keys` keys.

    `full_keys_per_hundred`: of every hundred keys, how many already have `max_per_key`
    tasks running (held by a worker that never finishes them) when the claims begin.
    """

    keys: int | None = None
    max_per_key: int = 20
    full_keys_per_hundred: int = 0

    def describe(self) -> str:
        if self.keys is None:
            return "keyless"
        plural = "s" if self.keys > 1 else ""
        words = f"{self.keys:,} key{plural}, max_per_key {self.max_per_key}"
        if self.full_keys_per_hundred:
            words += f", {self.full_keys_per_hundred} % of keys full"
        return words

    def key_of(self, number: str) -> str:
        """SQL: the key of task number `number` (an SQL expression counting from 0)."""
        if self.keys is None:
            return "NULL::text"
        return f"'k' || lpad((({number}) %% {self.keys})::text, 6, '0')"


KEYLESS = Shape()


class Lesson(Protocol):
    """One of the two lessons: its schema and its claim, called as its poller calls it."""

    @property
    def name(self) -> str: ...

    @property
    def schema_sql(self) -> Any: ...

    def set_up_claims(self, conn: psycopg.Connection[Any]) -> None:
        """What the lesson's poller does to its connection before it claims."""
        ...

    def claim(self, conn: psycopg.Connection[Any], worker_id: int, max_tasks: int) -> list[Any]:
        """One ClaimTasks call; the claimed tasks (each with id, attempt, concurrency_key)."""
        ...

    def finish(self, conn: psycopg.Connection[Any], worker_id: int, tasks: Sequence[Any]) -> None:
        """The lesson's own FinishAttempts: every task in `tasks` completed."""
        ...


def all_completed(worker_id: int, tasks: Sequence[Any]) -> dict[str, Any]:
    """FinishAttempts' arguments (the same in both lessons): every task completed, no output."""
    return {
        "worker_id": worker_id,
        "ids": [task.id for task in tasks],
        "attempts": [task.attempt for task in tasks],
        "succeeded": [True] * len(tasks),
        "retryable": [False] * len(tasks),
        "infrastructure": [False] * len(tasks),
        "outputs": ["null"] * len(tasks),
    }


class Lesson11Claim:
    name = "lesson 11"
    schema_sql = LESSON11_SCHEMA_SQL

    def set_up_claims(self, conn: psycopg.Connection[Any]) -> None:
        pass  # its poller claims on a pooled connection, as it is

    def claim(self, conn: psycopg.Connection[Any], worker_id: int, max_tasks: int) -> list[Any]:
        return list(
            Lesson11Querier(conn).claim_tasks(
                worker_id=worker_id,
                queue=QUEUE,
                durable_task_names=[],
                task_names=[TASK_NAME],
                max_tasks=max_tasks,
            )
        )

    def finish(self, conn: psycopg.Connection[Any], worker_id: int, tasks: Sequence[Any]) -> None:
        Lesson11Querier(conn).finish_attempts(**all_completed(worker_id, tasks))


class Lesson12Claim:
    """Lesson 12's claim with the arguments its poller passes, on a connection set up as its
    poller's is (one generic plan; the walk's position is in the worker's row)."""

    name = "lesson 12"
    schema_sql = LESSON12_SCHEMA_SQL

    def set_up_claims(self, conn: psycopg.Connection[Any]) -> None:
        Lesson12Querier(conn).plan_once()

    def claim(self, conn: psycopg.Connection[Any], worker_id: int, max_tasks: int) -> list[Any]:
        tasks = Lesson12Querier(conn).claim_tasks(
            worker_id=worker_id,
            queue=QUEUE,
            durable_task_names=[],
            task_names=[TASK_NAME],
            max_tasks=max_tasks,
            max_keys_visited=max(KEYS_VISITED_PER_CLAIM, max_tasks),
        )
        return list(tasks)

    def finish(self, conn: psycopg.Connection[Any], worker_id: int, tasks: Sequence[Any]) -> None:
        Lesson12Querier(conn).finish_attempts(**all_completed(worker_id, tasks))


def fill_queue(conn: psycopg.Connection[Any], shape: Shape, tasks: int) -> None:
    """`tasks` queued no-op tasks, in one statement, with their keys' rows for a keyed shape.

    Enqueueing is not what is measured, so it skips `enqueue()`'s round trip per task;
    the rows are the ones it would write (the key rows are the ones CreateTask creates).
    """
    create_key_rows(conn, shape)
    key_column = ", concurrency_key" if shape.keys is not None else ""
    key_value = f", {shape.key_of('n')}" if shape.keys is not None else ""
    conn.execute(
        f"INSERT INTO tasks (queue, task_name, display_name, input{key_column})"
        f" SELECT %(queue)s, %(name)s, %(name)s, '{{}}'::jsonb{key_value}"
        " FROM generate_series(0, %(count)s - 1) AS n",
        {"queue": QUEUE, "name": TASK_NAME, "count": tasks},
    )


def fill_keys(conn: psycopg.Connection[Any], shape: Shape, holder_id: int) -> None:
    """Make `full_keys_per_hundred` of every hundred keys full: max_per_key running tasks each.

    The full keys are spread through the key order (not one block), so every walk
    meets them at the same rate. Their tasks run on `holder_id`, a registered worker
    that never finishes them; the engine's trigger counts their slots.
    """
    if shape.keys is None or not shape.full_keys_per_hundred:
        return
    create_key_rows(conn, shape)
    conn.execute(
        "INSERT INTO tasks (queue, task_name, display_name, input, concurrency_key,"
        "  status, attempt, worker_id, started_at)"
        f" SELECT %(queue)s, %(name)s, %(name)s, '{{}}'::jsonb, {shape.key_of('k')},"
        "  'running', 1, %(holder)s, now()"
        " FROM generate_series(0, %(keys)s - 1) AS k, generate_series(1, %(per_key)s)"
        " WHERE k %% 100 < %(full)s",
        {
            "queue": QUEUE,
            "name": TASK_NAME,
            "holder": holder_id,
            "keys": shape.keys,
            "per_key": shape.max_per_key,
            "full": shape.full_keys_per_hundred,
        },
    )


def create_key_rows(conn: psycopg.Connection[Any], shape: Shape) -> None:
    """Each key's row, as CreateTask creates it the first time it sees the key."""
    if shape.keys is None:
        return
    conn.execute(
        "INSERT INTO concurrency_keys (queue, key)"
        f" SELECT %(queue)s, {shape.key_of('n')} FROM generate_series(0, %(keys)s - 1) AS n"
        " ON CONFLICT (queue, key) DO NOTHING",
        {"queue": QUEUE, "keys": shape.keys},
    )


def register_worker(conn: psycopg.Connection[Any], name: str) -> int:
    row = conn.execute(
        "INSERT INTO workers (name, queue, slots, lease_seconds, lease_expires_at)"
        " VALUES (%s, %s, 10, %s, now() + %s * interval '1 second') RETURNING id",
        (name, QUEUE, LEASE_SECONDS, LEASE_SECONDS),
    ).fetchone()
    assert row is not None
    return int(row[0])


@dataclass(frozen=True)
class ClaimTimes:
    seconds: list[float]  # of each timed claim
    tasks: int  # claimed by the timed claims, in all

    @property
    def p50(self) -> float:
        return percentile(self.seconds, 0.5)

    @property
    def p99(self) -> float:
        return percentile(self.seconds, 0.99)

    @property
    def tasks_per_claim(self) -> float:
        return self.tasks / len(self.seconds)


@dataclass(frozen=True)
class ClaimLoop:
    """One ClaimTasks call at a time, timed, on a queue kept at `queued` tasks.

    Every claim is followed (untimed) by what keeps the queue comparable from one
    claim to the next: the claimed tasks are marked completed (the lesson's own FinishAttempts, as
    the worker's result writer does, so their key slots are given back), and as
    many new queued tasks are enqueued with the claimed tasks' keys (one INSERT), so
    that before every claim the queue holds `queued` tasks, spread over the keys as
    at the start. The first `warm_up` claims are not timed (psycopg prepares a
    statement on its fifth execution).
    """

    lesson: Lesson
    shape: Shape
    queued: int
    claims: int
    max_tasks: int = 10
    warm_up: int = 20

    def run(self) -> ClaimTimes:
        schema = "bench_flow_claim"
        reset_schema(schema, self.lesson.schema_sql)
        with connect(schema=schema) as conn, connect(schema=schema) as claims:
            self.lesson.set_up_claims(claims)
            worker_id = register_worker(conn, "claim loop")
            if self.shape.keys is not None:
                set_concurrency_limit(conn, QUEUE, self.shape.max_per_key)
            fill_keys(conn, self.shape, register_worker(conn, "holds the full keys"))
            fill_queue(conn, self.shape, self.queued)
            # A queue that has been in use has statistics; a table just filled has none.
            conn.execute("ANALYZE tasks")
            if self.shape.keys is not None:
                conn.execute("ANALYZE concurrency_keys")
            seconds: list[float] = []
            claimed = 0
            for number in range(self.warm_up + self.claims):
                started = time.perf_counter()
                tasks = self.lesson.claim(claims, worker_id, self.max_tasks)
                took = time.perf_counter() - started
                if number >= self.warm_up:
                    seconds.append(took)
                    claimed += len(tasks)
                complete_and_replace(conn, self.lesson, worker_id, tasks)
        return ClaimTimes(seconds=seconds, tasks=claimed)


def complete_and_replace(
    conn: psycopg.Connection[Any], lesson: Lesson, worker_id: int, tasks: Sequence[Any]
) -> None:
    """Mark `tasks` completed, and enqueue as many new tasks with the same keys (NULL: none)."""
    if not tasks:
        return
    lesson.finish(conn, worker_id, tasks)
    if lesson.name == "lesson 11":
        conn.execute(
            "INSERT INTO tasks (queue, task_name, display_name, input)"
            " SELECT %s, %s, %s, '{}'::jsonb FROM generate_series(1, %s)",
            (QUEUE, TASK_NAME, TASK_NAME, len(tasks)),
        )
        return
    conn.execute(
        "INSERT INTO tasks (queue, task_name, display_name, input, concurrency_key)"
        " SELECT %s, %s, %s, '{}'::jsonb, key FROM unnest(%s::text[]) AS key",
        (QUEUE, TASK_NAME, TASK_NAME, [task.concurrency_key for task in tasks]),
    )


class FlowControlQueue:
    """Lesson 11's or 12's worker processes, unchanged, draining a queue of `shape`.

    Woken by NOTIFY (the INSERT's one notification, at its commit, wakes every idle
    worker), polling every 5 s only as the fallback, as the lessons ship.
    """

    queue_tables = QUEUE_TABLES
    unfinished_sql = UNFINISHED_SQL
    first_start_sql = FIRST_START_SQL
    latency_sql = LATENCY_SQL
    producer = __name__

    def __init__(self, lesson: str, shape: Shape) -> None:
        if lesson not in ("lesson 11", "lesson 12"):
            raise ValueError(f"no such lesson here: {lesson}")
        if lesson == "lesson 11" and shape.keys is not None:
            raise ValueError("lesson 11 has no concurrency keys")
        self.name = lesson
        self.shape = shape
        self.schema = "bench_flow_drain_11" if lesson == "lesson 11" else "bench_flow_drain_12"
        self.schema_sql = LESSON11_SCHEMA_SQL if lesson == "lesson 11" else LESSON12_SCHEMA_SQL

    def settings(self, layout: Layout) -> str:
        plural = "es" if layout.processes > 1 else ""
        return (
            f"{layout.processes} worker process{plural} x {layout.batch} slots, "
            f"{self.shape.describe()}, LISTEN/NOTIFY"
        )

    def prepare(self, vacuum: Vacuum) -> None:
        reset_schema(self.schema, self.schema_sql)
        with connect(schema=self.schema) as conn:
            tables = self.queue_tables if self.name == "lesson 12" else ("tasks",)
            apply_vacuum(conn, tables, vacuum)
            if self.shape.keys is not None:
                set_concurrency_limit(conn, QUEUE, self.shape.max_per_key)

    @contextmanager
    def draining(self, tasks: int, layout: Layout) -> Iterator[list[int]]:
        with self._workers(layout) as pids, connect(schema=self.schema) as conn:
            # One transaction: its commit's one notification wakes the workers on a full
            # queue that has statistics, as a queue in use would.
            with conn.transaction():
                fill_queue(conn, self.shape, tasks)
                conn.execute("ANALYZE tasks")
                if self.shape.keys is not None:
                    conn.execute("ANALYZE concurrency_keys")
            yield pids

    def serving(self, layout: Layout) -> AbstractContextManager[list[int]]:
        raise NotImplementedError("the flow-control benchmark measures no latency")

    @contextmanager
    def _workers(self, layout: Layout) -> Iterator[list[int]]:
        worker_class = Lesson11WorkerProcess if self.name == "lesson 11" else Lesson12WorkerProcess
        workers = [
            worker_class(
                schema=self.schema,
                queues=[QUEUE],
                functions=NOOP_FUNCTIONS,
                slots=layout.batch,
                poll_interval=POLL_INTERVAL,
                heartbeat_interval=1.0,
                inactivity_threshold=10.0,
                listen=True,
            )
            for _ in range(layout.processes)
        ]
        with started_together(workers):
            yield [worker.pid for worker in workers]
