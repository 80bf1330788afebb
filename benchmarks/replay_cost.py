"""Lesson 09: what a run of a durable task costs to replay, against the length of its history.

    python -m benchmarks.replay_cost [--events 10 100 1000] [--runs 5] [--sequence 25 50 100 200]

**Replay.** For each kind of event (steps, children, sleeps) and each history
length n, a durable task is given a history of n events of that kind, all
resolved: steps with their outputs, children completed, sleeps whose wake-up
time has passed (written straight into the tables: building them is not what
is measured). The task is claimed once; then each run loads a context
(`DurableContext.load`, the one read of the history with its children's
outcomes) and calls the same n operations, every one of them replayed, and
`check_whole_history_replayed()`. The figure is the median of `--runs` runs,
on this machine's clock, with the connections the run took from the pool
(one per statement or transaction) and the suspensions it wrote (a trigger
counts them, rolled back or not). Per-event cost is the run's time divided by
n.

**Sequence.** A durable function calls n children one after the other, on one
in-process worker of lesson 09 (2 slots): it runs n + 1 times, each run
replaying every child before the new one. The figure is the time from enqueue
to completion, and the suspensions written: linear when a replayed child
costs nothing (n suspensions, one per new child), quadratic when each replayed
wait suspends and looks again (n(n + 1)/2; the issue measured n = 200 at
132.6 s with 20,294 suspensions).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from lessons.common.database import connect, database_url, drop_schema, reset_schema
from lessons.common.stats import median
from lessons.lesson09_durable_sleep.db.models import EventKind, Task
from lessons.lesson09_durable_sleep.db.queries import Querier
from lessons.lesson09_durable_sleep.engine.client import enqueue, wait_for_task
from lessons.lesson09_durable_sleep.engine.durable import (
    DurableContext,
    DurableFunction,
    event_key,
)
from lessons.lesson09_durable_sleep.engine.statement_retries import StatementRetries
from lessons.lesson09_durable_sleep.engine.transactions import TransactionLimits
from lessons.lesson09_durable_sleep.engine.worker import TaskFunction, Worker

from .harness.machine import this_machine, this_server
from .systems.lesson_orders import LESSONS_DIRECTORY

SCHEMA = "bench_replay"
SCHEMA_SQL = LESSONS_DIRECTORY / "lesson09_durable_sleep" / "sql" / "schema.sql"
QUEUE = "replay"
KINDS = ("step", "child", "sleep")
SLEEP_SECONDS = 60.0
LIMITS = TransactionLimits.for_worker(10.0)
RETRIES = StatementRetries.for_worker(10.0)

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
    """A pool that counts its checkouts: each durable operation's statement or transaction."""

    checkouts = 0

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection[Any]]:
        self.checkouts += 1
        with super().connection(timeout) as conn:
            yield conn


def echo(input: Any) -> Any:
    return input


def replay_everything(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """n operations of one kind, the same calls the history was written with."""
    for n in range(input["events"]):
        if input["kind"] == "step":
            ctx.run_step("echo", echo, {"n": n})
        elif input["kind"] == "child":
            ctx.call("echo", {"n": n})
        else:
            ctx.sleep(SLEEP_SECONDS)
    return input["events"]


def call_children_in_sequence(ctx: DurableContext, input: dict[str, Any]) -> Any:
    return [ctx.call("echo", {"n": n}) for n in range(input["children"])]


FUNCTIONS: dict[str, TaskFunction] = {"echo": echo}
DURABLE_FUNCTIONS: dict[str, DurableFunction] = {
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

    def line(self) -> str:
        per_event_us = self.seconds / self.events * 1e6
        return (
            f"{self.kind:<6} {self.events:>6} {self.seconds * 1e3:>10.2f} {per_event_us:>12.1f} "
            f"{self.checkouts:>10} {self.suspensions:>12}"
        )


def write_history(conn: psycopg.Connection[Any], kind: str, events: int) -> int:
    """A durable task with `events` resolved events of `kind`, claimed: its id."""
    task_id = enqueue(
        conn, "replay_everything", {"kind": kind, "events": events}, queue=QUEUE, durable=True
    )
    child_ids: list[int | None] = [None] * events
    if kind == "child":
        rows = conn.execute(
            """
            INSERT INTO tasks (queue, task_name, display_name, input, output, status, durable,
                               parent_id)
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
                    *call(kind, n),
                    psycopg.types.json.Jsonb({"n": n}) if kind == "step" else None,
                    child_ids[n],
                    kind == "sleep",
                )
                for n in range(events)
            ],
        )
    return task_id


def call(kind: str, n: int) -> tuple[str, psycopg.types.json.Jsonb, str]:
    """The name, input and key of operation n of `replay_everything`."""
    name, input = {
        "step": ("echo", {"n": n}),
        "child": ("echo", {"n": n}),
        "sleep": ("sleep", {"seconds": SLEEP_SECONDS}),
    }[kind]
    return name, psycopg.types.json.Jsonb(input), event_key(EventKind(kind), name, input)


def suspensions(pool: ConnectionPool) -> int:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM suspensions"
        ).fetchone()
    return int(row[0]) if row else 0


def measure_replay(pool: CountingPool, kind: str, events: int, runs: int) -> ReplayRow:
    with pool.connection() as conn:
        task_id = write_history(conn, kind, events)
        queries = Querier(conn)
        worker = queries.register_worker(name="replay_cost", queue=QUEUE, slots=1, lease_seconds=60)
        assert worker is not None
        [task] = queries.claim_tasks(
            worker_id=worker.id,
            queue=QUEUE,
            task_names=[],
            durable_task_names=["replay_everything"],
            max_tasks=1,
        )
        assert task.id == task_id
    seconds = []
    checkouts_before, suspensions_before = pool.checkouts, suspensions(pool)
    for _ in range(runs):
        seconds.append(replay_once(pool, worker.id, task))
    checkouts = (pool.checkouts - checkouts_before) // runs
    suspended = (suspensions(pool) - suspensions_before) // runs
    return ReplayRow(kind, events, median(seconds), checkouts, suspended)


def replay_once(pool: ConnectionPool, worker_id: int, task: Task) -> float:
    started = time.perf_counter()
    context = DurableContext.load(
        pool, worker_id=worker_id, task=task, limits=LIMITS, retries=RETRIES
    )
    replay_everything(context, task.input)
    context.check_whole_history_replayed()
    return time.perf_counter() - started


def measure_sequence(pool: CountingPool, children: int) -> tuple[float, int]:
    """Seconds from enqueue to completion of n sequential children, and suspensions written."""
    before = suspensions(pool)
    with Worker(
        pool,
        FUNCTIONS,
        durable_functions=DURABLE_FUNCTIONS,
        queue=QUEUE,
        slots=2,
        poll_interval=5.0,
        heartbeat_interval=0.5,
        inactivity_threshold=10.0,
    ):
        started = time.perf_counter()
        with pool.connection() as conn:
            task_id = enqueue(
                conn, "call_children_in_sequence", {"children": children}, queue=QUEUE, durable=True
            )
        wait_for_task(pool, task_id, timeout=600)
        took = time.perf_counter() - started
    return took, suspensions(pool) - before


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sequence", type=int, nargs="*", default=[25, 50, 100, 200])
    options = parser.parse_args(argv)

    reset_schema(SCHEMA, SCHEMA_SQL)
    url = database_url()
    with connect(url, schema=SCHEMA) as conn:
        conn.execute(COUNT_SUSPENSIONS)
        server = this_server(conn)
    pool = CountingPool(
        url,
        min_size=1,
        max_size=8,
        kwargs={"autocommit": True, "options": f"-c search_path={SCHEMA}"},
        open=False,
    )
    pool.open(wait=True, timeout=30)
    try:
        print(f"machine: {this_machine().describe()}")
        print(f"server: {server.describe()}")
        print(f"replay of one run, median of {options.runs} (lesson 09):")
        print("kind   events   run (ms)  per event (µs)  statements  suspensions")
        for kind in KINDS:
            for events in options.events:
                print(measure_replay(pool, kind, events, options.runs).line(), flush=True)
        if options.sequence:
            print("n children called in sequence, enqueue to completion (one worker, 2 slots):")
            print("children   seconds  per child (ms)  suspensions")
            for children in options.sequence:
                took, suspended = measure_sequence(pool, children)
                print(f"{children:>8} {took:>9.2f} {took / children * 1e3:>15.1f} {suspended:>12}")
    finally:
        pool.close()
        drop_schema(SCHEMA)


if __name__ == "__main__":
    main()
