"""The course's durable orders, lessons 07 to 15: their workers, the orders, the checks.

An order is a durable task, `process_order`, that spawns a `charge_payment` child
task, waits for it, then a `send_confirmation_email` child, and waits for that (each
child writes its row, keyed by its order). Each lesson's workers run unchanged, in
processes started by the lesson's own `WorkerProcess`.

- Lessons 07 and 08 run their own `process_order` (`Lesson07Orders`, `Lesson08Orders`).
- Lessons 09 to 15 are one class, `EngineOrders`, parameterised by the lesson's engine
  (`lesson_engine.py`): the lesson's own worker processes and children, and one order,
  lesson 09's `process_order` (`scale_functions.py`), the same for every lesson. The
  lessons' own orders differ from 10 on (10, 11 and 14 wait for a person's approval,
  13's shop has a checkout instead, 15's passes idempotency keys), so each lesson runs
  the same work and the regression table compares engines, not shops. Lesson 12's shop
  has no email: its workers get a stand-in (lesson 13's, a row keyed by the order, in
  a table the benchmark adds to the schema).

The clock starts at the enqueue's commit (`enqueue_orders`), the moment the waiting
workers may start: not at `min(started_at)` of the parents once they are done, since
from lesson 09 on a parent's `started_at` is its latest claim, which each resume moves.

Each lesson is a `DurableSystem` (`harness/durable_system.py`), listed in
`compare.course_durable_systems()`. Lesson 07's own benchmark
(`benchmarks/durable_orders.py`) uses the same workers, orders and checks, and lesson
15's (`scale_growth.py`) the same `EngineOrders`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from lessons.common.database import REPOSITORY_ROOT, connect, reset_schema
from lessons.lesson07_durable_tasks.demo.tasks import (
    ORDER_STEPS_QUEUE as LESSON07_ORDER_STEPS_QUEUE,
)
from lessons.lesson07_durable_tasks.demo.tasks import ORDERS_QUEUE as LESSON07_ORDERS_QUEUE
from lessons.lesson07_durable_tasks.tools.worker_process import (
    WorkerProcess as Lesson07WorkerProcess,
)
from lessons.lesson08_listen_notify.demo.tasks import (
    ORDER_STEPS_QUEUE as LESSON08_ORDER_STEPS_QUEUE,
)
from lessons.lesson08_listen_notify.demo.tasks import ORDERS_QUEUE as LESSON08_ORDERS_QUEUE
from lessons.lesson08_listen_notify.tools.worker_process import (
    WorkerProcess as Lesson08WorkerProcess,
)

from ..harness.durable_system import DurableLayout
from ..harness.measure import BurnDown, watch_burn_down
from ..harness.processes import started_together
from ..harness.vacuum import Vacuum, apply_vacuum
from .lesson04 import UNFINISHED_SQL
from .lesson07_functions import LESSON07_FUNCTIONS
from .lesson08 import POLL_INTERVAL as LESSON08_POLL_INTERVAL
from .lesson08 import SCHEMA_SQL as LESSON08_SCHEMA_SQL
from .lesson_engine import LESSON_VARIABLE, STAND_IN_EMAILS_SQL, LessonEngine

LESSONS_DIRECTORY = REPOSITORY_ROOT / "lessons"
LESSON07_SCHEMA_SQL = LESSONS_DIRECTORY / "lesson07_durable_tasks" / "sql" / "schema.sql"
# Long heartbeats: nothing dies here, and sweeps should not weigh on the figures.
HEARTBEAT_INTERVAL = 1.0
INACTIVITY_THRESHOLD = 10.0
# What the worker processes of lessons 09 on get as `--functions` (it reads the lesson
# from LESSON_VARIABLE): lesson 09's order, with the lesson's own children.
ENGINE_FUNCTIONS = f"{__package__}.scale_functions"
# From lesson 09 on, one queue for parents and children (a waiting parent gives its slot back).
ENGINE_ORDERS_QUEUE = "orders"
# From lesson 09 on, a parent waiting for its child, or woken and not yet claimed
# again, is suspended: unfinished too.
UNFINISHED_OR_SUSPENDED_SQL = (
    f"{UNFINISHED_SQL} OR EXISTS (SELECT FROM tasks WHERE status = 'suspended')"
)


def enqueue_orders(conn: psycopg.Connection[Any], orders: int) -> datetime:
    """`orders` process_order tasks, the rows enqueue() would write, in one transaction.

    Enqueueing is not what is measured, so it skips the client's round trip per order.
    (The queue is lesson 07's `orders`, whose name every later lesson keeps.) Returns
    `clock_timestamp()` read as the transaction's last statement: no worker can see an
    order before the commit that follows it, so the clock that starts there includes
    the commit and the workers' wake-up, and no resume moves it.
    """
    with conn.transaction():
        conn.execute(
            "INSERT INTO tasks (queue, task_name, display_name, input, durable)"
            " SELECT %(queue)s, 'process_order', 'process_order',"
            "  jsonb_build_object('order_id', 'B-' || n, 'card', '4242',"
            "   'amount_cents', 4200, 'email', 'bench@example.com'), true"
            " FROM generate_series(1, %(orders)s) AS n",
            {"queue": LESSON07_ORDERS_QUEUE, "orders": orders},
        )
        row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    started: datetime = row[0]
    return started


def completed_count(conn: psycopg.Connection[Any], task_name: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM tasks WHERE task_name = %s AND status = 'completed'", (task_name,)
    ).fetchone()
    return int(row[0]) if row else 0


def check_each_order_charged_and_emailed_once(conn: psycopg.Connection[Any], orders: int) -> None:
    for table in ("charges", "emails"):
        count_rows = sql.SQL("SELECT count(*), count(DISTINCT order_id) FROM {}")
        row = conn.execute(count_rows.format(sql.Identifier(table))).fetchone()
        if row != (orders, orders):
            raise AssertionError(f"{table}: {row}, expected {orders} rows for {orders} orders")


@contextmanager
def lesson07_workers(
    schema: str, *, processes: int, slots: int, poll_interval: float
) -> Iterator[list[Lesson07WorkerProcess]]:
    """Lesson 07's worker processes, each serving both queues with `slots` slots each.

    They start at the same time; the block runs once every one of them is polling.
    """
    workers = [
        Lesson07WorkerProcess(
            schema=schema,
            queues=[LESSON07_ORDERS_QUEUE, LESSON07_ORDER_STEPS_QUEUE],
            functions=LESSON07_FUNCTIONS,
            slots=slots,
            poll_interval=poll_interval,
            heartbeat_interval=HEARTBEAT_INTERVAL,
            inactivity_threshold=INACTIVITY_THRESHOLD,
        )
        for _ in range(processes)
    ]
    with started_together(workers):
        yield workers


class LessonOrders:
    """A lesson's own workers running an order; subclasses start them."""

    name: str
    unit = "orders"
    schema: str
    schema_sql: Path
    # The tables every order writes and updates: its tasks, and the parents' histories.
    queue_tables = ("tasks", "task_events")
    # Nothing queued or running is left: a parent runs until both its children are done.
    unfinished_sql = UNFINISHED_SQL

    def settings(self, layout: DurableLayout) -> str:
        raise NotImplementedError

    def workers(self, layout: DurableLayout) -> AbstractContextManager[list[int]]:
        """Worker processes serving the orders and their children; yields their pids."""
        raise NotImplementedError

    def complete_schema(self, conn: psycopg.Connection[Any]) -> None:
        """Add what the lesson's schema lacks for the orders: nothing, unless overridden."""

    def run(self, orders: int, layout: DurableLayout, vacuum: Vacuum) -> BurnDown:
        reset_schema(self.schema, self.schema_sql)
        with connect(schema=self.schema) as conn:
            self.complete_schema(conn)
            apply_vacuum(conn, self.queue_tables, vacuum)
        with self.workers(layout) as pids, connect(schema=self.schema) as conn:
            go = enqueue_orders(conn, orders)
            result = watch_burn_down(
                conn,
                tasks=orders,
                unfinished_sql=self.unfinished_sql,
                started_at=go,
                consumer_pids=pids,
            )
            check_each_order_charged_and_emailed_once(conn, orders)
            completed = completed_count(conn, "process_order")
            if completed != orders:
                raise AssertionError(f"{completed} of {orders} orders completed")
        return result


class Lesson07Orders(LessonOrders):
    """Lesson 07's workers, unchanged: `worker_process --queue orders --queue order_steps`.

    Idle workers, and parents waiting for a child, poll every `poll_interval`.
    """

    name = "lesson 07"
    schema = "bench_durable"
    schema_sql = LESSON07_SCHEMA_SQL

    def settings(self, layout: DurableLayout) -> str:
        return (
            f"{_processes(layout)} x {layout.concurrency} slots per queue "
            f"(orders, order_steps), poll {layout.poll_interval * 1000:g} ms"
        )

    @contextmanager
    def workers(self, layout: DurableLayout) -> Iterator[list[int]]:
        with lesson07_workers(
            self.schema,
            processes=layout.processes,
            slots=layout.concurrency,
            poll_interval=layout.poll_interval,
        ) as workers:
            yield [worker.pid for worker in workers]


class Lesson08Orders(LessonOrders):
    """Lesson 08's workers, unchanged: new tasks and finished children wake them by NOTIFY.

    They poll only as a fallback, at the lesson's default interval (5 s), whatever
    the layout's poll interval (which is lesson 07's and DBOS's).
    """

    name = "lesson 08"
    schema = "bench_durable_notify"
    schema_sql = LESSON08_SCHEMA_SQL

    def settings(self, layout: DurableLayout) -> str:
        return (
            f"{_processes(layout)} x {layout.concurrency} slots per queue "
            f"(orders, order_steps), LISTEN/NOTIFY, fallback poll {LESSON08_POLL_INTERVAL:g} s"
        )

    @contextmanager
    def workers(self, layout: DurableLayout) -> Iterator[list[int]]:
        # No `functions`: the WorkerProcess default, the lesson's own tasks module.
        workers = [
            Lesson08WorkerProcess(
                schema=self.schema,
                queues=[LESSON08_ORDERS_QUEUE, LESSON08_ORDER_STEPS_QUEUE],
                slots=layout.concurrency,
                poll_interval=LESSON08_POLL_INTERVAL,
                listen=True,
            )
            for _ in range(layout.processes)
        ]
        with started_together(workers):
            yield [worker.pid for worker in workers]


class EngineOrders(LessonOrders):
    """Lesson 09's order run by a lesson from 09 on: its engine, its worker processes.

    A parent waiting for its child is suspended and gives its slot back, and the
    child's end makes it runnable again; so parents and children share one queue,
    `orders`, and each worker process has `concurrency` slots in all (lessons 07 and
    08 have that many per queue, for parents and for children). Woken by NOTIFY,
    polling every 5 s as the fallback, as in lesson 08.
    """

    unfinished_sql = UNFINISHED_OR_SUSPENDED_SQL

    def __init__(self, engine: LessonEngine, *, schema: str | None = None) -> None:
        self.engine = engine
        self.name = engine.title
        self.schema = schema or f"bench_durable_lesson{engine.number}"
        self.schema_sql = engine.schema_sql
        missing = engine.missing_order_children()
        if missing not in ([], ["send_confirmation_email"]):
            raise ValueError(f"{engine.title}'s shop has no {' nor '.join(missing)}")

    def settings(self, layout: DurableLayout) -> str:
        stand_in = "; stand-in email" if self.engine.missing_order_children() else ""
        return (
            f"{_processes(layout)} x {layout.concurrency} slots (one queue; a waiting parent "
            f"is suspended), LISTEN/NOTIFY, fallback poll {LESSON08_POLL_INTERVAL:g} s{stand_in}"
        )

    def complete_schema(self, conn: psycopg.Connection[Any]) -> None:
        if self.engine.missing_order_children():
            conn.execute(STAND_IN_EMAILS_SQL)

    @contextmanager
    def workers(self, layout: DurableLayout) -> Iterator[list[int]]:
        workers = [
            self.engine.worker_process(
                schema=self.schema,
                queues=[ENGINE_ORDERS_QUEUE],
                functions=ENGINE_FUNCTIONS,
                slots=layout.concurrency,
                poll_interval=LESSON08_POLL_INTERVAL,
                heartbeat_interval=HEARTBEAT_INTERVAL,
                inactivity_threshold=INACTIVITY_THRESHOLD,
                listen=True,
                environment={LESSON_VARIABLE: self.engine.package},
            )
            for _ in range(layout.processes)
        ]
        with started_together(workers):
            yield [worker.pid for worker in workers]


def _processes(layout: DurableLayout) -> str:
    return f"{layout.processes} worker process{'es' if layout.processes > 1 else ''}"
