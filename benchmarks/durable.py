"""Case 3, durable work: orders per second of the course's durable tasks, as a plan's case.

An order is lesson 07's `process_order`: a durable task that spawns a
`charge_payment` child task, waits for it, then a `send_confirmation_email` child,
and waits for that (each child writes its row, keyed by its task id). The peer's
equivalent is a DBOS workflow of two steps (`benchmarks/peers/dbos_case.py`).

Every system runs the same way: `processes` worker processes, each running at most
`concurrency` orders (or workflows) at once, start on a fresh schema (DBOS: a fresh
database); N orders are already enqueued, or, for a system that starts its work
directly, are started by the workers themselves; the rate runs from the first
order's start, as the system records it, to the moment a poll finds all N done,
both on the database's clock (`measure.watch_burn_down`).

Lesson 09's workers (a parent waiting for its child gives its slot back) become one
more `DurableSystem` here, listed in `compare.course_durable_systems()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from lessons.common.database import connect

from . import durable_orders, lesson04
from .measure import BurnDown, watch_burn_down
from .plan import ALL_PASSES
from .report import Row
from .vacuum import Vacuum, apply_vacuum

KIND = "durable"


@dataclass(frozen=True)
class DurableLayout:
    """Worker processes, how many orders each runs at once, and how often idle ones poll.

    For the course's workers `concurrency` is the slots of each of the two queues
    (orders, order_steps) of a worker process; for DBOS, the workflows a process
    runs at once (its queue's `worker_concurrency`, or as many starting threads).
    """

    processes: int
    concurrency: int
    poll_interval: float


class DurableSystem(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def unit(self) -> str:
        """What it completes: "orders" or "workflows"."""
        ...

    def settings(self, layout: DurableLayout) -> str: ...

    def run(self, orders: int, layout: DurableLayout, vacuum: Vacuum) -> BurnDown:
        """Complete `orders` orders from a fresh schema (or database); check each one."""
        ...


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
            kind=KIND,
        )

    def measure(self, vacuum: Vacuum, row: Row) -> str:
        result = self.system.run(self.orders, self.layout, vacuum)
        row.rates.append(result.rate)
        row.peaks.append(result.memory.peak_bytes)
        row.growths.append(result.memory.growth_bytes())
        return f"{result.rate:,.0f} {self.system.unit}/s"


class Lesson07Orders:
    """Lesson 07's workers, unchanged: `worker_process --queue orders --queue order_steps`."""

    name = "lesson 07"
    unit = "orders"
    schema = "bench_durable"
    # The tables every order writes and updates: its tasks, and the parents' histories.
    queue_tables = ("tasks", "task_events")
    # Nothing queued or running is left: a parent runs until both its children are done.
    unfinished_sql = lesson04.UNFINISHED_SQL
    first_start_sql = "SELECT min(started_at) FROM tasks WHERE task_name = 'process_order'"

    def settings(self, layout: DurableLayout) -> str:
        plural = "es" if layout.processes > 1 else ""
        return (
            f"{layout.processes} worker process{plural} x {layout.concurrency} slots per queue "
            f"(orders, order_steps), poll {layout.poll_interval * 1000:g} ms"
        )

    def run(self, orders: int, layout: DurableLayout, vacuum: Vacuum) -> BurnDown:
        durable_orders.reset_orders_schema(self.schema)
        with connect(schema=self.schema) as conn:
            apply_vacuum(conn, self.queue_tables, vacuum)
        with (
            durable_orders.worker_processes(
                layout.processes,
                slots=layout.concurrency,
                poll_interval=layout.poll_interval,
                schema=self.schema,
                reset=False,
            ) as workers,
            connect(schema=self.schema) as conn,
        ):
            durable_orders.enqueue_orders(conn, orders)
            result = watch_burn_down(
                conn,
                tasks=orders,
                unfinished_sql=self.unfinished_sql,
                first_start_sql=self.first_start_sql,
                consumer_pids=[worker.pid for worker in workers],
            )
            durable_orders.check_each_order_charged_and_emailed_once(conn, orders)
            completed = durable_orders.completed_count(conn, "process_order")
            if completed != orders:
                raise AssertionError(f"{completed} of {orders} orders completed")
        return result
