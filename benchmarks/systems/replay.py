"""What a run of a durable task costs to replay, on any lesson from 09 on.

`benchmarks/replay_cost.py` (lesson 09's own benchmark, `--lesson` for a later one) and
`benchmarks/scale_growth.py` (lesson 15's) measure with these. See replay_cost.py's
docstring for the method: a history of n resolved events written straight into the
tables, one claim, then each run loads a context and replays all n operations.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from lessons.common.stats import median

from .lesson_engine import LessonEngine

SCHEMA = "bench_replay"
QUEUE = "replay"
KINDS = ("step", "child", "sleep")
SLEEP_SECONDS = 60.0
INACTIVITY_THRESHOLD = 10.0

# Counts every UPDATE that suspends a task, rolled back or not: nextval() is
# not undone by a rollback.
COUNT_SUSPENSIONS = """
CREATE SEQUENCE suspensions;
CREATE FUNCTION count_suspension() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM nextval('suspensions');
    RETURN NEW;
END $$;
CREATE TRIGGER count_suspensions AFTER UPDATE OF status ON tasks
FOR EACH ROW WHEN (NEW.status = 'suspended') EXECUTE FUNCTION count_suspension();
"""


class CountingPool(ConnectionPool):
    """A pool that counts its checkouts: each durable operation's statement or transaction.

    It counts `getconn`, which `connection()` calls too: the engine's statement retries
    (lesson 09 on) take their connections with `getconn`, so counting `connection()`
    alone saw none of them.
    """

    checkouts = 0

    def getconn(self, timeout: float | None = None) -> psycopg.Connection[Any]:
        self.checkouts += 1
        return super().getconn(timeout)


def echo(input: Any) -> Any:
    return input


def replay_everything(ctx: Any, input: dict[str, Any]) -> Any:
    """n operations of one kind, the same calls the history was written with."""
    for n in range(input["events"]):
        if input["kind"] == "step":
            ctx.run_step("echo", echo, {"n": n})
        elif input["kind"] == "child":
            ctx.call("echo", {"n": n})
        else:
            ctx.sleep(SLEEP_SECONDS)
    return input["events"]


def call_children_in_sequence(ctx: Any, input: dict[str, Any]) -> Any:
    return [ctx.call("echo", {"n": n}) for n in range(input["children"])]


FUNCTIONS: dict[str, Any] = {"echo": echo}
DURABLE_FUNCTIONS: dict[str, Any] = {
    "replay_everything": replay_everything,
    "call_children_in_sequence": call_children_in_sequence,
}


@dataclass(frozen=True)
class ReplayRow:
    kind: str
    events: int
    seconds: float  # median of the runs
    checkouts: int  # per run
    suspensions: int  # per run
    runs: list[float] = field(default_factory=list)  # seconds of each run

    def line(self) -> str:
        per_event_us = self.seconds / self.events * 1e6
        return (
            f"{self.kind:<6} {self.events:>6} {self.seconds * 1e3:>10.2f} {per_event_us:>12.1f} "
            f"{self.checkouts:>10} {self.suspensions:>12}"
        )


@dataclass(frozen=True)
class Replays:
    """The replay benchmark on one lesson's engine, in schema `schema`."""

    engine: LessonEngine
    schema: str = SCHEMA

    def open_pool(self, url: str) -> CountingPool:
        pool = CountingPool(
            url,
            min_size=1,
            max_size=8,
            kwargs={"autocommit": True, "options": f"-c search_path={self.schema}"},
            open=False,
        )
        pool.open(wait=True, timeout=30)
        return pool

    def write_history(self, conn: psycopg.Connection[Any], kind: str, events: int) -> int:
        """A durable task with `events` resolved events of `kind`, not claimed yet: its id."""
        enqueue = self.engine.module("engine.client").enqueue
        task_id = int(
            enqueue(
                conn,
                "replay_everything",
                {"kind": kind, "events": events},
                queue=QUEUE,
                durable=True,
            )
        )
        child_ids: list[int | None] = [None] * events
        if kind == "child":
            rows = conn.execute(
                """
                INSERT INTO tasks (queue, task_name, display_name, input, output, status,
                                   durable, parent_id)
                SELECT %s, 'echo', 'echo', jsonb_build_object('n', n), jsonb_build_object('n', n),
                       'completed', false, %s
                FROM generate_series(0, %s - 1) AS n
                ORDER BY n
                RETURNING id
                """,
                (QUEUE, task_id, events),
            ).fetchall()
            child_ids = [row[0] for row in rows]
        with conn.cursor() as cursor:
            cursor.executemany(
                """
                INSERT INTO task_events (task_id, event_number, kind, name, input, key, output,
                                         child_task_id, wake_at, attempt)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s,
                        CASE WHEN %s THEN now() - interval '1 hour' END, 1)
                """,
                [
                    (
                        task_id,
                        n + 1,
                        kind,
                        *self.call(kind, n),
                        Jsonb({"n": n}) if kind == "step" else None,
                        child_ids[n],
                        kind == "sleep",
                    )
                    for n in range(events)
                ],
            )
        return task_id

    def call(self, kind: str, n: int) -> tuple[str, Jsonb, str]:
        """The name, input and key of operation n of `replay_everything`."""
        name, input = {
            "step": ("echo", {"n": n}),
            "child": ("echo", {"n": n}),
            "sleep": ("sleep", {"seconds": SLEEP_SECONDS}),
        }[kind]
        event_kind = self.engine.module("db.models").EventKind(kind)
        key = self.engine.module("engine.durable").event_key(event_kind, name, input)
        return name, Jsonb(input), str(key)

    def measure_replay(self, pool: CountingPool, kind: str, events: int, runs: int) -> ReplayRow:
        with pool.connection() as conn:
            task_id = self.write_history(conn, kind, events)
            worker_id = self.engine.register_worker(conn, name="replay_cost", queue=QUEUE)
            [task] = self.engine.claim(
                conn,
                worker_id=worker_id,
                queue=QUEUE,
                task_names=[],
                durable_task_names=["replay_everything"],
                max_tasks=1,
            )
            assert task.id == task_id
        seconds = []
        checkouts_before, suspensions_before = pool.checkouts, suspensions(pool)
        for _ in range(runs):
            seconds.append(self.replay_once(pool, worker_id, task))
        checkouts = (pool.checkouts - checkouts_before) // runs
        suspended = (suspensions(pool) - suspensions_before) // runs
        return ReplayRow(kind, events, median(seconds), checkouts, suspended, seconds)

    def replay_once(self, pool: ConnectionPool, worker_id: int, task: Any) -> float:
        durable = self.engine.module("engine.durable")
        limits = self.engine.module("engine.transactions").TransactionLimits.for_worker(
            INACTIVITY_THRESHOLD
        )
        retries = self.engine.module("engine.statement_retries").StatementRetries.for_worker(
            INACTIVITY_THRESHOLD
        )
        started = time.perf_counter()
        context = durable.DurableContext.load(
            pool, worker_id=worker_id, task=task, limits=limits, retries=retries
        )
        replay_everything(context, task.input)
        context.check_whole_history_replayed()
        return time.perf_counter() - started

    def measure_sequence(self, pool: CountingPool, children: int) -> tuple[float, int]:
        """Seconds from enqueue to completion of n sequential children, and suspensions written."""
        client = self.engine.module("engine.client")
        worker_class = self.engine.module("engine.worker").Worker
        before = suspensions(pool)
        with worker_class(
            pool,
            FUNCTIONS,
            durable_functions=DURABLE_FUNCTIONS,
            queue=QUEUE,
            slots=2,
            poll_interval=5.0,
            heartbeat_interval=0.5,
            inactivity_threshold=INACTIVITY_THRESHOLD,
        ):
            started = time.perf_counter()
            with pool.connection() as conn:
                task_id = client.enqueue(
                    conn,
                    "call_children_in_sequence",
                    {"children": children},
                    queue=QUEUE,
                    durable=True,
                )
            client.wait_for_task(pool, task_id, timeout=600)
            took = time.perf_counter() - started
        return took, suspensions(pool) - before


def suspensions(pool: ConnectionPool) -> int:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM suspensions"
        ).fetchone()
    return int(row[0]) if row else 0
