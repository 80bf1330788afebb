"""Lesson 09: what a run of a durable task costs to replay, against the length of its history.

    python -m benchmarks.replay_cost [--events 10 100 1000] [--runs 5] [--sequence 25 50 100 200]
        [--lesson lesson09_durable_sleep]

`--lesson` runs the same measurements on a later lesson's engine (a lesson package name,
such as lesson14_changing_code_safely); the measurements themselves are in
`systems/replay.py`, which lesson 15's `scale_growth.py` uses too.

**Replay.** For each kind of event (steps, children, sleeps) and each history
length n, a durable task is given a history of n events of that kind, all
resolved: steps with their outputs, children completed, sleeps whose wake-up
time has passed (written straight into the tables: building them is not what
is measured). The task is claimed once; then each run loads a context
(`DurableContext.load`, the one read of the history with its children's
outcomes) and calls the same n operations, every one of them replayed, and
`check_whole_history_replayed()`. The figure is the median of `--runs` runs,
on this machine's clock, with the connections the run took from the pool
(one per statement or transaction) and the suspensions it wrote (a trigger
counts them, rolled back or not). Per-event cost is the run's time divided by
n.

**Sequence.** A durable function calls n children one after the other, on one
in-process worker of the lesson (2 slots): it runs n + 1 times, each run
replaying every child before the new one. The figure is the time from enqueue
to completion, and the suspensions written: linear when a replayed child
costs nothing (n suspensions, one per new child), quadratic when each replayed
wait suspends and looks again (n(n + 1)/2; the issue measured n = 200 at
132.6 s with 20,294 suspensions).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lessons.common.database import connect, database_url, drop_schema, reset_schema

from .harness.machine import this_machine, this_server
from .systems.lesson_engine import LessonEngine
from .systems.replay import COUNT_SUSPENSIONS, KINDS, SCHEMA, Replays

DEFAULT_LESSON = "lesson09_durable_sleep"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sequence", type=int, nargs="*", default=[25, 50, 100, 200])
    parser.add_argument("--lesson", default=DEFAULT_LESSON, help="a lesson package name")
    options = parser.parse_args(argv)
    engine = LessonEngine.named(options.lesson)
    replays = Replays(engine)

    reset_schema(SCHEMA, engine.schema_sql)
    url = database_url()
    with connect(url, schema=SCHEMA) as conn:
        conn.execute(COUNT_SUSPENSIONS)
        server = this_server(conn)
    pool = replays.open_pool(url)
    try:
        print(f"machine: {this_machine().describe()}")
        print(f"server: {server.describe()}")
        print(f"replay of one run, median of {options.runs} ({engine.title}):")
        print("kind   events   run (ms)  per event (µs)  statements  suspensions")
        for kind in KINDS:
            for events in options.events:
                print(replays.measure_replay(pool, kind, events, options.runs).line(), flush=True)
        if options.sequence:
            print("n children called in sequence, enqueue to completion (one worker, 2 slots):")
            print("children   seconds  per child (ms)  suspensions")
            for children in options.sequence:
                took, suspended = replays.measure_sequence(pool, children)
                print(f"{children:>8} {took:>9.2f} {took / children * 1e3:>15.1f} {suspended:>12}")
    finally:
        pool.close()
        drop_schema(SCHEMA)


if __name__ == "__main__":
    main()
