"""Procrastinate, as the benchmarks drive it: one worker process, `concurrency` jobs at once.

The worker runs with `wait=False`, Procrastinate's way of draining: it stops once it
has caught up with the queue. The job is an async no-op task. Procrastinate fetches
one job per statement (its `procrastinate_fetch_job_v2` function), so its concurrency
is not a batch size: it is how many jobs run at once.

Procrastinate is imported only inside the functions here, which the worker
processes (`procrastinate_worker`) run too. (The worker's entry point is a module of
its own so that Procrastinate's App is never created in `__main__`, which
Procrastinate warns about.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from psycopg import sql

from lessons.common.database import connect, database_url

from ...harness.processes import ChildProcess, started_together, wait_for_go
from ...harness.queue_system import Layout
from ...harness.vacuum import Vacuum, apply_vacuum
from ..noop import TASK_NAME

SCHEMA = "bench_procrastinate"
QUEUE = "bench"
# The worker processes' entry point.
WORKER = f"{__package__}.procrastinate_worker"


class ProcrastinateSystem:
    """Procrastinate (psycopg connector): `processes` workers of concurrency `batch` each."""

    name = "Procrastinate"
    schema = SCHEMA
    queue_tables = ("procrastinate_jobs",)
    unfinished_sql = (
        "SELECT EXISTS (SELECT FROM procrastinate_jobs WHERE status IN ('todo', 'doing'))"
    )
    # Triggers write an event per status change, stamped with now().
    first_start_sql = "SELECT min(at) FROM procrastinate_events WHERE type = 'started'"
    latency_sql = (
        "SELECT extract(epoch FROM started.at - deferred.at)"
        " FROM procrastinate_events AS deferred JOIN procrastinate_events AS started"
        " USING (job_id) WHERE deferred.type = 'deferred' AND started.type = 'started'"
    )
    # No produce() here: the latency case leaves Procrastinate out (see `serving`).
    producer = __name__

    def settings(self, layout: Layout) -> str:
        plural = "es" if layout.processes > 1 else ""
        return f"{layout.processes} worker process{plural}, concurrency {layout.batch}"

    def prepare(self, vacuum: Vacuum) -> None:
        with connect() as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
        asyncio.run(_install())
        with connect(schema=SCHEMA) as conn:
            apply_vacuum(conn, self.queue_tables, vacuum)

    @contextmanager
    def draining(self, tasks: int, layout: Layout) -> Iterator[list[int]]:
        asyncio.run(_enqueue_many(tasks))
        processes = [
            ChildProcess(
                WORKER,
                f"--schema={SCHEMA}",
                f"--concurrency={layout.batch}",
            )
            for _ in range(layout.processes)
        ]
        with started_together(processes):
            for process in processes:
                process.go()
            yield [process.pid for process in processes]

    @contextmanager
    def serving(self, layout: Layout) -> Iterator[list[int]]:
        raise NotImplementedError("the latency case does not include Procrastinate")
        yield []


async def _noop() -> None:
    """The job: nothing."""
    return None


def _app(schema: str = SCHEMA) -> Any:
    import procrastinate  # type: ignore[import-not-found, unused-ignore]

    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(
            conninfo=database_url(), kwargs={"options": f"-c search_path={schema}"}
        )
    )

    app.task(name=TASK_NAME, queue=QUEUE)(_noop)
    return app


async def _install() -> None:
    async with _app().open_async() as app:
        await app.schema_manager.apply_schema_async()


async def _enqueue_many(count: int) -> None:
    """Defer `count` jobs with Procrastinate's batch defer: one statement."""
    async with _app().open_async() as app:
        await app.tasks[TASK_NAME].batch_defer_async(*({} for _ in range(count)))


async def work(schema: str, concurrency: int) -> None:
    """A worker that waits for go, then drains the queue and returns."""
    async with _app(schema).open_async() as app:
        await asyncio.get_running_loop().run_in_executor(None, wait_for_go)
        await app.run_worker_async(queues=[QUEUE], concurrency=concurrency, wait=False)
