"""A producer process that enqueues no-op tasks at a steady rate, one task per transaction.

    python -m benchmarks.producer --system lesson04 --schema bench_queue --rate 500 --seconds 8

It enqueues the way an application would: each task in its own call and its own
transaction, through the system's client API (lessons 04's and 08's `enqueue()`,
PgQueuer's `Queries.enqueue`). Task i is due at start + i / rate; a producer that falls behind
catches up without sleeping, so the rate holds on average. It prints the rate it
achieved as its last line.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from lessons.common.database import connect
from lessons.lesson04_queue_improvements.engine.client import enqueue

from . import lesson04
from .noop import TASK_NAME
from .processes import wait_for_go


def run_lesson04(schema: str, rate: float, seconds: float) -> float:
    with connect(schema=schema) as conn:
        wait_for_go()
        return steady(rate, seconds, lambda: enqueue(conn, TASK_NAME, {}, queue=lesson04.QUEUE))


def run_lesson08(schema: str, rate: float, seconds: float) -> float:
    from lessons.lesson08_listen_notify.engine.client import enqueue as enqueue08

    with connect(schema=schema) as conn:
        wait_for_go()
        return steady(rate, seconds, lambda: enqueue08(conn, TASK_NAME, {}, queue=lesson04.QUEUE))


def steady(rate: float, seconds: float, enqueue_one: Callable[[], object]) -> float:
    """Call `enqueue_one` `rate` times a second for `seconds`; return the rate achieved."""
    count = round(rate * seconds)
    started = time.monotonic()
    for index in range(count):
        delay = started + index / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        enqueue_one()
    return count / (time.monotonic() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--system", choices=["lesson04", "lesson08", "pgqueuer"], required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--rate", type=float, required=True, help="tasks per second")
    parser.add_argument("--seconds", type=float, required=True)
    options = parser.parse_args(argv)
    if options.system == "lesson04":
        achieved = run_lesson04(options.schema, options.rate, options.seconds)
    elif options.system == "lesson08":
        achieved = run_lesson08(options.schema, options.rate, options.seconds)
    else:
        from .peers.pgqueuer_case import produce

        achieved = produce(options.schema, options.rate, options.seconds)
    print(f"{achieved:.1f}", flush=True)


if __name__ == "__main__":
    main()
