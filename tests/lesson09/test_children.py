"""Lesson 09, waiting for a child: the parent is suspended and holds no slot;
the child's end makes it runnable in the transaction that records that end, so
no parent is left waiting for a child that has finished, whatever dies when.
"""

from __future__ import annotations

import signal
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from lessons.common.database import connect
from lessons.lesson09_durable_sleep.db.models import Task, TaskEvent, TaskStatus
from lessons.lesson09_durable_sleep.db.queries import Querier
from lessons.lesson09_durable_sleep.demo.tasks import ORDERS_QUEUE
from lessons.lesson09_durable_sleep.engine.client import enqueue, wait_for_task
from lessons.lesson09_durable_sleep.engine.crash_points import CRASH_AT
from lessons.lesson09_durable_sleep.engine.wake_ups import wake_parents
from lessons.lesson09_durable_sleep.engine.worker import Worker
from lessons.lesson09_durable_sleep.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.lesson09.functions import DURABLE_FUNCTIONS, FUNCTIONS
from tests.waiting import wait_until

LESSON = "lesson09_durable_sleep"
# Lesson 08's fallback: wake-ups must come from notifications and timers, not polls.
POLL_INTERVAL = 5.0
HEARTBEAT_INTERVAL = 0.1
INACTIVITY_THRESHOLD = 0.6


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def worker_process(
    database: LessonDatabase, *, slots: int = 2, crash_at: str | None = None
) -> WorkerProcess:
    return WorkerProcess(
        schema=database.schema,
        queues=[ORDERS_QUEUE],
        functions="tests.lesson09.functions",
        slots=slots,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
        verbose=True,
        environment={CRASH_AT: crash_at} if crash_at else None,
    )


def order(order_id: str) -> dict[str, Any]:
    return {"order_id": order_id, "card": "4242", "amount_cents": 4200, "email": "ada@example.com"}


def enqueue_orders(
    pool: ConnectionPool, order_ids: list[str], task_name: str = "process_order"
) -> list[int]:
    with pool.connection() as conn, conn.transaction():
        return [
            enqueue(conn, task_name, order(order_id), queue=ORDERS_QUEUE, durable=True)
            for order_id in order_ids
        ]


def history(pool: ConnectionPool, task_id: int) -> list[TaskEvent]:
    with pool.connection() as conn:
        return Querier(conn).list_task_events(task_id=task_id)


def all_tasks(pool: ConnectionPool) -> list[Task]:
    with pool.connection() as conn:
        return Querier(conn).list_tasks()


def assert_each_order_charged_and_emailed_once(pool: ConnectionPool, order_ids: list[str]) -> None:
    once = Counter(dict.fromkeys(order_ids, 1))
    with pool.connection() as conn:
        queries = Querier(conn)
        charges = Counter(charge.order_id for charge in queries.list_charges())
        emails = Counter(email.order_id for email in queries.list_emails())
    children = Counter(
        (task.task_name, task.input["order_id"])
        for task in all_tasks(pool)
        if task.parent_id is not None
    )
    assert charges == once, "charges per order"
    assert emails == once, "emails per order"
    assert set(children.values()) == {1} and len(children) == 2 * len(order_ids)


def test_a_parent_waiting_for_its_child_holds_no_slot(database: LessonDatabase) -> None:
    """One worker, one slot, parents and children on the same queue. Were a
    waiting parent to hold the slot, its child could never run (lesson 07's
    deadlock); suspended, it gives the slot to its child, and all complete."""
    pool = database.pool
    with pool.connection() as conn, conn.transaction():
        parent_ids = [
            enqueue(conn, "call_a_child", {"n": n}, queue="shared", durable=True) for n in range(5)
        ]
    with Worker(
        pool,
        FUNCTIONS,
        durable_functions=DURABLE_FUNCTIONS,
        queue="shared",
        slots=1,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
    ) as worker:
        parents = [wait_for_task(pool, parent_id, timeout=10) for parent_id in parent_ids]
        assert worker.peak_slots_in_use == 1
    assert [(p.status, p.output, p.attempt) for p in parents] == [
        (TaskStatus.COMPLETED, {"n": n}, 1) for n in range(5)
    ]
    children = [t for t in all_tasks(pool) if t.task_name == "echo"]
    assert len(children) == 5
    assert {child.parent_id for child in children} == set(parent_ids)


def test_a_child_that_finishes_while_its_parent_suspends_waits_for_it_then_wakes_it(
    database: LessonDatabase,
) -> None:
    """The race behind a lost wake-up, one step at a time, on three connections.
    The parent suspends (its row is locked, not yet committed) and has not looked
    at its child. The child finishes, and its transaction tries to wake the
    parent: it must wait for the parent's lock. The parent looks at the child (not
    finished: the child has not committed) and commits its suspension. Only then
    does the child's transaction read the parent, find it suspended, and wake it.
    Had it read the parent without waiting, it would have found it running, woken
    nobody, and the parent would wait for ever."""
    pool = database.pool
    with pool.connection() as conn:
        queries = Querier(conn)
        worker = queries.register_worker(name="test", queue="q", slots=2, lease_seconds=10)
        assert worker is not None
        parent_id = enqueue(conn, "call_a_child", {"n": 1}, queue="q", durable=True)
        [parent] = queries.claim_tasks(
            worker_id=worker.id,
            queue="q",
            task_names=[],
            durable_task_names=["call_a_child"],
            max_tasks=1,
        )
        child = queries.create_task(
            queue="q",
            task_name="echo",
            display_name="echo",
            input_={"n": 1},
            priority=0,
            max_retries=0,
            execution_timeout_seconds=None,
            schedule_timeout_seconds=None,
            durable=False,
            parent_id=parent_id,
        )
        assert child is not None
        [running_child] = queries.claim_tasks(
            worker_id=worker.id,
            queue="q",
            task_names=["echo"],
            durable_task_names=[],
            max_tasks=1,
        )
        assert running_child.id == child.id

    with (
        connect(database.url, schema=database.schema) as parent_conn,
        connect(database.url, schema=database.schema) as child_conn,
    ):
        parent_conn.execute("BEGIN")
        suspended = Querier(parent_conn).suspend_task(
            id=parent_id, attempt=parent.attempt, worker_id=worker.id, wake_at=None
        )
        assert suspended is not None

        def finish_the_child() -> None:
            with child_conn.transaction():
                queries = Querier(child_conn)
                finished = queries.finish_attempts(
                    worker_id=worker.id,
                    ids=[child.id],
                    attempts=[1],
                    succeeded=[True],
                    retryable=[False],
                    infrastructure=[False],
                    outputs=["{}"],
                )
                wake_parents(queries, finished)

        finisher = threading.Thread(target=finish_the_child)
        finisher.start()
        wait_until(
            lambda: waiting_for_a_lock(pool, child_conn.info.backend_pid),
            message="the child's transaction did not wait for the suspending parent",
        )
        seen = Querier(parent_conn).get_task(id=child.id)
        assert seen is not None and seen.status == TaskStatus.RUNNING
        parent_conn.execute("COMMIT")
        finisher.join(timeout=10)

    woken = get_task(pool, parent_id)
    assert woken.status == TaskStatus.SUSPENDED and woken.wake_at is not None


def waiting_for_a_lock(pool: ConnectionPool, backend_pid: int) -> bool:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (backend_pid,)
        ).fetchone()
    return row is not None and row[0] == "Lock"


def get_task(pool: ConnectionPool, task_id: int) -> Task:
    with pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    assert task is not None
    return task


# Each point, the order that gets there (process_order calls its children, so
# its spawn and its suspension are one transaction; the other spawns each child,
# then waits for it, in two), whether the parent is left suspended (on no worker:
# the rescuer resumes its attempt) or running (on the dead worker: the rescuer
# takes it over with a new attempt), and how many events its history holds.
SPAWNING_THEN_WAITING = "process_order_spawning_then_waiting"
CRASH_POINTS = [
    ("call:before_commit", "process_order", TaskStatus.RUNNING, 0),
    ("call:suspended", "process_order", TaskStatus.SUSPENDED, 1),
    ("spawn_child:before_commit", SPAWNING_THEN_WAITING, TaskStatus.RUNNING, 0),
    ("spawn_child:after_commit", SPAWNING_THEN_WAITING, TaskStatus.RUNNING, 1),
    ("wait_for_child:before_commit", SPAWNING_THEN_WAITING, TaskStatus.RUNNING, 1),
    ("wait_for_child:suspended", SPAWNING_THEN_WAITING, TaskStatus.SUSPENDED, 1),
    ("wait_for_child:finished", "process_order", TaskStatus.RUNNING, 1),
    ("task_returned:process_order", "process_order", TaskStatus.RUNNING, 2),
]


@pytest.mark.parametrize(
    ("point", "task_name", "left", "events_at_death"),
    CRASH_POINTS,
    ids=[point for point, _, _, _ in CRASH_POINTS],
)
def test_a_worker_killed_around_a_suspension_leaves_the_order_charged_once_and_emailed_once(
    database: LessonDatabase, point: str, task_name: str, left: TaskStatus, events_at_death: int
) -> None:
    pool = database.pool
    with worker_process(database, crash_at=point) as doomed, worker_process(database) as rescuer:
        doomed.start()
        [order_task_id] = enqueue_orders(pool, ["A-1"], task_name)
        assert doomed.wait(timeout=20) == -signal.SIGKILL, doomed.log()
        [parent] = [t for t in all_tasks(pool) if t.id == order_task_id]
        assert parent.status == left
        assert len(history(pool, order_task_id)) == events_at_death
        # Every event names a child that exists, and no child exists without its event.
        children = [t for t in all_tasks(pool) if t.parent_id == order_task_id]
        assert len(children) == events_at_death, children
        rescuer.start()
        completed = wait_for_task(pool, order_task_id, timeout=30)

    assert completed.status == TaskStatus.COMPLETED, completed
    assert (completed.output or {}).get("status") == "confirmed", completed.output
    # A suspended parent was on no worker when its worker died: that cost no retry.
    assert completed.attempt == (1 if left == TaskStatus.SUSPENDED else 2)
    assert completed.worker_id in rescuer.ids
    assert_each_order_charged_and_emailed_once(pool, ["A-1"])


def test_200_orders_on_three_workers_one_killed_mid_run_none_left_waiting(
    database: LessonDatabase,
) -> None:
    """Many parents suspending while their children finish, on several workers:
    a wake-up lost between a parent looking at its child and suspending would
    leave an order suspended for ever."""
    pool = database.pool
    order_ids = [f"A-{n:03}" for n in range(200)]

    def completed_orders() -> int:
        with pool.connection() as conn:
            statuses = Querier(conn).count_tasks_by_status()
        done = {row.status: row.tasks for row in statuses}.get(TaskStatus.COMPLETED, 0)
        return done // 3  # each completed order comes with its two completed children

    with (
        worker_process(database, slots=4) as first,
        worker_process(database, slots=4) as second,
        worker_process(database, slots=4) as third,
    ):
        for worker in (first, second, third):
            worker.start()
        task_ids = enqueue_orders(pool, order_ids)
        wait_until(lambda: completed_orders() >= 50, message="50 orders did not complete")
        second.kill()
        orders = [wait_for_task(pool, task_id, timeout=60) for task_id in task_ids]

    assert Counter(o.status for o in orders) == {TaskStatus.COMPLETED: 200}
    assert all((o.output or {}).get("status") == "confirmed" for o in orders)
    assert_each_order_charged_and_emailed_once(pool, order_ids)
