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

Lessons 07, 08 and 09 are `LessonOrders` here, listed in
`compare.course_durable_systems()`; a later lesson's workers join the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import lessons.lesson09_durable_sleep as lesson09
from lessons.common.database import connect, reset_schema
from lessons.lesson08_listen_notify.demo.tasks import ORDER_STEPS_QUEUE, ORDERS_QUEUE
from lessons.lesson09_durable_sleep.demo.tasks import ORDERS_QUEUE as LESSON09_ORDERS_QUEUE
from lessons.lesson09_durable_sleep.tools.worker_process import (
    WorkerProcess as Lesson09WorkerProcess,
)

from . import durable_orders, lesson04, lesson08
from .measure import BurnDown, watch_burn_down
from .plan import ALL_PASSES
from .processes import start_together
from .report import Row
from .vacuum import Vacuum, apply_vacuum

KIND = "durable"
# Each lesson's own process_order, charge_payment and send_confirmation_email.
LESSON08_TASKS = "lessons.lesson08_listen_notify.demo.tasks"
LESSON09_TASKS = "lessons.lesson09_durable_sleep.demo.tasks"
LESSON09_DIRECTORY = Path(lesson09.__file__).resolve().parent


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


class LessonOrders:
    """A lesson's own workers running its own `process_order`; subclasses start them."""

    name: str
    unit = "orders"
    schema: str
    # The tables every order writes and updates: its tasks, and the parents' histories.
    queue_tables = ("tasks", "task_events")
    # Nothing queued or running is left: a parent runs until both its children are done.
    unfinished_sql = lesson04.UNFINISHED_SQL
    first_start_sql = "SELECT min(started_at) FROM tasks WHERE task_name = 'process_order'"

    def settings(self, layout: DurableLayout) -> str:
        raise NotImplementedError

    def reset_schema(self) -> None:
        raise NotImplementedError

    def workers(self, layout: DurableLayout) -> AbstractContextManager[list[int]]:
        """Worker processes serving the orders and order_steps queues; yields their pids."""
        raise NotImplementedError

    def run(self, orders: int, layout: DurableLayout, vacuum: Vacuum) -> BurnDown:
        self.reset_schema()
        with connect(schema=self.schema) as conn:
            apply_vacuum(conn, self.queue_tables, vacuum)
        with self.workers(layout) as pids, connect(schema=self.schema) as conn:
            durable_orders.enqueue_orders(conn, orders)
            result = watch_burn_down(
                conn,
                tasks=orders,
                unfinished_sql=self.unfinished_sql,
                first_start_sql=self.first_start_sql,
                consumer_pids=pids,
            )
            durable_orders.check_each_order_charged_and_emailed_once(conn, orders)
            completed = durable_orders.completed_count(conn, "process_order")
            if completed != orders:
                raise AssertionError(f"{completed} of {orders} orders completed")
        return result


class Lesson07Orders(LessonOrders):
    """Lesson 07's workers, unchanged: `worker_process --queue orders --queue order_steps`.

    Idle workers, and parents waiting for a child, poll every `poll_interval`.
    """

    name = "lesson 07"
    schema = "bench_durable"

    def settings(self, layout: DurableLayout) -> str:
        return (
            f"{_processes(layout)} x {layout.concurrency} slots per queue "
            f"(orders, order_steps), poll {layout.poll_interval * 1000:g} ms"
        )

    def reset_schema(self) -> None:
        durable_orders.reset_orders_schema(self.schema)

    @contextmanager
    def workers(self, layout: DurableLayout) -> Iterator[list[int]]:
        with durable_orders.worker_processes(
            layout.processes,
            slots=layout.concurrency,
            poll_interval=layout.poll_interval,
            schema=self.schema,
            reset=False,
        ) as workers:
            yield [worker.pid for worker in workers]


class Lesson08Orders(LessonOrders):
    """Lesson 08's workers, unchanged: new tasks and finished children wake them by NOTIFY.

    They poll only as a fallback, at the lesson's default interval (5 s), whatever
    the layout's poll interval (which is lesson 07's and DBOS's).
    """

    name = "lesson 08"
    schema = "bench_durable_notify"

    def settings(self, layout: DurableLayout) -> str:
        return (
            f"{_processes(layout)} x {layout.concurrency} slots per queue "
            f"(orders, order_steps), LISTEN/NOTIFY, fallback poll {lesson08.POLL_INTERVAL:g} s"
        )

    def reset_schema(self) -> None:
        reset_schema(self.schema, lesson08.SCHEMA_SQL)

    @contextmanager
    def workers(self, layout: DurableLayout) -> Iterator[list[int]]:
        with lesson08.worker_processes(
            self.schema,
            queues=[ORDERS_QUEUE, ORDER_STEPS_QUEUE],
            functions=LESSON08_TASKS,
            processes=layout.processes,
            slots=layout.concurrency,
        ) as workers:
            yield [worker.pid for worker in workers]


class Lesson09Orders(LessonOrders):
    """Lesson 09's workers, unchanged: a parent waiting for its child is suspended.

    It gives its slot back while it waits, and the child's end makes it runnable
    again; so parents and children share one queue, `orders`, and each worker
    process has `concurrency` slots in all (lessons 07 and 08 have that many per
    queue, for parents and for children). Woken by NOTIFY, polling every 5 s as the
    fallback, as in lesson 08.
    """

    name = "lesson 09"
    schema = "bench_durable_suspend"
    # A parent waiting for its child, or woken and not yet claimed again, is suspended.
    unfinished_sql = (
        f"{lesson04.UNFINISHED_SQL} OR EXISTS (SELECT FROM tasks WHERE status = 'suspended')"
    )

    def settings(self, layout: DurableLayout) -> str:
        return (
            f"{_processes(layout)} x {layout.concurrency} slots (one queue; a waiting parent "
            f"is suspended), LISTEN/NOTIFY, fallback poll {lesson08.POLL_INTERVAL:g} s"
        )

    def reset_schema(self) -> None:
        reset_schema(self.schema, LESSON09_DIRECTORY / "sql" / "schema.sql")

    @contextmanager
    def workers(self, layout: DurableLayout) -> Iterator[list[int]]:
        with ExitStack() as stack:
            workers = [
                stack.enter_context(
                    Lesson09WorkerProcess(
                        schema=self.schema,
                        queues=[LESSON09_ORDERS_QUEUE],
                        functions=LESSON09_TASKS,
                        slots=layout.concurrency,
                        poll_interval=lesson08.POLL_INTERVAL,
                        listen=True,
                    )
                )
                for _ in range(layout.processes)
            ]
            start_together([worker.start for worker in workers])
            try:
                yield [worker.pid for worker in workers]
            finally:
                for worker in workers:
                    worker.stop()


def _processes(layout: DurableLayout) -> str:
    return f"{layout.processes} worker process{'es' if layout.processes > 1 else ''}"
