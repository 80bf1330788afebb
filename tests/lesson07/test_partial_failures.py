"""Lesson 07 under partial failures, with real worker processes: a worker frozen
inside spawn_child's transaction, an outage of three leases while durable orders
run, and a rolling deploy in which old workers lack the durable function.

Each worker process serves both queues (a worker for orders, one for their
steps) unless a test says otherwise. The outage goes through a TCP proxy
(tests/database_proxy.py) that the workers connect to, so that the database
vanishes for them while the server itself stays up for the test.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import pytest
from psycopg_pool import ConnectionPool

from lessons.lesson07_durable_tasks.db.models import TaskStatus
from lessons.lesson07_durable_tasks.demo.tasks import ORDER_STEPS_QUEUE, ORDERS_QUEUE
from lessons.lesson07_durable_tasks.engine.client import enqueue, wait_for_task
from lessons.lesson07_durable_tasks.engine.crash_points import FREEZE_AT
from lessons.lesson07_durable_tasks.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.database_proxy import DatabaseProxy
from tests.lesson07.test_crashes import (
    assert_each_order_charged_and_emailed_once,
    enqueue_orders,
    get_task,
    history,
    order,
)
from tests.recording import open_gate
from tests.takeovers import assert_taken_back_in_time, is_frozen, record_takeovers
from tests.waiting import wait_until

LESSON = "lesson07_durable_tasks"
BOTH_QUEUES = (ORDERS_QUEUE, ORDER_STEPS_QUEUE)
FUNCTIONS_MODULE = "tests.lesson07.functions"


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


@pytest.fixture
def proxy(database_url: str) -> Iterator[DatabaseProxy]:
    with DatabaseProxy(database_url) as running:
        yield running


def worker_process(
    database: LessonDatabase,
    *,
    heartbeat_interval: float,
    inactivity_threshold: float,
    queues: Sequence[str] = BOTH_QUEUES,
    functions: str = FUNCTIONS_MODULE,
    slots: int = 2,
    environment: dict[str, str] | None = None,
) -> WorkerProcess:
    return WorkerProcess(
        schema=database.schema,
        queues=queues,
        functions=functions,
        slots=slots,
        poll_interval=0.02,
        heartbeat_interval=heartbeat_interval,
        inactivity_threshold=inactivity_threshold,
        verbose=True,
        environment=environment,
    )


def test_a_worker_frozen_inside_spawn_child_loses_its_order_to_a_healthy_worker_in_time(
    database: LessonDatabase,
) -> None:
    """A worker SIGSTOPs itself inside spawn_child's transaction, after the child's
    insert and the event's append, which holds a share lock on the order's row:
    the sweeps skip a locked row, so unbounded, the order would never be taken
    back. The transaction's idle limit (half a threshold) ends the frozen
    session and its locks before the frozen worker's lease expires; the order is
    taken back no sooner than the rule allows (that lease expired, and the
    healthy worker in touch for a whole lease), and within a threshold of that
    (ten sweeps), on the database's clock; it completes on the healthy worker,
    charged and emailed once. The healthy worker's own orders meanwhile complete,
    their last step within one threshold of their enqueueing. Woken up, the
    frozen worker cannot record anything."""
    pool = database.pool
    threshold = 2.0
    record_takeovers(pool, database.schema)
    frozen = worker_process(
        database,
        heartbeat_interval=0.2,
        inactivity_threshold=threshold,
        queues=[ORDERS_QUEUE],
        environment={FREEZE_AT: "spawn_child:before_commit"},
    )
    healthy = worker_process(database, heartbeat_interval=0.2, inactivity_threshold=threshold)
    with frozen, healthy:
        frozen.start()
        [order_task_id] = enqueue_orders(pool, ["A-1"])
        wait_until(
            lambda: is_frozen(frozen.pid),
            message=lambda: f"the worker did not freeze:\n{frozen.log()}",
        )
        healthy.start()

        for order_id in ["B-1", "B-2", "B-3"]:
            [task_id] = enqueue_orders(pool, [order_id])
            task = wait_for_task(pool, task_id, timeout=30)
            assert task.status == TaskStatus.COMPLETED, task
            assert seconds_to_last_step(pool, task_id, order_id) < threshold, f"{order_id} late"

        assert_taken_back_in_time(
            pool, database.schema, order_task_id, frozen, healthy, threshold=threshold
        )
        completed = wait_for_task(pool, order_task_id, timeout=30)
        assert completed.status == TaskStatus.COMPLETED, completed
        assert (completed.attempt, completed.worker_id) == (2, healthy.ids[0])

        # Woken up, its commit finds the session ended, and its attempt's
        # failure is rejected: the order is not its own any more.
        frozen.resume()
        wait_until(
            lambda: "attempt 1: result rejected" in frozen.log(),
            message=lambda: f"the frozen worker recorded its attempt:\n{frozen.log()}",
        )
        assert frozen.stop() == 0, frozen.log()
        assert healthy.stop() == 0, healthy.log()

    assert [(e.name, e.attempt) for e in history(pool, order_task_id)] == [
        ("charge_payment", 2),
        ("send_confirmation_email", 2),
    ]
    assert get_task(pool, order_task_id) == completed
    assert_each_order_charged_and_emailed_once(pool, ["A-1", "B-1", "B-2", "B-3"])


def seconds_to_last_step(pool: ConnectionPool, task_id: int, order_id: str) -> float:
    """From the order's enqueueing to its email, its last step, on the database's clock."""
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM emails.sent_at - tasks.inserted_at)::float"
            " FROM tasks, emails WHERE tasks.id = %s AND emails.order_id = %s",
            (task_id, order_id),
        ).fetchone()
    assert row is not None, f"{order_id} sent no email"
    return float(row[0])


def test_an_outage_of_three_leases_while_orders_run_condemns_no_worker_and_charges_once(
    database: LessonDatabase, tmp_path: Path, proxy: DatabaseProxy
) -> None:
    """Four worker processes (heartbeat 0.2 s, lease 1 s) each run an order, held
    in its first step; the database is out of their reach for 3 s, three whole
    leases. When it is back, the first worker to beat again finds every other
    lease expired, but must not take their orders: each worker is alive. Every
    order completes on attempt 1, charged and emailed once, and no result is
    rejected."""
    pool = database.pool
    gate = tmp_path / "gate"
    workers = [
        worker_process(
            database,
            heartbeat_interval=0.2,
            inactivity_threshold=1.0,
            slots=1,
            environment={"DATABASE_URL": proxy.url},
        )
        for _ in range(4)
    ]
    order_ids = [f"A-{n}" for n in range(len(workers))]
    with ExitStack() as stack:
        for process in workers:
            stack.enter_context(process).start()
        with pool.connection() as conn:
            ids = [
                enqueue(
                    conn,
                    "process_order_at_gate",
                    {**order(order_id), "gate": str(gate), "started": str(tmp_path / order_id)},
                    queue=ORDERS_QUEUE,
                    durable=True,
                    max_retries=0,
                )
                for order_id in order_ids
            ]
        # Every order is in its first step, which needs no database.
        wait_until(lambda: all((tmp_path / order_id).exists() for order_id in order_ids))

        proxy.cut()
        time.sleep(3.0)  # the outage itself: three leases of every worker
        proxy.restore()
        # Back: every worker renews its lease within a heartbeat or so.
        worker_ids = [worker_id for process in workers for worker_id in process.ids]
        wait_until(lambda: leases_all_renewed(pool, worker_ids))
        open_gate(gate)

        finished = [wait_for_task(pool, task_id, timeout=30) for task_id in ids]
        logs = "\n".join(process.log() for process in workers)
        for task in finished:
            assert (task.status, task.attempt) == (TaskStatus.COMPLETED, 1), (task, logs)
        assert "result rejected" not in logs
        assert "worker lost" not in logs
        for process in workers:
            assert process.stop() == 0, process.log()
    assert_each_order_charged_and_emailed_once(pool, order_ids)


def leases_all_renewed(pool: ConnectionPool, worker_ids: list[int]) -> bool:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT bool_and(lease_expires_at > now()) FROM workers WHERE id = ANY(%s)",
            (worker_ids,),
        ).fetchone()
    return bool(row and row[0])


def test_an_order_waits_for_a_worker_that_has_process_order_during_a_rolling_deploy(
    database: LessonDatabase,
) -> None:
    """An old worker, deployed before process_order was written, runs the
    children but has no durable function for the orders: it leaves them queued,
    never started. Once a new worker joins, every order completes on its first
    attempt, on the new worker, charged and emailed once."""
    pool = database.pool
    old = worker_process(
        database,
        heartbeat_interval=0.1,
        inactivity_threshold=1.0,
        functions="tests.lesson07.functions_before_deploy",
    )
    new = worker_process(database, heartbeat_interval=0.1, inactivity_threshold=1.0)
    order_ids = ["A-1", "A-2", "A-3"]
    with old, new:
        old.start()
        task_ids = enqueue_orders(pool, order_ids)
        time.sleep(1.0)  # fifty of the old worker's polls
        for task_id in task_ids:
            task = get_task(pool, task_id)
            assert (task.status, task.attempt, task.worker_id) == (TaskStatus.QUEUED, 0, None)
        new.start()
        orders = [wait_for_task(pool, task_id, timeout=30) for task_id in task_ids]
        for task in orders:
            assert (task.status, task.attempt) == (TaskStatus.COMPLETED, 1), task
            assert task.worker_id == new.ids[0]
        assert old.stop() == 0, old.log()
        assert new.stop() == 0, new.log()
    assert_each_order_charged_and_emailed_once(pool, order_ids)
