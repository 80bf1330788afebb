"""Lesson 15: operating a Postgres engine at scale: a year in a minute.

    python lessons/lesson15_operating_at_scale/main.py [-v]

A shop runs for a year, on a compressed clock (a month is a second): orders
flow in all year, two worker processes run them, and a subscription renews
every month. The retention policy keeps what has finished for two months.
Task ids are cut into ranges of about a month of tasks, each with its
partitions of tasks, histories and waits. Every month the engine's tables
are counted, and they stay flat: a range whose tasks have all been finished
for two months is detached and dropped whole, while orders keep coming. The
subscription's history would grow by two events a month; it continues as new
every five renewals instead, as a chain of tasks, and the range it started
in, pinned meanwhile, is cleaned row by row. Checked at the end: every order
was charged and emailed once, none was removed before it finished, every
renewal was charged once across the chain, ranges were dropped, and the
tables stayed bounded.
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import ExitStack
from functools import partial
from itertools import pairwise
from typing import Any

# A Python without the course installed (`make install` puts it in .venv) would stop at
# the imports below with "No module named 'lessons'": say what to run instead.
try:
    import lessons.common.cli  # noqa: F401
except ModuleNotFoundError:
    print(
        f"error: this Python ({sys.executable}) does not have the course installed: run "
        "`make install`, then `.venv/bin/python "
        "lessons/lesson15_operating_at_scale/main.py`.",
        file=sys.stderr,
    )
    sys.exit(2)

from psycopg_pool import ConnectionPool

from lessons.common.cli import Checks, Lesson, argument_parser, configure_logging, run_lesson
from lessons.common.cli import wait_until as wait_for
from lessons.lesson15_operating_at_scale.db.models import TaskStatus
from lessons.lesson15_operating_at_scale.db.queries import CountEngineRowsRow, Querier
from lessons.lesson15_operating_at_scale.demo.tasks import renewal_id
from lessons.lesson15_operating_at_scale.engine.client import (
    enqueue,
    set_partitioning,
    set_retention,
)
from lessons.lesson15_operating_at_scale.tools.worker_process import WorkerProcess

LESSON = Lesson.of(__file__)

# The compressed clock: a month is a second.
MONTH = 1.0
MONTHS = 12
# The retention policy: what has finished is kept two months.
KEEP_FINISHED_FOR = 2 * MONTH
ORDERS_PER_MONTH = 30
# A range of task ids: about a month of tasks (an order is three).
PARTITION_SIZE = 60
# Each renewal is two events (its sleep, its charge): ten events, five renewals.
HISTORY_LIMIT = 10
RENEWALS = MONTHS

SLOTS = 8
POLL_INTERVAL = 0.2
HEARTBEAT_INTERVAL = 0.1
INACTIVITY_THRESHOLD = 1.0
RETENTION_INTERVAL = 0.25


def worker_process() -> WorkerProcess:
    return WorkerProcess(
        schema=LESSON.schema,
        slots=SLOTS,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
        retention_interval=RETENTION_INTERVAL,
        history_limit=HISTORY_LIMIT,
    )


def passed(moment: float) -> bool:
    return time.monotonic() >= moment


def engine_rows(pool: ConnectionPool) -> CountEngineRowsRow:
    with pool.connection() as conn:
        counted = Querier(conn).count_engine_rows()
    if counted is None:  # a SELECT without FROM always returns its row
        raise RuntimeError("no counts")
    return counted


def range_starts(pool: ConnectionPool) -> set[int]:
    """The first ids of the ranges of task ids there are now."""
    with pool.connection() as conn:
        return {task_range.first_id for task_range in Querier(conn).list_partitions()}


class Shop:
    """Orders at a steady rate, on a thread of their own, for the whole year."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.order_ids: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._take_orders, name="shop")

    def __enter__(self) -> Shop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _take_orders(self) -> None:
        interval = MONTH / ORDERS_PER_MONTH
        with self.pool.connection() as conn:
            while not self._stop.wait(interval):
                order_id = f"O-{len(self.order_ids) + 1:04}"
                enqueue(
                    conn,
                    "process_order",
                    {"order_id": order_id, "amount_cents": 1900},
                    durable=True,
                )
                self.order_ids.append(order_id)


def demonstrate() -> bool:
    checks = Checks()
    LESSON.reset()
    with LESSON.pool(max_size=4) as pool, ExitStack() as stack:
        with pool.connection() as conn:
            # Archived: the subscription's chain is read from the archive at the end.
            set_retention(conn, keep_finished_for=KEEP_FINISHED_FOR, archive=True)
            set_partitioning(conn, partition_size=PARTITION_SIZE)
            first_subscription = enqueue(
                conn,
                "subscription",
                {
                    "subscription": "S-1",
                    "renewals": 0,
                    "renewals_wanted": RENEWALS,
                    "period_seconds": MONTH,
                    "amount_cents": 990,
                },
                durable=True,
            )
        workers = [stack.enter_context(worker_process()) for _ in range(2)]
        for process in workers:
            process.start()
        print(
            f"\nA year in {MONTHS * MONTH:.0f} s: a month is {MONTH:.0f} s, "
            f"what has finished is kept {KEEP_FINISHED_FOR / MONTH:.0f} months, "
            f"a range is {PARTITION_SIZE} task ids."
        )
        print(
            f"  {'month':>5}  {'orders':>6}  {'tasks':>5}  {'events':>6}  {'waits':>5}  "
            f"{'ranges':>6}  {'dropped':>7}"
        )
        samples: list[CountEngineRowsRow] = []
        ranges_seen = range_starts(pool)
        with Shop(pool) as shop:
            started = time.monotonic()
            for month in range(1, MONTHS + 1):
                month_ends_at = started + month * MONTH
                wait_for(partial(passed, month_ends_at), f"month {month}", timeout=2 * MONTH)
                counted = engine_rows(pool)
                samples.append(counted)
                present = range_starts(pool)
                ranges_seen |= present
                print(
                    f"  {month:>5}  {len(shop.order_ids):>6}  {counted.tasks:>5}  "
                    f"{counted.task_events:>6}  {counted.event_waits:>5}  "
                    f"{counted.ranges:>6}  {len(ranges_seen - present):>7}"
                )
        orders = list(shop.order_ids)
        with pool.connection() as conn:
            queries = Querier(conn)

            def emailed() -> set[str]:
                return {email.order_id for email in queries.list_emails()}

            wait_for(lambda: emailed() >= set(orders), "the last orders", timeout=30)
            wait_for(
                lambda: subscription_chain(queries)[-1]["status"] == TaskStatus.COMPLETED,
                "the subscription's last renewal",
                timeout=30,
            )
            chain = subscription_chain(queries)
            archived = len(queries.list_archived_tasks())
            charges = [charge.order_id for charge in queries.list_charges()]
            emails = [email.order_id for email in queries.list_emails()]
        range_starts_at_end = range_starts(pool)
        for process in workers:
            process.stop()

    renewals = [renewal_id("S-1", n) for n in range(1, RENEWALS + 1)]
    most_tasks = max(sample.tasks for sample in samples[2:])
    # An order is a tree of three tasks; at most the orders of the kept months,
    # of the month going on, and a month more (in flight, or waiting for a pass
    # late on a busy machine) are there at once; and two ranges: a range goes
    # whole, only once its newest task is past the period, and a range kept
    # for a neighbour's history waits for that neighbour.
    bound = 3 * ORDERS_PER_MONTH * (KEEP_FINISHED_FOR / MONTH + 2) + 2 * PARTITION_SIZE
    print(f"\n  {len(orders)} orders; at most {most_tasks} task rows after month 2.")
    dropped = len(ranges_seen - range_starts_at_end)
    print(
        f"  {len(ranges_seen)} ranges of task ids were made, {dropped} dropped whole; "
        f"{archived} finished tasks archived, then removed."
    )
    print("  The subscription, task by task (from the tasks table and the archive):")
    for task in chain:
        print(
            f"    task {task['id']}: renewals {task['input']['renewals']} on, "
            f"{task['status']}, continued as {task['continued_as_task_id']}"
        )
    checks.check(
        sorted(emails) == sorted(orders) and all(charges.count(o) == 1 for o in orders),
        f"every one of the {len(orders)} orders was charged once and emailed once",
    )
    checks.check(
        all(sample.tasks <= bound for sample in samples[2:]),
        f"the tasks table stayed under {bound:.0f} rows while orders kept coming",
        str([sample.tasks for sample in samples]),
    )
    checks.check(
        samples[-1].tasks < len(orders) * 3 / 2,
        "retention removed finished orders: the table holds far fewer than were run",
        f"{samples[-1].tasks} rows for {len(orders)} orders",
    )
    checks.check(
        dropped >= MONTHS // 4,
        f"retention dropped ranges whole, by their partitions ({dropped} of {len(ranges_seen)})",
        f"{dropped} dropped",
    )
    checks.check(
        [c for c in charges if c.startswith("S-1/")] == renewals,
        f"the subscription charged each of its {RENEWALS} renewals once, in order",
        str([c for c in charges if c.startswith("S-1/")]),
    )
    per_task = HISTORY_LIMIT // 2
    checks.check(
        chain[0]["id"] == first_subscription
        and [task["input"]["renewals"] for task in chain] == list(range(0, RENEWALS, per_task))
        and all(
            later["continued_from_task_id"] == earlier["id"] for earlier, later in pairwise(chain)
        )
        and chain[-1]["output"]["renewals"] == RENEWALS,
        f"it continued as new every {per_task} renewals, carrying its state over",
        str(chain),
    )
    return checks.passed


def subscription_chain(queries: Querier) -> list[dict[str, Any]]:
    """The subscription's tasks in order, as JSON: those still in the tasks table, and
    those retention archived.

    The tasks table first: retention may remove a task between the two reads,
    and it archives it in the same transaction, so the archive, read second,
    has it. (Read the other way round, a task removed in between is in neither.)
    """
    present = {
        task.id: {
            "id": task.id,
            "task_name": task.task_name,
            "status": task.status,
            "input": task.input,
            "output": task.output,
            "continued_from_task_id": task.continued_from_task_id,
            "continued_as_task_id": task.continued_as_task_id,
        }
        for task in queries.list_tasks()
    }
    archived = {row.task_id: row.task for row in queries.list_archived_tasks()}
    tasks = {**archived, **present}
    return [
        tasks[task_id] for task_id in sorted(tasks) if tasks[task_id]["task_name"] == "subscription"
    ]


if __name__ == "__main__":
    parser = argument_parser(__doc__ or "")
    configure_logging(parser.parse_args().verbose)
    run_lesson(demonstrate)
