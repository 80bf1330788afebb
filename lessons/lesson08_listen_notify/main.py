"""Lesson 08: LISTEN/NOTIFY: workers wake up the moment there is work, and parents
the moment their child is done.

    python lessons/lesson08_listen_notify/main.py [-v] [--scenario NAME]

Each scenario prints what happens and checks it. Latency is measured from the
moment `enqueue()` returns (the task is committed: every worker could see it)
to the first line of the task's function, both on this machine's clock.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# A Python without the course installed (`make install` puts it in .venv) would stop at
# the imports below with "No module named 'lessons'": say what to run instead.
try:
    import lessons.common.cli  # noqa: F401
except ModuleNotFoundError:
    print(
        f"error: this Python ({sys.executable}) does not have the course installed: run "
        "`make install`, then `.venv/bin/python lessons/lesson08_listen_notify/main.py`.",
        file=sys.stderr,
    )
    sys.exit(2)

from psycopg import sql
from psycopg_pool import ConnectionPool

from lessons.common.cli import Checks, Lesson, argument_parser, configure_logging, run_lesson
from lessons.common.database import connect
from lessons.common.stats import percentile
from lessons.lesson08_listen_notify.db.models import Task, TaskStatus
from lessons.lesson08_listen_notify.db.queries import Querier
from lessons.lesson08_listen_notify.demo.tasks import ORDER_STEPS_QUEUE, ORDERS_QUEUE
from lessons.lesson08_listen_notify.engine.client import enqueue, wait_for_task
from lessons.lesson08_listen_notify.engine.worker import listener_name
from lessons.lesson08_listen_notify.tools.worker_process import WorkerProcess

LESSON = Lesson.of(__file__)

# Lesson 04's default: a polling worker finds a new task after half of it, on average.
POLLING_ONLY_INTERVAL = 0.5
# This lesson's default: polling is only the fallback now.
FALLBACK_POLL_INTERVAL = 5.0
# The latency runs: this many tasks, one every ENQUEUE_GAP seconds.
LATENCY_TASKS = 100
ENQUEUE_GAP = 0.01
# The course's target for the notification path.
TARGET_P50_MS = 2.0
TARGET_P99_MS = 10.0
# The throughput runs: concurrent producers, each enqueueing one task per
# transaction for PRODUCER_SECONDS, ROUNDS times with and without NOTIFY.
PRODUCERS = 8
PRODUCER_SECONDS = 0.5
ROUNDS = 3
# The parent runs: this many process_order tasks at once, on a worker process
# with this many slots for orders and as many for their children.
ORDERS = 5


@dataclass(frozen=True)
class LatencyRun:
    """Enqueue-to-start latencies of one run, in milliseconds, and how long enqueue took."""

    latencies_ms: list[float]
    enqueue_ms: list[float]
    completed: int

    def percentile(self, fraction: float) -> float:
        """Nearest rank: the smallest latency with `fraction` of them at or below it."""
        return percentile(self.latencies_ms, fraction)

    @property
    def p50(self) -> float:
        return self.percentile(0.50)

    @property
    def p99(self) -> float:
        return self.percentile(0.99)


def started_at(task: Task) -> float:
    """When the task's function started, by its own account (seconds since the epoch)."""
    if task.output is None:
        raise ValueError(f"task {task.id} has no output")
    return float(task.output["started_at"])


def measure_latency(
    pool: ConnectionPool, *, queue: str, listen: bool, poll_interval: float
) -> LatencyRun:
    """Start a worker process, enqueue tasks one at a time, and time each one's start."""
    committed_at: dict[int, float] = {}
    enqueue_ms: list[float] = []
    with WorkerProcess(
        schema=LESSON.schema, queues=[queue], slots=4, poll_interval=poll_interval, listen=listen
    ) as worker:
        worker.start()
        with pool.connection() as conn:
            for _ in range(LATENCY_TASKS):
                before = time.time()
                task_id = enqueue(conn, "note_start", {}, queue=queue)
                committed_at[task_id] = time.time()
                enqueue_ms.append((committed_at[task_id] - before) * 1000)
                time.sleep(ENQUEUE_GAP)
        tasks = [wait_for_task(pool, task_id, timeout=30) for task_id in committed_at]
        worker.stop()
    completed = [task for task in tasks if task.status == TaskStatus.COMPLETED]
    latencies_ms = [(started_at(task) - committed_at[task.id]) * 1000 for task in completed]
    return LatencyRun(latencies_ms=latencies_ms, enqueue_ms=enqueue_ms, completed=len(completed))


def scenario_latency(pool: ConnectionPool, checks: Checks) -> None:
    print("\n== Latency: from enqueue to start, polling only versus notifications ==")
    print(
        f"  {LATENCY_TASKS} tasks, one every {ENQUEUE_GAP * 1000:.0f} ms, "
        "to a worker process with 4 slots."
    )
    polling = measure_latency(
        pool, queue="latency-polling", listen=False, poll_interval=POLLING_ONLY_INTERVAL
    )
    notified = measure_latency(
        pool, queue="latency-notified", listen=True, poll_interval=FALLBACK_POLL_INTERVAL
    )
    print("                                       p50        p99")
    print(
        f"  polling only, every {POLLING_ONLY_INTERVAL} s        "
        f"{polling.p50:7.1f} ms {polling.p99:7.1f} ms"
    )
    print(
        f"  notifications (poll every {FALLBACK_POLL_INTERVAL:g} s) "
        f"{notified.p50:7.2f} ms {notified.p99:7.2f} ms"
    )
    print(
        f"  (enqueue() itself, the INSERT and its commit, took "
        f"{statistics.median(notified.enqueue_ms):.2f} ms at the median.)"
    )
    met = notified.p50 < TARGET_P50_MS and notified.p99 < TARGET_P99_MS
    print(
        f"  The course's target, p50 < {TARGET_P50_MS:g} ms and p99 < {TARGET_P99_MS:g} ms, "
        + ("was met." if met else "was not met on this run (a busy machine?).")
    )
    checks.check(
        polling.completed == notified.completed == LATENCY_TASKS,
        "every task ran, in both runs",
        f"{polling.completed} and {notified.completed} of {LATENCY_TASKS}",
    )
    checks.check(
        notified.p50 < FALLBACK_POLL_INTERVAL * 1000 / 100,
        "with notifications, a task starts in a small fraction of the poll interval",
        f"p50 {notified.p50:.1f} ms with a poll interval of {FALLBACK_POLL_INTERVAL} s",
    )


@dataclass(frozen=True)
class ProducerRun:
    tasks: int
    # On average, how many producers were waiting for the lock NOTIFY takes at
    # commit (pg_stat_activity shows it as wait event Lock / object).
    waiting_for_notify_lock: float


def enqueue_for_a_while(producers: int, seconds: float, queue: str) -> ProducerRun:
    """`producers` threads, each on its own connection, enqueue one task per
    transaction for `seconds`, while this thread watches what they wait for."""
    counts = [0] * producers
    ready = threading.Barrier(producers + 1)
    application_name = f"{LESSON.schema} producer"

    def produce(index: int) -> None:
        with connect(schema=LESSON.schema) as conn:
            conn.execute("SELECT set_config('application_name', %s, false)", (application_name,))
            ready.wait()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                enqueue(conn, "note_start", {}, queue=queue)
                counts[index] += 1

    threads = [threading.Thread(target=produce, args=(index,)) for index in range(producers)]
    for thread in threads:
        thread.start()
    ready.wait()
    waiting = watch_lock_waits(application_name, seconds)
    for thread in threads:
        thread.join()
    return ProducerRun(tasks=sum(counts), waiting_for_notify_lock=waiting)


def watch_lock_waits(application_name: str, seconds: float) -> float:
    """Every few milliseconds for `seconds`, count the sessions called `application_name`
    waiting for an object lock; return the average count."""
    samples = []
    deadline = time.monotonic() + seconds
    with connect() as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                " AND wait_event_type = 'Lock' AND wait_event = 'object'",
                (application_name,),
            ).fetchone()
            samples.append(row[0] if row else 0)
            time.sleep(0.005)
    return statistics.mean(samples) if samples else 0.0


@contextmanager
def enqueue_trigger(enabled: bool) -> Iterator[None]:
    """The enqueue notification on or off, for the comparison (and back on afterwards)."""
    with connect(schema=LESSON.schema) as conn:
        conn.execute(
            sql.SQL("ALTER TABLE tasks {} TRIGGER tasks_inserted_notify").format(
                sql.SQL("ENABLE" if enabled else "DISABLE")
            )
        )
    try:
        yield
    finally:
        with connect(schema=LESSON.schema) as conn:
            conn.execute("ALTER TABLE tasks ENABLE TRIGGER tasks_inserted_notify")


def scenario_producers(pool: ConnectionPool, checks: Checks) -> None:
    print("\n== The price: NOTIFY serializes commits ==")
    print(
        f"  {PRODUCERS} producers, each enqueueing one task per transaction for "
        f"{PRODUCER_SECONDS} s; {ROUNDS} rounds of each, alternating."
    )
    runs: dict[bool, list[ProducerRun]] = {True: [], False: []}
    for _ in range(ROUNDS):
        for notify in (False, True):
            with enqueue_trigger(notify):
                runs[notify].append(
                    enqueue_for_a_while(PRODUCERS, PRODUCER_SECONDS, queue="producers")
                )
    enqueued = sum(run.tasks for run in runs[False] + runs[True])
    print(f"  {'':14} {'tasks/s':>9}   producers waiting for the NOTIFY lock, on average")
    for notify, label in ((False, "without NOTIFY"), (True, "with NOTIFY   ")):
        rate = statistics.median(run.tasks / PRODUCER_SECONDS for run in runs[notify])
        waiting = statistics.median(run.waiting_for_notify_lock for run in runs[notify])
        print(f"  {label} {rate:9,.0f}   {waiting:.1f} of {PRODUCERS}")
    print("  (medians of the rounds.) A transaction that notified takes one lock, shared by")
    print("  the whole server, just before it commits, and keeps it until its commit is on")
    print("  disk: such commits happen one at a time, where others share a disk flush. Its")
    print("  price grows with the time a flush takes.")
    with pool.connection() as conn:
        counts = {row.status: row.tasks for row in Querier(conn).count_tasks_by_status()}
        stored = conn.execute("SELECT count(*) FROM tasks WHERE queue = 'producers'").fetchone()
    checks.check(
        stored is not None and stored[0] == enqueued,
        "every task the producers enqueued is in the table",
        f"{stored} stored, {enqueued} enqueued; {counts}",
    )


def scenario_debouncing(pool: ConnectionPool, checks: Checks) -> None:
    print("\n== Debouncing: one notification per transaction, not one per task ==")
    with connect() as listener, pool.connection() as conn:
        channel = Querier(conn).notification_channels()
        assert channel is not None
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel.task_queued)))
        with conn.transaction():
            for number in range(100):
                enqueue(conn, "note_start", {"number": number}, queue="debouncing")
        heard = [
            notification.payload
            for notification in listener.notifies(timeout=0.5)
            if notification.payload == "debouncing"
        ]
    print(f"  One transaction enqueued 100 tasks; the channel carried {len(heard)} notification.")
    checks.check(
        len(heard) == 1, "a transaction that enqueues 100 tasks notifies once", f"{len(heard)}"
    )


def listener_pid(schema: str, worker_id: int) -> int | None:
    """The server process of a worker's listening connection, from pg_stat_activity."""
    with connect() as conn:
        row = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
            (listener_name(schema, worker_id),),
        ).fetchone()
    return int(row[0]) if row else None


def wait_for_listener(schema: str, worker_id: int, *, other_than: int | None) -> int:
    deadline = time.monotonic() + 10
    while (pid := listener_pid(schema, worker_id)) is None or pid == other_than:
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker {worker_id} has no listener")
        time.sleep(0.02)
    return pid


def start_delay(pool: ConnectionPool, queue: str) -> float:
    """Enqueue one task, wait for it, and return how long after enqueueing it started."""
    with pool.connection() as conn:
        task_id = enqueue(conn, "note_start", {}, queue=queue)
    committed_at = time.time()
    task = wait_for_task(pool, task_id, timeout=30)
    return started_at(task) - committed_at


def scenario_reconnect(pool: ConnectionPool, checks: Checks) -> None:
    print("\n== Reconnecting: the listening connection dies ==")
    with WorkerProcess(
        schema=LESSON.schema, queues=["reconnect"], poll_interval=FALLBACK_POLL_INTERVAL
    ) as worker:
        worker.start()
        first = wait_for_listener(LESSON.schema, worker.id, other_than=None)
        print(f"  Worker {worker.id} listens on backend {first}. pg_terminate_backend({first}).")
        with connect() as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (first,))
        during_gap = start_delay(pool, "reconnect")
        print(f"  A task enqueued while nobody listened started {during_gap:.2f} s later:")
        print("  when the listener reconnected, it woke the poller, which found it.")
        second = wait_for_listener(LESSON.schema, worker.id, other_than=first)
        after = start_delay(pool, "reconnect")
        print(
            f"  It listens on backend {second} now; the next task started in {after * 1000:.1f} ms."
        )
        worker.stop()
    checks.check(
        during_gap < FALLBACK_POLL_INTERVAL,
        "the task enqueued during the gap ran, before the next poll was due",
        f"{during_gap:.2f} s",
    )
    checks.check(
        # A tenth of the poll interval: long for a notification, too short for a poll.
        after < FALLBACK_POLL_INTERVAL / 10,
        "after reconnecting, the worker wakes on notifications again",
        f"{after * 1000:.1f} ms",
    )


def order(order_id: str) -> dict[str, object]:
    return {
        "order_id": order_id,
        "card": "4242-4242-4242-4242",
        "amount_cents": 4200,
        "email": "ada@example.com",
    }


def charge_to_email_gaps(
    pool: ConnectionPool, *, listen: bool, poll_interval: float, prefix: str
) -> tuple[list[float], int]:
    """Run ORDERS orders; return, for each, the seconds between its charge and its email,
    and how many orders completed.

    Between the two, process_order must notice that charge_payment finished,
    spawn send_confirmation_email, and a worker must claim it: a parent wake-up
    and a claim, on the database's clock (each effect's row records when).
    """
    order_ids = [f"{prefix}-{number}" for number in range(1, ORDERS + 1)]
    with WorkerProcess(
        schema=LESSON.schema,
        queues=[ORDERS_QUEUE, ORDER_STEPS_QUEUE],
        slots=ORDERS,
        poll_interval=poll_interval,
        listen=listen,
    ) as worker:
        worker.start()
        with pool.connection() as conn:
            task_ids = [
                enqueue(conn, "process_order", order(order_id), queue=ORDERS_QUEUE, durable=True)
                for order_id in order_ids
            ]
        tasks = [wait_for_task(pool, task_id, timeout=30) for task_id in task_ids]
        worker.stop()
    with pool.connection() as conn:
        queries = Querier(conn)
        charged = {c.order_id: c.charged_at for c in queries.list_charges()}
        emailed = {e.order_id: e.sent_at for e in queries.list_emails()}
    gaps = [(emailed[o] - charged[o]).total_seconds() for o in order_ids if o in emailed]
    completed = sum(1 for task in tasks if task.status == TaskStatus.COMPLETED)
    return gaps, completed


def scenario_parents(pool: ConnectionPool, checks: Checks) -> None:
    print("\n== Parents: a finished child wakes the durable task waiting for it ==")
    print(f"  {ORDERS} process_order tasks at once; each charges (a child task), waits for it,")
    print("  then emails (another child). From the charge to the email, its parent must")
    print("  notice the payment is done and spawn the email, and a worker must claim it.")
    polling, polling_completed = charge_to_email_gaps(
        pool, listen=False, poll_interval=POLLING_ONLY_INTERVAL, prefix="P"
    )
    notified, notified_completed = charge_to_email_gaps(
        pool, listen=True, poll_interval=FALLBACK_POLL_INTERVAL, prefix="N"
    )
    print("  From the charge to the email, median and slowest of the orders:")
    print(
        f"    polling only, every {POLLING_ONLY_INTERVAL} s:         "
        f"{statistics.median(polling) * 1000:7.1f} ms {max(polling) * 1000:7.1f} ms"
    )
    print(
        f"    notifications (poll every {FALLBACK_POLL_INTERVAL:g} s): "
        f"{statistics.median(notified) * 1000:7.1f} ms {max(notified) * 1000:7.1f} ms"
    )
    checks.check(
        polling_completed == notified_completed == ORDERS,
        "every order completed, charged and emailed, in both runs",
        f"{polling_completed} and {notified_completed} of {ORDERS}",
    )
    checks.check(
        max(notified) < FALLBACK_POLL_INTERVAL / 10,
        "with notifications, each parent resumed long before its next poll was due",
        f"slowest {max(notified):.2f} s with a poll interval of {FALLBACK_POLL_INTERVAL} s",
    )


SCENARIOS: dict[str, Callable[[ConnectionPool, Checks], None]] = {
    "latency": scenario_latency,
    "producers": scenario_producers,
    "debouncing": scenario_debouncing,
    "reconnect": scenario_reconnect,
    "parents": scenario_parents,
}


def demonstrate(scenarios: list[str]) -> bool:
    checks = Checks()
    LESSON.reset()
    with LESSON.pool(max_size=4) as pool:
        for name in scenarios:
            SCENARIOS[name](pool, checks)
    return checks.passed


if __name__ == "__main__":
    parser = argument_parser(__doc__ or "")
    parser.add_argument("--scenario", choices=list(SCENARIOS), help="run only this scenario")
    options = parser.parse_args()
    configure_logging(options.verbose)
    run_lesson(lambda: demonstrate([options.scenario] if options.scenario else list(SCENARIOS)))
