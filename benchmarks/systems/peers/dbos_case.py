"""DBOS Transact 3.4: the course's order as a workflow of two steps, queued or started directly.

The peer of the course's durable orders (`systems/lesson_orders.py`): a workflow
(`@DBOS.workflow`) that calls two steps (`@DBOS.step`), a charge and an email, each
writing one row keyed by its workflow (`INSERT ... ON CONFLICT DO NOTHING`, on a
connection of its own), as each of the course's two children writes one row keyed by
its task. So both sides do the same work, and each workflow also checkpoints its
start, each step's output, and its own result in DBOS's system database.

DBOS wants a system database of its own: each run creates a fresh database on the
same server (`bench_dbos`), lets DBOS create its tables there (`DBOS.migrate`), adds
the shop's two tables, and drops it afterwards.

Two ways to start the work, each on `processes` worker processes (each a DBOS
application with an `executor_id` of its own):

- **queue**: the benchmark registers a queue (`worker_concurrency` = the layout's
  concurrency, polled every `poll_interval`) and enqueues the N workflows in one
  transaction (`DBOSClient.enqueue_in_transaction`), as the course's orders are
  enqueued in one statement; the workers then launch and dequeue them.
- **direct**: each worker process launches, then starts its share of the N workflows
  itself with `DBOS.start_workflow` from `concurrency` threads, each thread starting
  one workflow and waiting for its result before the next: `concurrency` in flight.

DBOS is imported only inside the functions here and in `dbos_worker` (the worker
processes), and this module only when a comparison runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from lessons.common.database import connect, database_url

from ...harness.durable_system import DurableLayout
from ...harness.measure import BurnDown, watch_burn_down
from ...harness.processes import ChildProcess, started_together
from ...harness.vacuum import Vacuum, apply_vacuum

DATABASE = "bench_dbos"
SYSTEM_SCHEMA = "dbos"
APPLICATION = "bench"
# A fixed version, the same in every worker process, so that each may run any workflow.
APPLICATION_VERSION = "bench"
QUEUE = "orders"
WORKFLOW = "two_steps"
QUEUE_MODE = "queue"
DIRECT_MODE = "direct"
# The tables each workflow writes: its status row (claimed, then finished), its steps.
QUEUE_TABLES = ("workflow_status", "operation_outputs")
# The shop's tables, in the same database (schema public), and the steps' writes: one
# row an order and step, as the course's children write.
SHOP_SQL = """
CREATE TABLE public.charges (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id text NOT NULL,
    workflow_id text NOT NULL UNIQUE,
    charged_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE public.emails (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id text NOT NULL,
    workflow_id text NOT NULL UNIQUE,
    sent_at timestamptz NOT NULL DEFAULT now()
);
"""
RECORD_CHARGE_SQL = (
    "INSERT INTO public.charges (order_id, workflow_id) VALUES (%(order_id)s, %(workflow_id)s)"
    " ON CONFLICT (workflow_id) DO NOTHING"
)
RECORD_EMAIL_SQL = (
    "INSERT INTO public.emails (order_id, workflow_id) VALUES (%(order_id)s, %(workflow_id)s)"
    " ON CONFLICT (workflow_id) DO NOTHING"
)
# The worker processes' entry point.
WORKER = f"{__package__}.dbos_worker"


class DBOSWorkflows:
    """DBOS two-step workflows, `mode` "queue" (enqueued, then dequeued) or "direct"."""

    unit = "workflows"

    def __init__(self, mode: str) -> None:
        if mode not in (QUEUE_MODE, DIRECT_MODE):
            raise ValueError(f"mode is {QUEUE_MODE!r} or {DIRECT_MODE!r}, not {mode!r}")
        self.mode = mode
        self.name = "DBOS (queue)" if mode == QUEUE_MODE else "DBOS (started directly)"

    def settings(self, layout: DurableLayout) -> str:
        plural = "es" if layout.processes > 1 else ""
        if self.mode == QUEUE_MODE:
            how = (
                f"worker_concurrency {layout.concurrency}, "
                f"queue poll {layout.poll_interval * 1000:g} ms"
            )
        else:
            how = f"{layout.concurrency} threads each calling DBOS.start_workflow"
        return f"{layout.processes} process{plural} x {how}; 2 steps, a row each"

    def run(self, orders: int, layout: DurableLayout, vacuum: Vacuum) -> BurnDown:
        with fresh_database(vacuum) as url:
            if self.mode == QUEUE_MODE:
                _enqueue_many(url, orders, layout)
            shares = _shares(orders, layout.processes)
            with _workers(url, self.mode, layout, shares) as processes:
                for process in processes:
                    process.go()
                with connect(_conninfo(), schema=SYSTEM_SCHEMA) as conn:
                    result = watch_burn_down(
                        conn,
                        tasks=orders,
                        unfinished_sql=(
                            "SELECT count(*) < "
                            f"{int(orders)} FROM workflow_status WHERE status = 'SUCCESS'"
                        ),
                        # Stamped once each, on the database's clock: at the dequeue
                        # (ENQUEUED to PENDING), or by the row's insert (`created_at`
                        # defaults to now()); DBOS 3.4 re-stamps them only on a cancel,
                        # resume or recovery, none of which a run does. So unlike the
                        # lessons' `started_at`, no later update moves the first of them.
                        first_start_sql=(
                            "SELECT to_timestamp(min(started_at_epoch_ms) / 1000.0)"
                            " FROM workflow_status"
                            if self.mode == QUEUE_MODE
                            else "SELECT to_timestamp(min(created_at) / 1000.0)"
                            " FROM workflow_status"
                        ),
                        consumer_pids=[process.pid for process in processes],
                        timeout=60 + orders / 10,
                    )
                    _check_each_workflow_ran_its_steps_once(conn, orders)
        return result


def _shares(orders: int, processes: int) -> list[int]:
    """How many workflows each process starts itself (direct mode)."""
    return [
        orders // processes + (1 if index < orders % processes else 0) for index in range(processes)
    ]


def _conninfo() -> str:
    """The benchmark's database server, database `bench_dbos` (libpq form, for psycopg)."""
    return make_conninfo(database_url(), dbname=DATABASE)


def system_database_url() -> str:
    """The same, as the SQLAlchemy URL DBOS takes (psycopg driver)."""
    import sqlalchemy  # type: ignore[import-not-found, unused-ignore]

    params = {key: str(value) for key, value in conninfo_to_dict(database_url()).items() if value}
    host = params.get("host")
    # A Unix socket directory goes in the query string, as libpq's host parameter.
    on_socket = host is not None and host.startswith("/")
    url = sqlalchemy.engine.URL.create(
        "postgresql+psycopg",
        username=params.get("user"),
        password=params.get("password"),
        host=None if on_socket else host,
        port=int(params["port"]) if "port" in params else None,
        database=DATABASE,
        query={"host": host} if on_socket and host else {},
    )
    return str(url.render_as_string(hide_password=False))


@contextmanager
def fresh_database(vacuum: Vacuum) -> Iterator[str]:
    """Create `bench_dbos` (dropping any left over), DBOS's tables in it; drop it after."""
    from dbos import DBOS  # type: ignore[import-not-found, unused-ignore]

    _drop_database()
    with connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    try:
        url = system_database_url()
        DBOS.migrate(url, schema=SYSTEM_SCHEMA)
        with connect(_conninfo(), schema=SYSTEM_SCHEMA) as conn:
            apply_vacuum(conn, QUEUE_TABLES, vacuum)
            conn.execute(SHOP_SQL)
        yield url
    finally:
        _drop_database()


def _drop_database() -> None:
    with connect() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE))
        )


def _enqueue_many(url: str, count: int, layout: DurableLayout) -> None:
    """Register the queue, and enqueue `count` workflows on it in one transaction."""
    import sqlalchemy  # type: ignore[import-not-found, unused-ignore]
    from dbos import DBOSClient, EnqueueOptions  # type: ignore[import-not-found, unused-ignore]

    client = DBOSClient(system_database_url=url, application_name=APPLICATION)
    engine = sqlalchemy.create_engine(url)
    try:
        client.register_queue(
            QUEUE,
            worker_concurrency=layout.concurrency,
            polling_interval_sec=layout.poll_interval,
            application_name=APPLICATION,
        )
        options: EnqueueOptions = {
            "queue_name": QUEUE,
            "workflow_name": WORKFLOW,
            "app_version": APPLICATION_VERSION,
        }
        with engine.begin() as conn:
            for number in range(count):
                client.enqueue_in_transaction(conn, options, number)
    finally:
        engine.dispose()
        client.destroy()


@contextmanager
def _workers(
    url: str, mode: str, layout: DurableLayout, shares: list[int]
) -> Iterator[list[ChildProcess]]:
    processes = [
        ChildProcess(
            WORKER,
            f"--url={url}",
            f"--conninfo={_conninfo()}",
            f"--mode={mode}",
            f"--executor-id=bench-{index}",
            f"--concurrency={layout.concurrency}",
            f"--workflows={share}",
        )
        for index, share in enumerate(shares)
    ]
    with started_together(processes):
        yield processes


def _check_each_workflow_ran_its_steps_once(conn: Any, workflows: int) -> None:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM workflow_status WHERE status = 'SUCCESS'),"
        " (SELECT count(*) FROM operation_outputs),"
        " (SELECT count(DISTINCT (workflow_uuid, function_id)) FROM operation_outputs),"
        # One row a workflow (workflow_id is unique): charged and emailed once each.
        " (SELECT count(*) FROM public.charges),"
        " (SELECT count(*) FROM public.emails)"
    ).fetchone()
    expected = (workflows, 2 * workflows, 2 * workflows, workflows, workflows)
    if tuple(row) != expected:
        raise AssertionError(
            "(workflows succeeded, step outputs, distinct steps, workflows charged, "
            f"workflows emailed) = {tuple(row)}, expected {expected}"
        )
