"""The measurements every system gets: a burn-down, and latency under a steady producer."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg

from lessons.common.database import connect
from lessons.common.stats import percentile

from .measure import BurnDown, latencies, watch_burn_down
from .processes import ChildProcess, started_together
from .systems import Layout, QueueSystem
from .vacuum import Vacuum

# The producer process of the latency case, which runs a system's `produce()`.
PRODUCER = f"{__package__}.producer"


def burn_down(system: QueueSystem, *, tasks: int, layout: Layout, vacuum: Vacuum) -> BurnDown:
    """Drain `tasks` pre-enqueued no-op tasks from a fresh schema."""
    system.prepare(vacuum)
    with system.draining(tasks, layout) as pids, connect(schema=system.schema) as conn:
        return watch_burn_down(
            conn,
            tasks=tasks,
            unfinished_sql=system.unfinished_sql,
            first_start_sql=system.first_start_sql,
            consumer_pids=pids,
        )


@dataclass(frozen=True)
class Latency:
    rate: float  # what the producer achieved, tasks per second
    tasks: int
    p50: float  # seconds
    p99: float


def latency(
    system: QueueSystem, *, rate: float, seconds: float, layout: Layout, vacuum: Vacuum
) -> Latency:
    """Enqueue-to-start latency of tasks enqueued at a steady rate by a separate process."""
    system.prepare(vacuum)
    producer = ChildProcess(
        PRODUCER,
        f"--system={system.producer}",
        f"--schema={system.schema}",
        f"--rate={rate}",
        f"--seconds={seconds}",
    )
    with system.serving(layout), started_together([producer]):
        producer.go()
        achieved = float(producer.read_line(timeout=seconds * 3 + 30) or "nan")
        producer.wait(timeout=30)
        with connect(schema=system.schema) as conn:
            _wait_until_finished(conn, system.unfinished_sql)
            waits = latencies(conn, system.latency_sql)
    return Latency(
        rate=achieved, tasks=len(waits), p50=percentile(waits, 0.5), p99=percentile(waits, 0.99)
    )


def _wait_until_finished(
    conn: psycopg.Connection[Any], unfinished_sql: str, timeout: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute(unfinished_sql).fetchone()
        if row is None or not row[0]:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"tasks were still unfinished {timeout} s after the producer ended")
        time.sleep(0.05)
