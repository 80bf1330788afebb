"""Lesson 07's durable tasks: orders completed per second, and what one durable step costs.

    python -m benchmarks.durable_orders [--orders 2000] [--workers 1 2] [--slots 20]
        [--poll-intervals 0.01 0.05] [--runs 3]

What it measures, on lesson 07's own engine (its `worker_process`, its SQL):

- **orders per second.** N `process_order` tasks (the lesson's durable function:
  a `charge_payment` child, then a `send_confirmation_email` child, each writing
  its row) on W worker processes, each serving the `orders` and `order_steps`
  queues with S slots each. The workers are started and ready first; the N orders
  are then enqueued in one transaction, and the clock runs from its commit until
  a poll (every 20 ms) finds all N completed. Then it checks that every order was
  charged once and emailed once.
- **one durable step.** One durable task alone on one worker process, timed from
  inside its function (`time.perf_counter`), so neither the claim nor the result
  is counted: K calls of `ctx.call("noop", ...)` in a row, each a spawn
  transaction (child row and event), the child's claim, run and result, and the
  parent's poll that sees it; divided by K. And, for comparison, K calls of
  `ctx.run_step` with a no-op step: the event write alone (a fenced INSERT).

Each figure is the median of `--runs` runs, each on a fresh schema. Every figure
depends on the poll interval: an idle worker looks at its queue, and a waiting
parent at its child, once per interval, so a child round trip waits on average
about one interval. That is what lesson 08 (LISTEN/NOTIFY) removes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import psycopg

from lessons.common.database import DatabaseUnavailable, connect, drop_schema, reset_schema
from lessons.common.stats import median
from lessons.lesson07_durable_tasks.demo.tasks import ORDERS_QUEUE

from .harness.processes import put_repository_on_pythonpath
from .systems.lesson_orders import (
    LESSON07_SCHEMA_SQL,
    check_each_order_charged_and_emailed_once,
    completed_count,
    enqueue_orders,
    lesson07_workers,
)

SCHEMA = "bench_durable_orders"
# How often the benchmark looks whether everything is done.
DONE_POLL = 0.02


def wait_for_completed(
    conn: psycopg.Connection[Any], task_name: str, count: int, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while completed_count(conn, task_name) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} {task_name} tasks did not complete in {timeout} s")
        time.sleep(DONE_POLL)


def orders_per_second(orders: int, workers: int, slots: int, poll_interval: float) -> float:
    """One run: N orders on W workers; orders completed per second."""
    reset_schema(SCHEMA, LESSON07_SCHEMA_SQL)
    with (
        lesson07_workers(SCHEMA, processes=workers, slots=slots, poll_interval=poll_interval),
        connect(schema=SCHEMA) as conn,
    ):
        enqueue_orders(conn, orders)
        started = time.monotonic()
        wait_for_completed(conn, "process_order", orders, timeout=600)
        seconds = time.monotonic() - started
        check_each_order_charged_and_emailed_once(conn, orders)
    return orders / seconds


def seconds_per_call(task_name: str, calls: int, poll_interval: float) -> float:
    """One run: one durable task making `calls` calls in a row, on one worker alone."""
    reset_schema(SCHEMA, LESSON07_SCHEMA_SQL)
    with (
        lesson07_workers(SCHEMA, processes=1, slots=1, poll_interval=poll_interval),
        connect(schema=SCHEMA) as conn,
    ):
        conn.execute(
            "INSERT INTO tasks (queue, task_name, display_name, input, durable)"
            " VALUES (%s, %s, %s, jsonb_build_object('calls', %s::integer), true)",
            (ORDERS_QUEUE, task_name, task_name, calls),
        )
        wait_for_completed(conn, task_name, 1, timeout=600)
        row = conn.execute(
            "SELECT (output->>'seconds')::double precision FROM tasks WHERE task_name = %s",
            (task_name,),
        ).fetchone()
    if row is None:
        raise LookupError(f"the {task_name} task has no output")
    return float(row[0]) / calls


def describe_server() -> str:
    with connect() as conn:
        row = conn.execute("SELECT current_setting('server_version')").fetchone()
    return f"PostgreSQL {row[0] if row else '?'}, stock settings (autovacuum included)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], metavar="W")
    parser.add_argument("--slots", type=int, default=20, help="per queue, per worker process")
    parser.add_argument(
        "--poll-intervals", type=float, nargs="+", default=[0.01, 0.05], metavar="SECONDS"
    )
    parser.add_argument("--calls", type=int, default=50, help="calls per step-cost run")
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args(argv)
    put_repository_on_pythonpath()

    try:
        print(f"{describe_server()}; {os.cpu_count()} CPUs; median of {options.runs} runs")
    except DatabaseUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"\nOrders per second ({options.orders} orders, {options.slots} slots per queue):")
    print(f"  {'poll interval':>13}  {'workers':>7}  {'orders/s':>9}")
    for poll_interval in options.poll_intervals:
        for workers in options.workers:
            rates = [
                orders_per_second(options.orders, workers, options.slots, poll_interval)
                for _ in range(options.runs)
            ]
            print(f"  {poll_interval * 1000:>10g} ms  {workers:>7}  {median(rates):>9.0f}")

    print(f"\nOne durable operation, alone ({options.calls} in a row, one worker, one slot):")
    print(f"  {'poll interval':>13}  {'child task (ms)':>15}  {'step event (ms)':>15}")
    for poll_interval in options.poll_intervals:
        child = [
            seconds_per_call("call_noop_children", options.calls, poll_interval)
            for _ in range(options.runs)
        ]
        step = [
            seconds_per_call("run_noop_steps", options.calls, poll_interval)
            for _ in range(options.runs)
        ]
        print(
            f"  {poll_interval * 1000:>10g} ms  {median(child) * 1000:>15.1f}"
            f"  {median(step) * 1000:>15.2f}"
        )
    drop_schema(SCHEMA)
    return 0


if __name__ == "__main__":
    sys.exit(main())
