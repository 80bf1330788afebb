"""Issue 21: where the time of a durable order goes, counted per order, lessons 09-15 and DBOS.

    python -m benchmarks.order_costs [--quick] [--orders 300] [--lessons ...] [--no-dbos]

An order is a durable task with two child tasks, one after the other (charge, then
email, a row each); DBOS's is the harness's workflow of two steps writing the same
rows. Each system runs N orders (`--orders`, 300; `--quick`, 30) from a fresh schema
(DBOS: a fresh database) on the same layout as `make bench-peers` (2 worker processes
x 20 slots; DBOS worker_concurrency 20, polled every 10 ms), on a throwaway server of
its own (`harness/counting_server.py`: pg_stat_statements and auto_explain preloaded, a
JSON log, autovacuum off), and reports per order:

- **transactions** (from the logged run below), **writing commits** (WAL
  `Transaction/COMMIT` records, pg_walinspect: the commits that flush the WAL) and
  **xact_commit** (`pg_stat_database`, less the watcher's polls: it counts empty
  transactions too, a connection's start and each statement psycopg prepares);
  **statements** (pg_stat_statements: top-level ones, each a round trip but a bounded
  transaction's BEGIN, sent with its limits in one message since issue 21, and nested
  ones: triggers', foreign keys' checks), with their executor time; **WAL** bytes,
  records by type and fsyncs (`pg_current_wal_lsn()`, `pg_stat_wal`, pg_walinspect,
  `pg_stat_io`); **notifications** (pg_notify calls: the rows of the statements that
  make them) and the **notifying transactions** (each takes NOTIFY's commit lock once,
  and holds it through its WAL flush); the **CPU** of the worker processes (enqueue to
  done) and of the server's backends; and the **time**: orders per second from the
  enqueue (DBOS: the first workflow's start) to the poll that finds all N done;
- net of an **idle run**: the same workers started on a fresh schema, left idle for as
  long as the orders took, and stopped (their start, heartbeats, fallback polls; DBOS's
  queue polls every 10 ms), whose totals are reported too;
- and, from a **logged run** of the same N orders (`log_statement = all`, auto_explain's
  nested statements), every transaction by kind: its statements, whether it wrote,
  whether it notified, and how many of it an order costs. For `--list` systems (lesson
  09, lesson 15 and DBOS by default) it prints the transactions of **one order** alone,
  in the order they began, with the workers idle before it.

The orders: lesson 09's own `process_order` (`systems/lesson_orders.py`); lessons 10, 11
and 13 the same order (`systems/scale_functions.py`: lesson 09's, with the lesson's own
children), since their demos' orders wait for a person's approval first and lesson 13's
has none; lesson 15 its own demo `process_order` (no approval: a charge with an
idempotency key, then the email), and lesson 09's order as "lesson 15 (09's order)".
Every figure is counted on the server; nothing is mocked, and the lessons run unchanged.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from typing import Protocol

import psutil  # type: ignore[import-untyped]

from lessons.common.database import connect, reset_schema

from .harness.counting_server import (
    WATCHER_ROLE,
    Counters,
    CountingServer,
    LogWindows,
    Transaction,
)
from .harness.durable_system import DurableLayout
from .harness.machine import library_versions, this_machine, this_server
from .harness.processes import put_repository_on_pythonpath, started_together
from .harness.vacuum import Vacuum
from .systems.lesson_engine import LessonEngine
from .systems.lesson_orders import (
    EngineOrders,
    LessonOrders,
    check_each_order_charged_and_emailed_once,
    completed_count,
    enqueue_orders,
)
from .systems.peers import dbos_case
from .systems.scale import POLL_INTERVAL

DEFAULT_LESSONS = (
    "lesson09_durable_sleep",
    "lesson10_durable_events",
    "lesson11_retries_replays_forks",
    "lesson13_cancellation_and_schedules",
    "lesson15_operating_at_scale",
)
# The lesson whose own demo order (two children, no approval) is measured as well.
OWN_ORDER_LESSON = "lesson15_operating_at_scale"
WORKLOAD_DATABASE = "postgres"
WATCH_INTERVAL = 0.01
# A run longer than this is stuck.
RUN_SECONDS = 300.0
# How long the workers of a one-order listing sit idle before it: what they do
# meanwhile is their background, left out of the listing.
LISTING_IDLE_SECONDS = 0.5


class OrderSystem(Protocol):
    """What a run needs of a system: its database, a fresh start, workers, orders, checks."""

    name: str
    database: str

    def fresh(self) -> AbstractContextManager[None]:
        """A fresh schema (DBOS: a fresh database, dropped after the block)."""
        ...

    def workers(self) -> AbstractContextManager[list[int]]:
        """Worker processes, started and idle: the block runs once each is ready; their pids."""
        ...

    def enqueue(self, orders: int) -> None:
        """`orders` orders, in one transaction."""
        ...

    @property
    def watched(self) -> tuple[str, str, str]:
        """(schema, SQL true while anything is unfinished, SQL of the first start)."""
        ...

    def check(self, orders: int) -> None: ...


class LessonSystem:
    """A lesson's workers on its orders (`LessonOrders`), counted in database `postgres`."""

    database = WORKLOAD_DATABASE

    def __init__(self, name: str, orders: LessonOrders, layout: DurableLayout) -> None:
        self.name = name
        self.orders = orders
        self.layout = layout

    @contextmanager
    def fresh(self) -> Iterator[None]:
        reset_schema(self.orders.schema, self.orders.schema_sql)
        with connect(schema=self.orders.schema) as conn:
            self.orders.complete_schema(conn)  # lesson 12's stand-in emails table
        yield

    def workers(self) -> AbstractContextManager[list[int]]:
        return self.orders.workers(self.layout)

    def enqueue(self, orders: int) -> None:
        with connect(schema=self.orders.schema) as conn:
            enqueue_orders(conn, orders)

    @property
    def watched(self) -> tuple[str, str, str]:
        # From the enqueue (its transaction's start), not from min(started_at) of the
        # parents, which each resume moves forward (benchmarks/README.md, lesson 15).
        first = "SELECT min(inserted_at) FROM tasks WHERE task_name = 'process_order'"
        return self.orders.schema, self.orders.unfinished_sql, first

    def check(self, orders: int) -> None:
        with connect(schema=self.orders.schema) as conn:
            check_each_order_charged_and_emailed_once(conn, orders)
            completed = completed_count(conn, "process_order")
        if completed != orders:
            raise AssertionError(f"{self.name}: {completed} of {orders} orders completed")


class OwnOrders(EngineOrders):
    """A later lesson's workers on its own demo `process_order` (lesson 15's: no approval)."""

    @contextmanager
    def workers(self, layout: DurableLayout) -> Iterator[list[int]]:
        workers = [
            self.engine.worker_process(
                schema=self.schema,
                queues=["orders"],
                functions=f"lessons.{self.engine.package}.demo.tasks",
                slots=layout.concurrency,
                poll_interval=POLL_INTERVAL,
                heartbeat_interval=1.0,
                inactivity_threshold=10.0,
                listen=True,
            )
            for _ in range(layout.processes)
        ]
        with started_together(workers):
            yield [worker.pid for worker in workers]


class DBOSSystem:
    """DBOS two-step workflows through its queue (`systems/peers/dbos_case.py`).

    Unlike `make bench-peers`, which enqueues before the workers launch, the workers
    launch first and the workflows are enqueued (one transaction) while they poll: as
    the lessons' orders are enqueued while their workers listen.
    """

    name = "DBOS 3.4 (queue)"
    database = dbos_case.DATABASE

    def __init__(self, layout: DurableLayout) -> None:
        self.layout = layout
        self.url = ""

    @contextmanager
    def fresh(self) -> Iterator[None]:
        with dbos_case.fresh_database(Vacuum.STOCK) as url:
            self.url = url
            # Registers the queue before any worker launches (it enqueues nothing).
            dbos_case._enqueue_many(url, 0, self.layout)
            yield

    @contextmanager
    def workers(self) -> Iterator[list[int]]:
        shares = [0] * self.layout.processes  # queue mode: they start nothing themselves
        with dbos_case._workers(self.url, dbos_case.QUEUE_MODE, self.layout, shares) as workers:
            for worker in workers:
                worker.go()
            yield [worker.pid for worker in workers]

    def enqueue(self, orders: int) -> None:
        dbos_case._enqueue_many(self.url, orders, self.layout)

    @property
    def watched(self) -> tuple[str, str, str]:
        return (
            dbos_case.SYSTEM_SCHEMA,
            # Nothing enqueued yet, or any workflow not done.
            "SELECT count(*) = 0 OR bool_or(status <> 'SUCCESS') FROM workflow_status",
            "SELECT to_timestamp(min(started_at_epoch_ms) / 1000.0) FROM workflow_status",
        )

    def check(self, orders: int) -> None:
        with connect(dbos_case._conninfo(), schema=dbos_case.SYSTEM_SCHEMA) as conn:
            dbos_case._check_each_workflow_ran_its_steps_once(conn, orders)


@dataclass(frozen=True)
class Run:
    orders: int
    counters: Counters  # commits less the watcher's own
    seconds: float  # on the database's clock, first start to done (0 for an idle run)
    busy_seconds: float  # on this machine's clock, enqueue to done
    worker_cpu_seconds: float  # the worker processes', enqueue to done


@dataclass(frozen=True)
class Costs:
    """A system's N orders, net of an idle run as long, and its logged run."""

    name: str
    run: Run
    idle: Run
    net: Counters
    logged: list[Transaction]

    def per_order(self, value: float) -> float:
        return value / self.run.orders


def measure(
    server: CountingServer,
    system: OrderSystem,
    orders: int,
    *,
    idle_seconds: float = 0.0,
    windows: LogWindows | None = None,
) -> tuple[Run, list[Transaction]]:
    """One run: `orders` orders, or none and the workers left idle for `idle_seconds`.

    The counters are read before the workers start and after every client of the
    database has exited (so each has flushed its statistics); with `windows`, the
    transactions from the enqueue to the end are read from the log too.
    """
    transactions: list[Transaction] = []
    with system.fresh():
        server.checkpoint()
        server.wait_for_no_backends(system.database)  # the fresh schema's connection's too
        before = server.read(system.database)
        schema, unfinished_sql, first_start_sql = system.watched
        watcher_url = server.url_of(system.database, WATCHER_ROLE)
        with system.workers() as pids, connect(watcher_url, schema=schema) as watcher:
            start = windows.open() if windows else ""
            cpu_before = _cpu_seconds(pids)
            started = time.monotonic()
            system.enqueue(orders)
            polls, ended_at = 0, None
            deadline = started + (idle_seconds if not orders else RUN_SECONDS)
            while time.monotonic() < deadline:
                row = watcher.execute(f"SELECT ({unfinished_sql}), clock_timestamp()").fetchone()
                polls += 1
                if orders and row is not None and not row[0]:
                    ended_at = row[1]
                    break
                time.sleep(WATCH_INTERVAL)
            busy_seconds = time.monotonic() - started
            worker_cpu_seconds = _cpu_seconds(pids) - cpu_before
            if orders and ended_at is None:
                raise TimeoutError(f"{system.name}: {orders} orders not done in {RUN_SECONDS} s")
            seconds = 0.0
            if orders:
                first = watcher.execute(first_start_sql).fetchone()
                polls += 1
                seconds = (ended_at - first[0]).total_seconds() if first and first[0] else 0.0
        server.wait_for_no_backends(system.database)
        after = server.read(system.database)
        if windows:
            transactions = windows.transactions(start, system.database)
            server.forget_log()
        counted = server.between(before, after)
        # Each of the watcher's polls is a transaction of its own in the same database.
        counters = replace(counted, commits=counted.commits - polls)
        if orders:
            system.check(orders)
    return Run(orders, counters, seconds, busy_seconds, worker_cpu_seconds), transactions


def _cpu_seconds(pids: Sequence[int]) -> float:
    """User and system CPU of the processes `pids` so far (each a worker, threads and all)."""
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def costs_of(server: CountingServer, system: OrderSystem, orders: int) -> Costs:
    run, _ = measure(server, system, orders)
    idle, _ = measure(server, system, 0, idle_seconds=run.busy_seconds)
    with server.logged() as windows:
        _, logged = measure(server, system, orders, windows=windows)
    return Costs(system.name, run, idle, run.counters.minus(idle.counters), logged)


@dataclass(frozen=True)
class OneOrder:
    """One order's transactions, and what the idle workers ran before it, by kind."""

    transactions: list[Transaction]
    seconds: float  # from the enqueue to the order's end
    background: Counter[str]  # by kind, in LISTING_IDLE_SECONDS of idle workers


def one_order(server: CountingServer, system: OrderSystem) -> OneOrder:
    """The transactions of one order, in the order they began.

    The workers start and sit idle for a moment (what they do then is their
    background); then one order runs. Every transaction from its enqueue to its end is
    listed, a kind the idle moment saw too marked with how many it saw: an empty claim
    after a notification looks like an idle worker's claim, but is the order's.
    """
    with server.logged() as windows, system.fresh():
        schema, unfinished_sql, _ = system.watched
        watcher_url = server.url_of(system.database, WATCHER_ROLE)
        with system.workers(), connect(watcher_url, schema=schema) as watcher:
            idle_start = windows.open()
            time.sleep(LISTING_IDLE_SECONDS)
            background = windows.transactions(idle_start, system.database)
            start = windows.open()
            started = time.monotonic()
            system.enqueue(1)
            deadline = started + RUN_SECONDS
            while time.monotonic() < deadline:
                row = watcher.execute(f"SELECT ({unfinished_sql})").fetchone()
                if row is not None and not row[0]:
                    break
                time.sleep(WATCH_INTERVAL)
            seconds = time.monotonic() - started
            transactions = windows.transactions(start, system.database)
        server.forget_log()
        system.check(1)
    return OneOrder(transactions, seconds, Counter(_kind(t) for t in background))


def _kind(transaction: Transaction) -> str:
    return transaction.shape + (" [writes]" if transaction.wrote else "")


# ---------------------------------------------------------------------------
# The report: markdown on stdout.
# ---------------------------------------------------------------------------


def summary_table(results: Sequence[Costs]) -> list[str]:
    lines = [
        "| system | orders/s | ms/order | transactions | writing commits | notifying "
        "| xact_commit | statements | nested | WAL bytes | WAL records | WAL fsyncs "
        "| pg_notify calls | worker CPU ms | server CPU ms | executor ms |",
        "|---|" + "---:|" * 15,
    ]
    for costs in results:
        net, per = costs.net, costs.per_order
        logged = costs.logged
        rate = costs.run.orders / costs.run.seconds if costs.run.seconds else 0.0
        worker_cpu = costs.run.worker_cpu_seconds - costs.idle.worker_cpu_seconds
        lines.append(
            f"| {costs.name} | {rate:,.0f} | {1000 / rate if rate else 0:.2f} "
            f"| {per(len(logged)):.2f} | {per(net.writing_commits):.2f} "
            f"| {per(sum(1 for t in logged if t.notifies)):.2f} "
            f"| {per(net.commits):.2f} "
            f"| {per(net.toplevel_statements):.1f} | {per(net.nested_statements):.1f} "
            f"| {per(net.wal_bytes):,.0f} | {per(net.wal_records):.1f} "
            f"| {per(net.wal_fsyncs):.2f} | {per(net.notifications):.2f} "
            f"| {per(worker_cpu * 1000):.2f} | {per(net.server_cpu_seconds * 1000):.2f} "
            f"| {per(net.exec_ms):.2f} |"
        )
    return lines


def idle_table(results: Sequence[Costs]) -> list[str]:
    lines = [
        "| system | idle run | xact_commit | writing commits | statements | WAL bytes "
        "| WAL fsyncs | worker CPU | server CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for costs in results:
        idle = costs.idle.counters
        lines.append(
            f"| {costs.name} | {costs.idle.busy_seconds:.2f} s | {idle.commits:,} "
            f"| {idle.writing_commits:,} | {idle.toplevel_statements:,} "
            f"| {idle.wal_bytes:,} | {idle.wal_fsyncs:,} "
            f"| {costs.idle.worker_cpu_seconds * 1000:,.0f} ms "
            f"| {idle.server_cpu_seconds * 1000:,.0f} ms |"
        )
    return lines


def transaction_kinds(costs: Costs, limit: int = 25) -> list[str]:
    """The logged run's transactions by kind, the most frequent first."""
    kinds: Counter[tuple[str, bool, bool, str]] = Counter()
    for transaction in costs.logged:
        nested = ", ".join(
            f"{label} x{count}" if count > 1 else label
            for label, count in sorted(Counter(transaction.nested_labels).items())
        )
        kinds[(transaction.shape, transaction.wrote, transaction.notifies, nested)] += 1
    per = costs.per_order
    lines = [
        f"**{costs.name}**: {per(len(costs.logged)):.2f} transactions per order in the logged "
        f"run, {per(sum(1 for t in costs.logged if t.wrote)):.2f} of them wrote, "
        f"{per(sum(1 for t in costs.logged if t.notifies)):.2f} notified",
        "",
        "| per order | writes | notifies | statements | nested (triggers, foreign keys) |",
        "|---:|---|---|---|---|",
    ]
    for (shape, wrote, notifies, nested), count in kinds.most_common(limit):
        lines.append(
            f"| {per(count):.2f} | {'yes' if wrote else ''} "
            f"| {'yes' if notifies else ''} | {shape} | {nested} |"
        )
    if len(kinds) > limit:
        rest = sum(count for _, count in kinds.most_common()[limit:])
        lines.append(f"| {per(rest):.2f} | | | ({len(kinds) - limit} more kinds) | |")
    return lines


def statement_table(server: CountingServer, costs: Costs, limit: int = 30) -> list[str]:
    """pg_stat_statements, net of the idle run: calls (and rows) per order of each statement."""
    lines = [
        f"**{costs.name}**: statements per order, net of the idle run",
        "",
        "| calls | rows | executor ms | level | statement |",
        "|---:|---:|---:|---|---|",
    ]
    counts = sorted(costs.net.statements.items(), key=lambda item: -item[1].calls)
    shown = [(key, count) for key, count in counts if abs(costs.per_order(count.calls)) >= 0.005]
    for _, count in shown[:limit]:
        lines.append(
            f"| {costs.per_order(count.calls):.2f} | {costs.per_order(count.rows):.2f} "
            f"| {costs.per_order(count.exec_ms):.3f} "
            f"| {'top' if count.toplevel else 'nested'} | {server.label(count)} |"
        )
    return lines


def wal_table(results: Sequence[Costs], limit: int = 12) -> list[str]:
    """WAL records per order by type (pg_walinspect), the largest counts first."""
    totals: Counter[str] = Counter()
    for costs in results:
        totals.update(costs.net.wal_record_types)
    kinds = [kind for kind, _ in totals.most_common(limit)]
    lines = [
        "| record type | " + " | ".join(costs.name for costs in results) + " |",
        "|---|" + "---:|" * len(results),
    ]
    for kind in kinds:
        cells = [
            f"{costs.per_order(costs.net.wal_record_types.get(kind, 0)):.2f}" for costs in results
        ]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return lines


def listing(name: str, order: OneOrder) -> list[str]:
    """One order's transactions in the order they began, a run of the same kind on one line.

    `backend n` is one connection (of any worker process); `[idle: k]` says the idle
    workers ran k of that kind in LISTING_IDLE_SECONDS before the order.
    """
    backends: dict[int, int] = {}
    runs: list[tuple[str, list[Transaction]]] = []
    for transaction in order.transactions:
        kind = _kind(transaction) + (" N" if transaction.notifies else "")
        if runs and runs[-1][0] == kind:
            runs[-1][1].append(transaction)
        else:
            runs.append((kind, [transaction]))
    lines = [
        f"**{name}**: one order ({order.seconds * 1000:.0f} ms from its enqueue to its end), "
        f"{len(order.transactions)} transactions",
        "",
    ]
    for number, (_, same) in enumerate(runs, start=1):
        first = same[0]
        numbers = sorted({backends.setdefault(t.pid, len(backends) + 1) for t in same})
        flags = [
            flag
            for flag, present in (
                ("writes", first.wrote),
                ("NOTIFIES", first.notifies),
                ("rolled back", first.rolled_back),
            )
            if present
        ]
        nested = ", ".join(first.nested_labels)
        idle = order.background.get(_kind(first), 0)
        lines.append(
            f"{number}. {f'{len(same)} x ' if len(same) > 1 else ''}"
            f"backend{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))} "
            f"[{', '.join(flags) or 'read-only'}]: {first.shape}"
            f"{f'  (nested: {nested})' if nested else ''}{f'  [idle: {idle}]' if idle else ''}"
        )
    return lines


def systems(options: argparse.Namespace, layout: DurableLayout) -> list[OrderSystem]:
    chosen: list[OrderSystem] = []
    for package in options.lessons:
        engine = LessonEngine.named(package)
        if package == OWN_ORDER_LESSON:
            chosen.append(LessonSystem(engine.title, OwnOrders(engine), layout))
            orders = EngineOrders(engine)
            chosen.append(LessonSystem(f"{engine.title} (09's order)", orders, layout))
            continue
        chosen.append(LessonSystem(engine.title, EngineOrders(engine), layout))
    if not options.no_dbos:
        chosen.append(DBOSSystem(layout))
    return chosen


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="30 orders (CI)")
    parser.add_argument("--orders", type=int, default=300)
    parser.add_argument("--lessons", nargs="*", default=list(DEFAULT_LESSONS))
    parser.add_argument("--no-dbos", action="store_true", help="the lessons only")
    parser.add_argument(
        "--list",
        nargs="*",
        default=["lesson 09", "lesson 15", DBOSSystem.name],
        help="systems whose one order is listed transaction by transaction",
    )
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--dbos-poll-interval", type=float, default=0.01)
    options = parser.parse_args(argv)
    orders = 30 if options.quick else options.orders
    layout = DurableLayout(options.processes, options.concurrency, options.dbos_poll_interval)
    put_repository_on_pythonpath()
    with CountingServer.started() as server:
        # Every connection from here on, the worker processes' included (they copy the
        # environment), goes to the counting server.
        os.environ["DATABASE_URL"] = server.url
        with connect() as conn:
            described = this_server(conn)
        print(f"Machine: {this_machine().describe()}")
        print(f"Server:  {described.describe()}, a throwaway one; {described.describe_settings()}")
        versions = library_versions("psycopg", "dbos")
        print(f"Libraries: {', '.join(f'{name} {version}' for name, version in versions.items())}")
        print(
            f"Layout: {layout.processes} worker processes x {layout.concurrency} slots "
            f"(DBOS: worker_concurrency {layout.concurrency}, queue polled every "
            f"{layout.poll_interval * 1000:g} ms); "
            f"{orders} orders a run",
            flush=True,
        )
        results = []
        for system in systems(options, layout):
            results.append(costs_of(server, system, orders))
            print(f"... {system.name} measured", flush=True)
        print()
        print(f"## Per order (N = {orders}, net of an idle run as long)")
        print()
        print("\n".join(summary_table(results)))
        for costs in results:
            print()
            print("\n".join(transaction_kinds(costs)))
        print()
        print("WAL records per order, by type (net of the idle run)")
        print()
        print("\n".join(wal_table(results)))
        print()
        print("The idle runs subtracted: the same workers, started, idle as long, stopped")
        print()
        print("\n".join(idle_table(results)))
        for costs in results:
            print()
            print("\n".join(statement_table(server, costs)))
        for system in systems(options, layout):
            if system.name in options.list:
                print()
                print("\n".join(listing(system.name, one_order(server, system))))


if __name__ == "__main__":
    main()
