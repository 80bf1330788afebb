"""A Procrastinate worker process for the benchmarks (see `procrastinate_case`).

    python -m benchmarks.systems.peers.procrastinate_worker --schema bench_procrastinate
        --concurrency 10

It says ready, waits for go, then runs `--concurrency` jobs at once until the queue is
empty, and exits.
"""

from __future__ import annotations

import argparse
import asyncio

from .procrastinate_case import SCHEMA, work


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--schema", default=SCHEMA)
    parser.add_argument("--concurrency", type=int, default=10)
    options = parser.parse_args(argv)
    asyncio.run(work(options.schema, options.concurrency))


if __name__ == "__main__":
    main()
