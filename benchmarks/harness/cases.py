"""The cases a plan runs: burn-down, latency under a steady producer, durable work.

A case measures one system in one layout, once per call of `measure`, and adds what
it found to its row. The burn-down and latency cases take any `QueueSystem`, the
durable case any `DurableSystem`; the pgbench ceiling's case is pgbench's own
(`systems/pgbench.py`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg

from lessons.common.database import connect
from lessons.common.stats import percentile

from .durable_system import DurableLayout, DurableSystem
from .measure import BurnDown, latencies, watch_burn_down
from .processes import ChildProcess, started_together
from .queue_system import Layout, QueueSystem
from .rows import Row
from .vacuum import Vacuum

ALL_PASSES = frozenset(Vacuum)
# The kind of the durable rows, which the report's comparisons match on.
DURABLE = "durable"

# The producer process of the latency case, which runs a system's `produce()`.
PRODUCER = f"{__package__}.producer"


class Case(Protocol):
    @property
    def passes(self) -> frozenset[Vacuum]:
        """The vacuum passes this case runs in."""
        ...

    def row(self, vacuum: Vacuum) -> Row: ...

    def measure(self, vacuum: Vacuum, row: Row) -> str:
        """Run once, add the result to `row`, and return it in a few words."""
        ...


@dataclass(frozen=True)
class BurnDownCase:
    system: QueueSystem
    tasks: int
    layout: Layout
    label: str = "burn-down"
    passes: frozenset[Vacuum] = ALL_PASSES
    # Fewer runs than the plan's, if set (`plan.runs_of`): a memory case's figures are a
    # peak and a growth, which one long run gives.
    most_runs: int | None = None

    def row(self, vacuum: Vacuum) -> Row:
        return Row(
            system=self.system.name,
            case=f"{self.label} {self.tasks:,}",
            settings=self.system.settings(self.layout),
            vacuum=vacuum,
            kind=self.label,
            batch=self.layout.batch,
        )

    def measure(self, vacuum: Vacuum, row: Row) -> str:
        result = burn_down(self.system, tasks=self.tasks, layout=self.layout, vacuum=vacuum)
        row.rates.append(result.rate)
        row.peaks.append(result.memory.peak_bytes)
        row.growths.append(result.memory.growth_bytes())
        return f"{result.rate:,.0f} tasks/s"


@dataclass(frozen=True)
class LatencyCase:
    system: QueueSystem
    rate: float
    seconds: float
    layout: Layout
    passes: frozenset[Vacuum] = ALL_PASSES

    def row(self, vacuum: Vacuum) -> Row:
        return Row(
            system=self.system.name,
            case=f"latency at {self.rate:g}/s",
            settings=self.system.settings(self.layout),
            vacuum=vacuum,
            kind="latency",
            batch=self.layout.batch,
        )

    def measure(self, vacuum: Vacuum, row: Row) -> str:
        result = latency(
            self.system, rate=self.rate, seconds=self.seconds, layout=self.layout, vacuum=vacuum
        )
        row.p50s.append(result.p50)
        row.p99s.append(result.p99)
        return (
            f"p50 {result.p50 * 1000:.1f} ms, p99 {result.p99 * 1000:.1f} ms ({result.tasks} tasks)"
        )


@dataclass(frozen=True)
class DurableCase:
    system: DurableSystem
    orders: int
    layout: DurableLayout
    passes: frozenset[Vacuum] = ALL_PASSES

    def row(self, vacuum: Vacuum) -> Row:
        return Row(
            system=self.system.name,
            case=f"{self.system.unit} {self.orders:,}",
            settings=self.system.settings(self.layout),
            vacuum=vacuum,
            kind=DURABLE,
        )

    def measure(self, vacuum: Vacuum, row: Row) -> str:
        result = self.system.run(self.orders, self.layout, vacuum)
        row.rates.append(result.rate)
        row.peaks.append(result.memory.peak_bytes)
        row.growths.append(result.memory.growth_bytes())
        return f"{result.rate:,.0f} {self.system.unit}/s"


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
