"""Lesson 04's queue, as the benchmarks drive it: its schema, bulk enqueueing, its workers.

The worker is the lesson's own, unchanged: each one runs in a process of its own
started by the lesson's `WorkerProcess` (`worker_process.py`), with the no-op task
of `noop.py` registered. `Lesson04` is the lesson as a `QueueSystem`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from lessons.common.database import REPOSITORY_ROOT, connect, reset_schema
from lessons.lesson04_queue_improvements.engine.client import enqueue
from lessons.lesson04_queue_improvements.engine.poller import DEFAULT_CLAIM_POLICY, ClaimPolicy
from lessons.lesson04_queue_improvements.tools.worker_process import WorkerProcess

from ..harness.pacing import steady
from ..harness.processes import started_together, wait_for_go
from ..harness.queue_system import Layout
from ..harness.vacuum import Vacuum, apply_vacuum
from .noop import NOOP_FUNCTIONS, TASK_NAME

SQL_DIRECTORY = REPOSITORY_ROOT / "lessons" / "lesson04_queue_improvements" / "sql"
SCHEMA_SQL = SQL_DIRECTORY / "schema.sql"
QUERIES_SQL = SQL_DIRECTORY / "queries.sql"
QUEUE_TABLES = ("tasks",)
QUEUE = "bench"
# How often an idle worker asks for work. Only an idle worker waits this long: one
# that finds work asks again at once. The course default is 0.5 s.
POLL_INTERVAL = 0.5
# Whether any task is left to finish. Each EXISTS reads one of the lesson's partial
# indexes, so the question costs about as much as one claim, however long the queue.
UNFINISHED_SQL = (
    "SELECT EXISTS (SELECT FROM tasks WHERE status = 'queued')"
    " OR EXISTS (SELECT FROM tasks WHERE status = 'running')"
)
FIRST_START_SQL = "SELECT min(started_at) FROM tasks"
# Tasks per claim: one claim stamps its tasks with its worker and its transaction's
# now(), so each (worker_id, started_at) is one claim (a drain of no-op tasks
# retries none, so no task carries a later claim's stamp over an earlier one's).
TASKS_PER_CLAIM_SQL = (
    "SELECT count(*)::float / nullif(count(DISTINCT (worker_id, started_at)), 0)"
    " FROM tasks WHERE started_at IS NOT NULL"
)
LATENCY_SQL = (
    "SELECT extract(epoch FROM started_at - inserted_at) FROM tasks WHERE started_at IS NOT NULL"
)


class Lesson04:
    """Lesson 04's worker, unchanged: one `worker_process` per process, `batch` slots each.

    `claim_policy` other than the lesson's default is for measuring that default
    (`queue_burn_down.py --claim-policies`); the system's name then says which.
    """

    name = "lesson 04"
    schema = "bench_queue"
    queue_tables = QUEUE_TABLES
    unfinished_sql = UNFINISHED_SQL
    first_start_sql = FIRST_START_SQL
    latency_sql = LATENCY_SQL
    producer = __name__

    def __init__(self, claim_policy: ClaimPolicy | None = None) -> None:
        self.claim_policy = claim_policy or DEFAULT_CLAIM_POLICY
        if claim_policy is not None:
            self.name = f"lesson 04, {describe_claim_policy(claim_policy)}"

    def settings(self, layout: Layout) -> str:
        plural = "es" if layout.processes > 1 else ""
        return (
            f"{layout.processes} worker process{plural} x {layout.batch} slots, "
            f"poll {POLL_INTERVAL:g} s"
        )

    def prepare(self, vacuum: Vacuum) -> None:
        prepare_schema(self.schema, vacuum)

    @contextmanager
    def draining(self, tasks: int, layout: Layout) -> Iterator[list[int]]:
        with self._workers(layout) as workers:
            # The lesson's worker has no "wait for go": freeze the idle workers, fill
            # the queue, and wake them all at once. Frozen for longer than the poll
            # interval, each one asks for work the moment it wakes.
            for worker in workers:
                worker.pause()
            started = time.monotonic()
            with connect(schema=self.schema) as conn:
                enqueue_many(conn, tasks)
            time.sleep(max(0.0, POLL_INTERVAL + 0.05 - (time.monotonic() - started)))
            for worker in workers:
                worker.resume()
            yield [worker.pid for worker in workers]
        print(f"    {self.name}: {tasks_per_claim(self.schema):.1f} tasks per claim", flush=True)

    @contextmanager
    def serving(self, layout: Layout) -> Iterator[list[int]]:
        with self._workers(layout) as workers:
            yield [worker.pid for worker in workers]

    @contextmanager
    def _workers(self, layout: Layout) -> Iterator[list[WorkerProcess]]:
        """`layout.processes` workers started at once; the block runs once each one polls."""
        workers = [
            WorkerProcess(
                schema=self.schema,
                queue=QUEUE,
                functions=NOOP_FUNCTIONS,
                slots=layout.batch,
                claim_policy=self.claim_policy,
                poll_interval=POLL_INTERVAL,
            )
            for _ in range(layout.processes)
        ]
        with started_together(workers):
            yield workers


def describe_claim_policy(policy: ClaimPolicy) -> str:
    """ "claim at once", or "claim at 1/2 free or 5 ms"."""
    if policy.linger == 0:
        return "claim at once"
    return f"claim at {policy.share_free:g} free or {policy.linger * 1000:g} ms"


def tasks_per_claim(schema: str) -> float:
    with connect(schema=schema) as conn:
        row = conn.execute(TASKS_PER_CLAIM_SQL).fetchone()
    return float(row[0]) if row and row[0] is not None else 0.0


def prepare_schema(schema: str, vacuum: Vacuum) -> None:
    """A fresh schema with lesson 04's tables, and the vacuum settings on its queue table."""
    reset_schema(schema, SCHEMA_SQL)
    with connect(schema=schema) as conn:
        apply_vacuum(conn, QUEUE_TABLES, vacuum)


def enqueue_many(conn: psycopg.Connection[Any], count: int) -> None:
    """Put `count` no-op tasks on the queue in one statement (one transaction).

    Pre-enqueueing is not what is measured, so it skips the client's one round trip
    per task; the rows are the ones `enqueue()` would write, with the same defaults.
    """
    conn.execute(
        "INSERT INTO tasks (queue, task_name, display_name, input)"
        " SELECT %(queue)s, %(name)s, %(name)s, '{}'::jsonb FROM generate_series(1, %(count)s)",
        {"queue": QUEUE, "name": TASK_NAME, "count": count},
    )


def produce(schema: str, rate: float, seconds: float) -> float:
    """The producer process's side (`harness/producer.py`): the lesson's `enqueue()`."""
    with connect(schema=schema) as conn:
        wait_for_go()
        return steady(rate, seconds, lambda: enqueue(conn, TASK_NAME, {}, queue=QUEUE))
