"""Lesson 13: idempotency keys, on enqueue and on a durable task's children.

Real worker processes and the real server. Eight producer processes enqueue with
one key at the same instant (released together by an advisory lock they all wait
on) and make one task; a repeat of a keyed enqueue does not run its queue's
strategy against the task it repeats; a key names its task for its retention,
on the database's clock, and no longer; a fork and a replay of a finished order
find its charge, finished, instead of charging again; and a task that reuses
another task's unfinished child is woken when that child finishes.

What ran is counted from the task functions' own rows (`executions`, see
tests/lesson15_inherited13/functions_starts.py), not from the engine's word.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from lessons.common.database import connect
from lessons.lesson15_operating_at_scale.db.models import (
    AtLimit,
    EventKind,
    Task,
    TaskStatus,
)
from lessons.lesson15_operating_at_scale.db.queries import Querier
from lessons.lesson15_operating_at_scale.engine.client import (
    enqueue,
    set_concurrency_limit,
    wait_for_task,
)
from lessons.lesson15_operating_at_scale.engine.reruns import fork, replay
from lessons.lesson15_operating_at_scale.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.lesson15_inherited13.functions_starts import arrival_file
from tests.recording import create_executions_table, open_gate
from tests.waiting import wait_until

LESSON = "lesson15_operating_at_scale"
FUNCTIONS_MODULE = "tests.lesson15_inherited13.functions_starts"
KEYED_QUEUE = "keyed"
PRODUCERS = 8


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    """A lesson-13 schema with the task functions' `executions` table."""
    created = lesson_database(LESSON, max_size=PRODUCERS + 4)
    with created.pool.connection() as conn:
        create_executions_table(conn)
    return created


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    return tmp_path / "gate"


def worker(database: LessonDatabase, *, queues: list[str]) -> WorkerProcess:
    return WorkerProcess(
        schema=database.schema,
        queues=queues,
        functions=FUNCTIONS_MODULE,
        slots=4,
        poll_interval=0.1,
        heartbeat_interval=0.1,
        inactivity_threshold=1.0,
    )


def get_task(pool: ConnectionPool, task_id: int) -> Task:
    with pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    assert task is not None, f"there is no task {task_id}"
    return task


def tasks_named(pool: ConnectionPool, task_name: str) -> list[Task]:
    with pool.connection() as conn:
        return [task for task in Querier(conn).list_tasks() if task.task_name == task_name]


def runs(pool: ConnectionPool, event: str) -> list[tuple[int, int, Any]]:
    """(task id, attempt, detail) of each run the functions recorded as `event`."""
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT key, attempt, detail FROM executions WHERE event = %s ORDER BY seq", (event,)
        ).fetchall()
    return [(int(key), int(attempt), detail) for key, attempt, detail in rows]


def database_now(pool: ConnectionPool) -> datetime:
    with pool.connection() as conn:
        now = Querier(conn).database_now()
    assert now is not None
    return now


# ---------------------------------------------------------------------------
# Eight producers at once
# ---------------------------------------------------------------------------


def enqueue_after_the_starting_gun() -> None:
    """A producer process's whole life (`python -c`; argv: schema, idempotency key,
    starting gun): wait on the gun, a shared advisory lock the test holds
    exclusively, so that all producers are released by one unlock; then enqueue
    once, and print the id the enqueue returned."""
    schema, idempotency_key, gun = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with connect(schema=schema) as conn:
        conn.execute("SELECT pg_advisory_lock_shared(%s)", (gun,))
        conn.execute("SELECT pg_advisory_unlock_shared(%s)", (gun,))
        task_id = enqueue(conn, "note", {"click": "buy"}, idempotency_key=idempotency_key)
    print(task_id, flush=True)


def producers_waiting_on(conn: psycopg.Connection[Any], gun: int) -> int:
    """How many sessions wait for the advisory lock `gun` (a key below 2^31: objid)."""
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
        "AND classid = 0 AND objid = %s "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (gun,),
    ).fetchone()
    return int(row[0]) if row else 0


def test_eight_producer_processes_enqueuing_with_one_key_at_once_make_one_task(
    database: LessonDatabase,
) -> None:
    """Eight processes, each with its own connection, all blocked on one advisory
    lock and released by its one unlock, enqueue with the same idempotency key at
    the same instant. The unique index and CreateTask's ON CONFLICT decide alone:
    exactly one task has the key, it counts `enqueues == 8`, and all eight
    enqueues returned its id."""
    gun = random.randrange(1, 2**31)
    key = f"buy:cart-{gun}"
    command = [
        sys.executable,
        "-c",
        "from tests.lesson15_inherited13.test_idempotency import enqueue_after_the_starting_gun as run; run()",
        database.schema,
        key,
        str(gun),
    ]
    with ExitStack() as stack, connect(database.url) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (gun,))
        producers = [
            stack.enter_context(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))
            for _ in range(PRODUCERS)
        ]
        wait_until(
            lambda: producers_waiting_on(holder, gun) == PRODUCERS,
            timeout=30,
            message=lambda: f"{producers_waiting_on(holder, gun)} producers at the gun",
        )
        released_at = time.monotonic()
        holder.execute("SELECT pg_advisory_unlock(%s)", (gun,))
        outputs = [producer.communicate(timeout=30)[0] for producer in producers]
        elapsed = time.monotonic() - released_at
    assert [producer.returncode for producer in producers] == [0] * PRODUCERS
    returned = [int(output) for output in outputs]
    created = tasks_named(database.pool, "note")
    print(f"{PRODUCERS} producers released at once, all answered within {elapsed:.3f} s")
    assert len(created) == 1, created
    (task,) = created
    assert returned == [task.id] * PRODUCERS
    assert (task.idempotency_key, task.enqueues, task.status) == (
        key,
        PRODUCERS,
        TaskStatus.QUEUED,
    )


# ---------------------------------------------------------------------------
# A keyed repeat does not run its queue's strategy against its original
# ---------------------------------------------------------------------------


def run_original_at_the_gate(
    database: LessonDatabase, strategy: AtLimit, gate: Path, idempotency_key: str
) -> int:
    """A keyed task of a queue with limit 1 and `strategy`, running at `gate`."""
    with database.pool.connection() as conn:
        set_concurrency_limit(conn, KEYED_QUEUE, 1, at_limit=strategy)
        original = enqueue(
            conn,
            "wait_at_gate",
            {"gate": str(gate)},
            queue=KEYED_QUEUE,
            concurrency_key="tenant",
            idempotency_key=idempotency_key,
        )
    wait_until(
        lambda: arrival_file(str(gate), original).exists(), timeout=30, message="at the gate"
    )
    return original


@pytest.mark.parametrize("strategy", [AtLimit.CANCEL_IN_PROGRESS, AtLimit.WAIT])
def test_a_repeated_keyed_enqueue_does_not_cancel_or_queue_behind_its_original(
    database: LessonDatabase, gate: Path, strategy: AtLimit
) -> None:
    """A keyed task (limit 1) runs at a gate on a worker process; an enqueue that
    repeats its idempotency key returns its id, and neither cancels it
    (cancel_in_progress) nor makes a second task waiting behind it (wait). The
    control: an enqueue of the same key with another idempotency key does cancel
    it (cancel_in_progress), or waits behind it and runs after it (wait)."""
    with worker(database, queues=[KEYED_QUEUE]) as process:
        process.start()
        original = run_original_at_the_gate(database, strategy, gate, "order:A-1")
        with database.pool.connection() as conn:
            repeated = enqueue(
                conn,
                "wait_at_gate",
                {"gate": str(gate)},
                queue=KEYED_QUEUE,
                concurrency_key="tenant",
                idempotency_key="order:A-1",
            )
        assert repeated == original
        after_repeat = get_task(database.pool, original)
        assert (after_repeat.status, after_repeat.cancel_requested_at) == (
            TaskStatus.RUNNING,
            None,
        )
        assert [task.id for task in tasks_named(database.pool, "wait_at_gate")] == [original]

        with database.pool.connection() as conn:
            other = enqueue(
                conn,
                "wait_at_gate",
                {"gate": str(gate)},
                queue=KEYED_QUEUE,
                concurrency_key="tenant",
                idempotency_key="order:A-2",
            )
        assert other != original
        if strategy == AtLimit.CANCEL_IN_PROGRESS:
            superseded = get_task(database.pool, original)
            assert (superseded.status, superseded.cancelled_by) == (
                TaskStatus.CANCELLED,
                "concurrency limit",
            )
        else:
            assert get_task(database.pool, other).status == TaskStatus.QUEUED
        open_gate(gate)
        finished = {task_id: wait_for_task(database.pool, task_id) for task_id in (original, other)}
    assert finished[other].status == TaskStatus.COMPLETED
    expected = (
        TaskStatus.CANCELLED if strategy == AtLimit.CANCEL_IN_PROGRESS else TaskStatus.COMPLETED
    )
    assert finished[original].status == expected
    # Two tasks ran, each once: the repeat ran nothing.
    assert sorted(task_id for task_id, _, _ in runs(database.pool, "started")) == [original, other]


def waiting_for_a_lock(conn: psycopg.Connection[Any], backend_pid: int) -> bool:
    row = conn.execute(
        "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", (backend_pid,)
    ).fetchone()
    return bool(row and row[0])


@pytest.mark.parametrize(
    "strategy",
    [
        AtLimit.CANCEL_IN_PROGRESS,
        AtLimit.WAIT,
    ],
)
def test_a_keyed_repeat_racing_its_original_enqueue_does_not_cancel_it(
    database: LessonDatabase, strategy: AtLimit
) -> None:
    """The double click of a keyed task, made deterministic: the first enqueue's
    transaction is open (it holds the key's row), the repeat is sent and waits for
    a lock, then the first commits. The repeat returns the original's id, there is
    one task, and it is queued, not cancelled: a repeat never runs its queue's
    strategy against the task it repeats, however the two interleave."""
    with database.pool.connection() as first, database.pool.connection() as second:
        set_concurrency_limit(first, KEYED_QUEUE, 1, at_limit=strategy)
        repeat_pid = second.info.backend_pid
        returned: list[int] = []

        def repeat() -> None:
            returned.append(
                enqueue(
                    second,
                    "note",
                    {"click": 2},
                    queue=KEYED_QUEUE,
                    concurrency_key="tenant",
                    idempotency_key="buy:cart-7",
                )
            )

        repeating = threading.Thread(target=repeat)
        with first.transaction():
            original = enqueue(
                first,
                "note",
                {"click": 1},
                queue=KEYED_QUEUE,
                concurrency_key="tenant",
                idempotency_key="buy:cart-7",
            )
            # cancel_in_progress: the repeat waits for the key's row, which the
            # original's enqueue locked; wait: for the original's uncommitted
            # rows (its key's, and the idempotency key's in the unique index).
            repeating.start()
            with database.pool.connection() as observer:
                wait_until(
                    lambda: waiting_for_a_lock(observer, repeat_pid),
                    timeout=10,
                    message="the repeat never waited for the original's transaction",
                )
        repeating.join(timeout=10)
    assert returned == [original]
    (task,) = tasks_named(database.pool, "note")
    assert (task.id, task.status, task.cancel_requested_at) == (original, TaskStatus.QUEUED, None)
    assert task.enqueues == 2


def test_a_keyed_repeat_counts_itself_in_enqueues(database: LessonDatabase) -> None:
    """`enqueues` says how many enqueues asked for the task: two enqueues of a keyed
    task with the same idempotency key make one task that counts 2, as they do for
    a keyless task (the first two lines, the control)."""
    with database.pool.connection() as conn:
        set_concurrency_limit(conn, KEYED_QUEUE, 1)
        keyless = [enqueue(conn, "note", {}, idempotency_key="keyless") for _ in range(2)]
        keyed = [
            enqueue(
                conn,
                "note",
                {},
                queue=KEYED_QUEUE,
                concurrency_key="tenant",
                idempotency_key="keyed",
            )
            for _ in range(2)
        ]
    assert keyless[0] == keyless[1] and get_task(database.pool, keyless[0]).enqueues == 2
    assert keyed[0] == keyed[1]
    assert get_task(database.pool, keyed[0]).enqueues == 2


# ---------------------------------------------------------------------------
# Retention
# ---------------------------------------------------------------------------

RETENTION_SECONDS = 0.5


@pytest.mark.parametrize("keyed", [False, True], ids=["keyless", "keyed"])
def test_a_key_names_its_task_for_its_retention_and_no_longer(
    database: LessonDatabase, keyed: bool
) -> None:
    """With a retention of 0.5 s: a repeat within it (checked on the database's
    clock) returns the same task; once the database's clock has passed the key's
    expiry, the same key makes a new task, which holds the key from then on (a
    repeat returns it), and the old task lets go of it."""
    pool = database.pool
    options: dict[str, Any] = {"idempotency_key": "refresh:7"}
    options["idempotency_retention"] = RETENTION_SECONDS
    if keyed:
        with pool.connection() as conn:
            set_concurrency_limit(conn, KEYED_QUEUE, 5)
        options |= {"queue": KEYED_QUEUE, "concurrency_key": "tenant"}
    with pool.connection() as conn:
        first = enqueue(conn, "note", {"n": 1}, **options)
        repeat = enqueue(conn, "note", {"n": 2}, **options)
    repeated_by = database_now(pool)
    expires_at = get_task(pool, first).idempotency_expires_at
    assert expires_at is not None and repeated_by < expires_at, "the repeat came too late"
    assert repeat == first

    wait_until(lambda: database_now(pool) >= expires_at, timeout=10, message="retention")
    with pool.connection() as conn:
        after = enqueue(conn, "note", {"n": 3}, **options)
        after_repeat = enqueue(conn, "note", {"n": 4}, **options)
    assert after != first and after_repeat == after
    old, new = get_task(pool, first), get_task(pool, after)
    assert (old.idempotency_key, old.idempotency_expires_at) == (None, None)
    assert (new.idempotency_key, new.input) == ("refresh:7", {"n": 3})
    assert new.idempotency_expires_at is not None and new.idempotency_expires_at > expires_at
    assert len(tasks_named(pool, "note")) == 2


# ---------------------------------------------------------------------------
# Children with a business key
# ---------------------------------------------------------------------------


def order_input(order_id: str, *, child_key: str | None) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "child": "charge",
        "child_input": {"order_id": order_id},
        "child_key": child_key,
    }


def child_of_event(pool: ConnectionPool, task_id: int, event_number: int) -> int:
    with pool.connection() as conn:
        events = Querier(conn).list_task_events(task_id=task_id)
    (event,) = [event for event in events if event.event_number == event_number]
    assert event.kind == EventKind.CHILD and event.child_task_id is not None, event
    return event.child_task_id


def run_durable(pool: ConnectionPool, input: dict[str, Any]) -> Task:
    with pool.connection() as conn:
        task_id = enqueue(conn, "call_child", input, durable=True)
    task = wait_for_task(pool, task_id, timeout=30)
    assert task.status == TaskStatus.COMPLETED, task
    return task


CHARGE_EVENT = 2  # call_child: 1 a step, 2 the child, 3 a step


def test_a_fork_and_a_replay_of_an_order_find_its_charge_instead_of_charging_again(
    database: LessonDatabase,
) -> None:
    """A completed order charged through a child with the business key
    charge:<order>. A fork at the charge's event (it copies event 1, the one
    before the charge, and spawns the charge again) and then a replay of the
    order (its history deleted, everything spawned again) each get the very same
    charge task, finished, as their child, and complete: the charge function
    ran once, and the charge task counts the three spawns. The control: the same
    order with no business key is charged a second time by its fork."""
    pool = database.pool
    with worker(database, queues=["default"]) as process:
        process.start()
        order = run_durable(pool, order_input("A-1", child_key="charge:A-1"))
        charge = child_of_event(pool, order.id, CHARGE_EVENT)
        with pool.connection() as conn:
            forked = fork(conn, order.id, at_event=CHARGE_EVENT)
        assert wait_for_task(pool, forked.id, timeout=30).status == TaskStatus.COMPLETED
        assert child_of_event(pool, forked.id, CHARGE_EVENT) == charge
        with pool.connection() as conn:
            replay(conn, order.id)
        replayed = wait_for_task(pool, order.id, timeout=30)
        assert replayed.status == TaskStatus.COMPLETED
        assert child_of_event(pool, order.id, CHARGE_EVENT) == charge

        # The control: no business key, and the fork charges again.
        unkeyed = run_durable(pool, order_input("B-1", child_key=None))
        with pool.connection() as conn:
            unkeyed_fork = fork(conn, unkeyed.id, at_event=CHARGE_EVENT)
        assert wait_for_task(pool, unkeyed_fork.id, timeout=30).status == TaskStatus.COMPLETED

    charged = runs(pool, "charged")
    charges_of = {
        order_id: [task_id for task_id, _, detail in charged if detail["order_id"] == order_id]
        for order_id in ("A-1", "B-1")
    }
    assert charges_of["A-1"] == [charge]
    assert len(charges_of["B-1"]) == 2 and len(set(charges_of["B-1"])) == 2
    charge_task = get_task(pool, charge)
    assert (charge_task.status, charge_task.parent_id, charge_task.enqueues) == (
        TaskStatus.COMPLETED,
        order.id,
        3,
    )
    assert replayed.output == get_task(pool, forked.id).output == order.output


def suspended_on(pool: ConnectionPool, task_id: int, child_id: int) -> bool:
    """Whether the task is suspended, with no wake-up time, waiting for `child_id`."""
    task = get_task(pool, task_id)
    with pool.connection() as conn:
        events = Querier(conn).list_task_events(task_id=task_id)
    return (
        task.status == TaskStatus.SUSPENDED
        and task.wake_at is None
        and any(event.child_task_id == child_id for event in events)
    )


def test_a_task_sharing_another_tasks_unfinished_child_is_woken_when_it_finishes(
    database: LessonDatabase, gate: Path
) -> None:
    """Two durable orders spawn a child with the same business key. The first
    spawns it, and it runs at a gate; the second gets that same unfinished child
    (it is not its parent) and suspends, with no wake-up time: only the child's end
    can make it runnable, no poll. When the gate opens the child completes once,
    its end wakes both (the parent, and through ListTasksSharingChildren the other),
    and both complete with the child's output."""
    pool = database.pool
    shared = {
        "child": "wait_at_gate",
        "child_input": {"gate": str(gate)},
        "child_key": "pack:parcel-9",
    }
    with worker(database, queues=["default"]) as process, pool.connection() as conn:
        process.start()
        parent = enqueue(conn, "call_child", {"order_id": "P-1", **shared}, durable=True)
        wait_until(lambda: runs(pool, "started"), timeout=30, message="the child never ran")
        child = child_of_event(pool, parent, CHARGE_EVENT)
        sharer = enqueue(conn, "call_child", {"order_id": "P-2", **shared}, durable=True)
        for task_id in (parent, sharer):
            wait_until(
                partial(suspended_on, pool, task_id, child),
                timeout=30,
                message=f"task {task_id} never waited for the child",
            )
        assert get_task(pool, child).status == TaskStatus.RUNNING
        open_gate(gate)
        finished = {
            task_id: wait_for_task(pool, task_id, timeout=30) for task_id in (parent, sharer)
        }
    child_task = get_task(pool, child)
    assert (child_task.status, child_task.parent_id, child_task.enqueues) == (
        TaskStatus.COMPLETED,
        parent,
        2,
    )
    assert [task_id for task_id, _, _ in runs(pool, "started")] == [child]
    for task_id, task in finished.items():
        assert task.status == TaskStatus.COMPLETED and task.output is not None, task
        assert task.output["child_output"] == {"gate": str(gate), "task": child}, task_id
