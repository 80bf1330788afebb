"""PgQueuer, with its psycopg driver, as the benchmarks drive it.

Each consumer process runs `consumers` PgQueuer queue managers on one asyncio event
loop (uvloop, as PgQueuer's own command line does), each manager with a connection of
its own, dequeueing `batch` jobs at a time. The job is an async no-op: PgQueuer's
entrypoints are coroutines. For a burn-down the managers run in PgQueuer's *drain*
mode, which exits once the queue is empty; for the latency case they run until
stopped.

PgQueuer is imported only inside the functions here, and this module only when a
comparison runs, so the course's own benchmarks need none of it installed.

    python -m benchmarks.peers.pgqueuer_case --schema bench_pgqueuer --batch 10 [--drain]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql

from lessons.common.database import connect, database_url

from ..noop import TASK_NAME
from ..processes import ChildProcess, started_together, wait_for_go
from ..producer import steady
from ..systems import Layout
from ..vacuum import Vacuum, apply_vacuum

SCHEMA = "bench_pgqueuer"


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
    producer = "pgqueuer"

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
                __name__,
                f"--schema={SCHEMA}",
                f"--batch={layout.batch}",
                f"--consumers={self.consumers_per_process}",
                *(["--drain"] if drain else []),
            )
            for _ in range(layout.processes)
        ]
        with started_together(processes):
            yield processes


async def _connect(schema: str = SCHEMA) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(
        database_url(), autocommit=True, options=f"-c search_path={schema}"
    )


async def _install() -> None:
    from pgqueuer import Queries  # type: ignore[import-not-found, unused-ignore]

    async with await _connect() as conn:
        await Queries.from_psycopg_connection(conn).install()


async def _enqueue_many(count: int) -> None:
    """Enqueue `count` jobs with PgQueuer's own batch enqueue: one statement."""
    from pgqueuer import Queries  # type: ignore[import-not-found, unused-ignore]

    async with await _connect() as conn:
        await Queries.from_psycopg_connection(conn).enqueue(
            [TASK_NAME] * count, [None] * count, [0] * count
        )


def produce(schema: str, rate: float, seconds: float) -> float:
    """The producer's side (`benchmarks.producer --system pgqueuer`): one job per call."""
    from pgqueuer import Queries  # type: ignore[import-not-found, unused-ignore]

    async def run() -> float:
        async with await _connect(schema) as conn:
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


async def _noop(job: object) -> None:
    """The job: nothing (PgQueuer passes the Job)."""
    return None


async def _consume(schema: str, batch: int, consumers: int, drain: bool) -> None:
    from pgqueuer import Queries, QueueManager  # type: ignore[import-not-found, unused-ignore]
    from pgqueuer.types import QueueExecutionMode  # type: ignore[import-not-found, unused-ignore]

    managers = []
    for _ in range(consumers):
        manager = QueueManager(Queries.from_psycopg_connection(await _connect(schema)))

        manager.entrypoint(TASK_NAME)(_noop)
        managers.append(manager)

    def shut_down() -> None:
        for manager in managers:
            manager.shutdown.set()

    loop = asyncio.get_running_loop()
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(stop_signal, shut_down)
    await loop.run_in_executor(None, wait_for_go)
    mode = QueueExecutionMode.drain if drain else QueueExecutionMode.continuous
    await asyncio.gather(
        *(
            manager.run(batch_size=batch, mode=mode, dequeue_timeout=timedelta(seconds=30))
            for manager in managers
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--schema", default=SCHEMA)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--consumers", type=int, default=1, help="queue managers per process")
    parser.add_argument("--drain", action="store_true", help="exit once the queue is empty")
    options = parser.parse_args(argv)
    coroutine = _consume(options.schema, options.batch, options.consumers, options.drain)
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]

        uvloop.run(coroutine)
    except ImportError:
        asyncio.run(coroutine)


if __name__ == "__main__":
    main()
