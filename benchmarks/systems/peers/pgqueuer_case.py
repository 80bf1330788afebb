"""PgQueuer, with its psycopg driver, as the benchmarks drive it.

Each consumer process runs `consumers` PgQueuer queue managers on one asyncio event
loop (uvloop, as PgQueuer's own command line does), each manager with a connection of
its own, dequeueing `batch` jobs at a time. The job is an async no-op: PgQueuer's
entrypoints are coroutines. For a burn-down the managers run in PgQueuer's *drain*
mode, which exits once the queue is empty; for the latency case they run until
stopped.

PgQueuer is imported only inside the functions here and in `pgqueuer_consumer`
(the consumer processes), and this module only when a comparison runs, so the
course's own benchmarks need none of it installed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from lessons.common.database import connect, database_url

from ...harness.pacing import steady
from ...harness.processes import ChildProcess, started_together, wait_for_go
from ...harness.queue_system import Layout
from ...harness.vacuum import Vacuum, apply_vacuum
from ..noop import TASK_NAME

SCHEMA = "bench_pgqueuer"
# The consumer processes' entry point.
CONSUMER = f"{__package__}.pgqueuer_consumer"


class PgQueuerSystem:
    """PgQueuer (psycopg driver): `layout.processes` processes x `consumers` managers each."""

    schema = SCHEMA
    queue_tables = ("pgqueuer",)
    # Completed jobs are deleted from the queue table (and logged in pgqueuer_log).
    # Each EXISTS reads one of PgQueuer's partial indexes.
    unfinished_sql = (
        "SELECT EXISTS (SELECT FROM pgqueuer WHERE status = 'queued')"
        " OR EXISTS (SELECT FROM pgqueuer WHERE status = 'picked')"
    )
    # pgqueuer_log gets a row when a job is enqueued, one when it is picked, and one
    # when it ends, each stamped with now() of the statement's transaction.
    first_start_sql = "SELECT min(created) FROM pgqueuer_log WHERE status = 'picked'"
    latency_sql = (
        "SELECT extract(epoch FROM picked.created - queued.created)"
        " FROM pgqueuer_log AS queued JOIN pgqueuer_log AS picked USING (job_id)"
        " WHERE queued.status = 'queued' AND picked.status = 'picked'"
    )
    producer = __name__

    def __init__(self, consumers_per_process: int = 1) -> None:
        self.consumers_per_process = consumers_per_process
        self.name = "PgQueuer"
        if consumers_per_process > 1:
            self.name += f" ({consumers_per_process} consumers in 1 process)"

    def settings(self, layout: Layout) -> str:
        plural = "es" if layout.processes > 1 else ""
        consumers = (
            f" x {self.consumers_per_process} consumers" if self.consumers_per_process > 1 else ""
        )
        return f"{layout.processes} process{plural}{consumers}, batch {layout.batch}, psycopg"

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
        with self._consumers(layout, drain=True) as processes:
            for process in processes:
                process.go()
            yield [process.pid for process in processes]

    @contextmanager
    def serving(self, layout: Layout) -> Iterator[list[int]]:
        with self._consumers(layout, drain=False) as processes:
            for process in processes:
                process.go()
            yield [process.pid for process in processes]

    @contextmanager
    def _consumers(self, layout: Layout, *, drain: bool) -> Iterator[list[ChildProcess]]:
        processes = [
            ChildProcess(
                CONSUMER,
                f"--schema={SCHEMA}",
                f"--batch={layout.batch}",
                f"--consumers={self.consumers_per_process}",
                *(["--drain"] if drain else []),
            )
            for _ in range(layout.processes)
        ]
        with started_together(processes):
            yield processes


async def connect_async(schema: str = SCHEMA) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(
        database_url(), autocommit=True, options=f"-c search_path={schema}"
    )


async def _install() -> None:
    from pgqueuer import Queries  # type: ignore[import-not-found, unused-ignore]

    async with await connect_async() as conn:
        await Queries.from_psycopg_connection(conn).install()


async def _enqueue_many(count: int) -> None:
    """Enqueue `count` jobs with PgQueuer's own batch enqueue: one statement."""
    from pgqueuer import Queries  # type: ignore[import-not-found, unused-ignore]

    async with await connect_async() as conn:
        await Queries.from_psycopg_connection(conn).enqueue(
            [TASK_NAME] * count, [None] * count, [0] * count
        )


def produce(schema: str, rate: float, seconds: float) -> float:
    """The producer process's side (`harness/producer.py`): `Queries.enqueue`, one job a call."""
    from pgqueuer import Queries  # type: ignore[import-not-found, unused-ignore]

    async def run() -> float:
        async with await connect_async(schema) as conn:
            queries = Queries.from_psycopg_connection(conn)
            await asyncio.get_running_loop().run_in_executor(None, wait_for_go)
            loop = asyncio.get_running_loop()
            # The producer is paced in a thread; each enqueue runs on the event loop.
            return await loop.run_in_executor(
                None,
                steady,
                rate,
                seconds,
                lambda: asyncio.run_coroutine_threadsafe(
                    queries.enqueue(TASK_NAME, None), loop
                ).result(),
            )

    return asyncio.run(run())
