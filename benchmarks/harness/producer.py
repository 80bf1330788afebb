"""A producer process that enqueues no-op tasks at a steady rate, one task per transaction.

    python -m benchmarks.harness.producer --system benchmarks.systems.lesson04
        --schema bench_queue --rate 500 --seconds 8

It enqueues the way an application would: each task in its own call and its own
transaction, through the system's client API (lessons 04's and 08's `enqueue()`,
PgQueuer's `Queries.enqueue`). `--system` names the system's module
(`QueueSystem.producer`), as `--functions` names a worker's task module: its
`produce(schema, rate, seconds)` connects, says ready, waits for go, enqueues at the
rate (`pacing.steady`) and returns the rate it achieved, which this process prints as
its last line.
"""

from __future__ import annotations

import argparse
import importlib


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--system", required=True, help="module with a produce() function")
    parser.add_argument("--schema", required=True)
    parser.add_argument("--rate", type=float, required=True, help="tasks per second")
    parser.add_argument("--seconds", type=float, required=True)
    options = parser.parse_args(argv)
    system = importlib.import_module(options.system)
    achieved: float = system.produce(options.schema, options.rate, options.seconds)
    print(f"{achieved:.1f}", flush=True)


if __name__ == "__main__":
    main()
