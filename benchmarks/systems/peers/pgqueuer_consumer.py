"""A PgQueuer consumer process for the benchmarks (see `pgqueuer_case`).

    python -m benchmarks.systems.peers.pgqueuer_consumer --schema bench_pgqueuer --batch 10
        [--consumers 1] [--drain]

It runs `--consumers` queue managers on one asyncio event loop (uvloop, as PgQueuer's
own command line does), each with a connection of its own, says ready, waits for go,
then dequeues `--batch` jobs at a time: until the queue is empty with `--drain`, else
until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from datetime import timedelta

from ...harness.processes import wait_for_go
from ..noop import TASK_NAME
from .pgqueuer_case import SCHEMA, connect_async


async def _noop(job: object) -> None:
    """The job: nothing (PgQueuer passes the Job)."""
    return None


async def _consume(schema: str, batch: int, consumers: int, drain: bool) -> None:
    from pgqueuer import Queries, QueueManager  # type: ignore[import-not-found, unused-ignore]
    from pgqueuer.types import QueueExecutionMode  # type: ignore[import-not-found, unused-ignore]

    managers = []
    for _ in range(consumers):
        manager = QueueManager(Queries.from_psycopg_connection(await connect_async(schema)))

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
