"""Lesson 08: what LISTEN/NOTIFY buys, enqueue-to-start latency, and what it costs,
enqueue throughput under concurrent producers.

    python -m benchmarks.notify_latency [--quick]

**Latency.** One worker process of lesson 08 (4 slots, no-op task) serves a
queue; this process enqueues `--tasks` tasks at `--rate` a second, each in its
own transaction. A task's latency runs from the moment `enqueue()` returned
(the task is committed: any worker may see it) to the first line of its
function, both read from this machine's clock. Polling only (every 0.5 s,
lesson 04's default) against notifications (with a 5 s fallback poll). For
comparison with harnesses that use the database's clock, the report also gives
`started_at - inserted_at`: from the enqueue transaction's start to the claim,
which includes the enqueue's own commit (its WAL flush).

**Throughput.** `P` producer processes, each on its own connection, call
`enqueue()` in a loop, one task per transaction, for `--seconds`: with the
enqueue trigger enabled (each commit sends a NOTIFY) and disabled (`ALTER
TABLE ... DISABLE TRIGGER`), alternating for `--rounds` rounds; the report
gives the medians and ranges. No worker runs meanwhile: only the commits are
measured. Meanwhile this process samples `pg_stat_activity` every 5 ms and
counts the producers waiting for an object lock (wait event `Lock` /
`object`): the lock a notifying transaction takes at commit.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

from lessons.common.database import connect, create_pool, drop_schema, reset_schema
from lessons.common.stats import median, percentile
from lessons.lesson08_listen_notify.engine.client import enqueue, wait_for_task
from lessons.lesson08_listen_notify.tools.worker_process import WorkerProcess

from .harness.machine import this_machine, this_server
from .harness.processes import started_together
from .systems.lesson08 import POLL_INTERVAL as FALLBACK_POLL_INTERVAL
from .systems.lesson08 import SCHEMA_SQL

SCHEMA = "bench_notify"
TASK_NAME = "note_start"  # lesson 08's own: returns {"started_at": time.time()}
POLLING_ONLY_INTERVAL = 0.5


@dataclass(frozen=True)
class LatencyResult:
    mode: str
    rate: float  # achieved, tasks per second
    after_commit_ms: list[float]
    database_clock_ms: list[float]
    enqueue_ms: list[float]


def measure_latency(*, listen: bool, tasks: int, rate: float) -> LatencyResult:
    reset_schema(SCHEMA, SCHEMA_SQL)
    queue = "latency"
    poll_interval = FALLBACK_POLL_INTERVAL if listen else POLLING_ONLY_INTERVAL
    committed_at: dict[int, float] = {}
    enqueue_ms: list[float] = []
    worker = WorkerProcess(
        schema=SCHEMA, queues=[queue], slots=4, poll_interval=poll_interval, listen=listen
    )
    with create_pool(SCHEMA, max_size=2) as pool, started_together([worker]):
        with pool.connection() as conn:
            started = time.monotonic()
            for index in range(tasks):
                delay = started + index / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                before = time.time()
                task_id = enqueue(conn, TASK_NAME, {}, queue=queue)
                committed_at[task_id] = time.time()
                enqueue_ms.append((committed_at[task_id] - before) * 1000)
            achieved = tasks / (time.monotonic() - started)
        finished = [wait_for_task(pool, task_id, timeout=60) for task_id in committed_at]
    after_commit_ms = [
        (float(task.output["started_at"]) - committed_at[task.id]) * 1000
        for task in finished
        if task.output is not None
    ]
    database_clock_ms = [
        (task.started_at - task.inserted_at).total_seconds() * 1000
        for task in finished
        if task.started_at is not None
    ]
    if len(after_commit_ms) != tasks:
        raise RuntimeError(f"only {len(after_commit_ms)} of {tasks} tasks ran")
    mode = "notifications" if listen else "polling only"
    return LatencyResult(mode, achieved, after_commit_ms, database_clock_ms, enqueue_ms)


PRODUCER_NAME = f"{SCHEMA} producer"


@dataclass(frozen=True)
class ProducerRun:
    rate: float  # tasks per second, all producers together
    waiting_for_notify_lock: float  # producers waiting for it, on average


def produce(schema: str, start_at: float, seconds: float) -> int:
    """One producer process: enqueue one task per transaction from `start_at` for `seconds`."""
    with connect(schema=schema) as conn:
        conn.execute("SELECT set_config('application_name', %s, false)", (PRODUCER_NAME,))
        time.sleep(max(0.0, start_at - time.time()))
        deadline = start_at + seconds
        count = 0
        while time.time() < deadline:
            enqueue(conn, TASK_NAME, {}, queue="producers")
            count += 1
    return count


def run_producers(executor: ProcessPoolExecutor, producers: int, seconds: float) -> ProducerRun:
    # Every producer starts on the same tick, once all of them are spawned and connected.
    start_at = time.time() + 0.3
    futures = [executor.submit(produce, SCHEMA, start_at, seconds) for _ in range(producers)]
    time.sleep(max(0.0, start_at - time.time()))
    waiting = sample_lock_waits(seconds)
    return ProducerRun(sum(future.result() for future in futures) / seconds, waiting)


def sample_lock_waits(seconds: float) -> float:
    """The average number of producers waiting for an object lock, sampled every 5 ms."""
    samples = []
    deadline = time.monotonic() + seconds
    with connect() as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                " AND wait_event_type = 'Lock' AND wait_event = 'object'",
                (PRODUCER_NAME,),
            ).fetchone()
            samples.append(row[0] if row else 0)
            time.sleep(0.005)
    return sum(samples) / len(samples) if samples else 0.0


def set_enqueue_notification(enabled: bool) -> None:
    action = "ENABLE" if enabled else "DISABLE"
    with connect(schema=SCHEMA) as conn:
        conn.execute(f"ALTER TABLE tasks {action} TRIGGER tasks_inserted_notify")


def measure_throughput(
    producer_counts: Sequence[int], *, seconds: float, rounds: int
) -> dict[tuple[int, bool], list[ProducerRun]]:
    reset_schema(SCHEMA, SCHEMA_SQL)
    runs: dict[tuple[int, bool], list[ProducerRun]] = {}
    # A pool of processes rather than `started_together`: the same producers serve
    # every run of every round, started once, each run a call that returns a count.
    with ProcessPoolExecutor(max(producer_counts), mp_context=get_context("spawn")) as executor:
        run_producers(executor, max(producer_counts), 0.2)  # spawn and import, untimed
        for _ in range(rounds):
            for producers in producer_counts:
                for notify in (False, True):
                    set_enqueue_notification(notify)
                    run = run_producers(executor, producers, seconds)
                    runs.setdefault((producers, notify), []).append(run)
    set_enqueue_notification(True)
    return runs


def describe_latency(result: LatencyResult) -> str:
    after, database = result.after_commit_ms, result.database_clock_ms
    return (
        f"| {result.mode} | {len(after)} at {result.rate:.0f}/s "
        f"| {median(after):.2f} | {percentile(after, 0.99):.2f} | {max(after):.2f} "
        f"| {median(database):.2f} | {percentile(database, 0.99):.2f} "
        f"| {median(result.enqueue_ms):.2f} |"
    )


def describe_range(rates: list[float]) -> str:
    return f"{min(rates):,.0f}-{max(rates):,.0f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer tasks, shorter runs")
    parser.add_argument("--tasks", type=int, default=1000, help="tasks per latency run")
    parser.add_argument("--rate", type=float, default=200.0, help="tasks enqueued per second")
    parser.add_argument("--producers", default="1,2,4,8", help="producer counts to compare")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of a throughput run")
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args(argv)
    if options.quick:
        options.tasks, options.seconds, options.rounds = 200, 0.5, 1
    producer_counts = [int(count) for count in options.producers.split(",")]

    with connect() as conn:
        server = this_server(conn)
    print(f"Machine: {this_machine().describe()}")
    print(f"Server:  {server.describe()}; {server.describe_settings()}")
    print()
    print("Enqueue-to-start latency, one worker process with 4 slots, no-op tasks (ms)")
    print()
    print(
        "| worker | tasks | p50 from commit | p99 | max "
        "| p50 database clock | p99 | enqueue() p50 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for listen in (False, True):
        result = measure_latency(listen=listen, tasks=options.tasks, rate=options.rate)
        print(describe_latency(result), flush=True)
    print()
    print(
        f"Enqueue throughput, one task per transaction, tasks/s "
        f"(median and range of {options.rounds} rounds of {options.seconds:g} s)"
    )
    print()
    print(
        "| producers | without NOTIFY | with NOTIFY | with / without "
        "| range without | range with | waiting for the lock, with NOTIFY |"
    )
    print("|---|---|---|---|---|---|---|")
    runs = measure_throughput(producer_counts, seconds=options.seconds, rounds=options.rounds)
    for producers in producer_counts:
        without = [run.rate for run in runs[(producers, False)]]
        notified = [run.rate for run in runs[(producers, True)]]
        waiting = median([run.waiting_for_notify_lock for run in runs[(producers, True)]])
        print(
            f"| {producers} | {median(without):,.0f} | {median(notified):,.0f} "
            f"| {median(notified) / median(without):.2f} "
            f"| {describe_range(without)} | {describe_range(notified)} "
            f"| {waiting:.1f} of {producers} |"
        )
    drop_schema(SCHEMA)


if __name__ == "__main__":
    main()
