"""Lesson 07 with real worker processes: kill one at every awkward moment of
process_order and the order still completes, charged once and emailed once; a
frozen worker that comes back cannot add to the history; 200 orders, three
workers, one killed mid-run: every order charged exactly once.

Each worker process serves both queues (a worker for orders, one for their
steps), with short intervals: poll every 0.02 s, heartbeat every 0.1 s, and a
worker silent for 0.6 s is presumed dead.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from lessons.lesson07_durable_tasks.db.models import Task, TaskEvent, TaskStatus
from lessons.lesson07_durable_tasks.db.queries import Querier
from lessons.lesson07_durable_tasks.demo.tasks import ORDER_STEPS_QUEUE, ORDERS_QUEUE
from lessons.lesson07_durable_tasks.engine.client import enqueue, wait_for_task
from lessons.lesson07_durable_tasks.engine.crash_points import CRASH_AT
from lessons.lesson07_durable_tasks.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.waiting import wait_until

LESSON = "lesson07_durable_tasks"
POLL_INTERVAL = 0.02
HEARTBEAT_INTERVAL = 0.1
INACTIVITY_THRESHOLD = 0.6
BOTH_QUEUES = (ORDERS_QUEUE, ORDER_STEPS_QUEUE)


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def worker_process(
    database: LessonDatabase,
    *,
    queues: Sequence[str] = BOTH_QUEUES,
    slots: int = 2,
    crash_at: str | None = None,
) -> WorkerProcess:
    return WorkerProcess(
        schema=database.schema,
        queues=queues,
        slots=slots,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
        verbose=True,
        environment={CRASH_AT: crash_at} if crash_at else None,
    )


def order(order_id: str) -> dict[str, Any]:
    return {"order_id": order_id, "card": "4242", "amount_cents": 4200, "email": "ada@example.com"}


def enqueue_orders(pool: ConnectionPool, order_ids: list[str]) -> list[int]:
    with pool.connection() as conn, conn.transaction():
        return [
            enqueue(conn, "process_order", order(order_id), queue=ORDERS_QUEUE, durable=True)
            for order_id in order_ids
        ]


def get_task(pool: ConnectionPool, task_id: int) -> Task:
    with pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    assert task is not None
    return task


def history(pool: ConnectionPool, task_id: int) -> list[TaskEvent]:
    with pool.connection() as conn:
        return Querier(conn).list_task_events(task_id=task_id)


def count_by_order(pool: ConnectionPool) -> dict[str, Counter[str]]:
    """For each kind of thing (charges, emails, and each child task name), how many
    there are of it per order id."""
    with pool.connection() as conn:
        queries = Querier(conn)
        counts = {
            "charges": Counter(charge.order_id for charge in queries.list_charges()),
            "emails": Counter(email.order_id for email in queries.list_emails()),
        }
        for task in queries.list_tasks():
            if task.task_name != "process_order":
                counts.setdefault(task.task_name, Counter())[task.input["order_id"]] += 1
    return counts


def assert_each_order_charged_and_emailed_once(pool: ConnectionPool, order_ids: list[str]) -> None:
    once = Counter(dict.fromkeys(order_ids, 1))
    counts = count_by_order(pool)
    assert counts["charges"] == once, "charges per order"
    assert counts["emails"] == once, "emails per order"
    assert counts["charge_payment"] == once, "charge_payment tasks per order"
    assert counts["send_confirmation_email"] == once, "send_confirmation_email tasks per order"


# Each point, and how many events the order's history holds when the worker dies there.
CRASH_POINTS = [
    ("spawn_child:before_commit", 0),
    ("spawn_child:after_commit", 1),
    ("wait_for_child:waiting", 1),
    ("wait_for_child:finished", 1),
    ("task_returned:process_order", 2),
    ("task_returned:charge_payment", 1),
]


@pytest.mark.parametrize(
    ("point", "events_at_death"), CRASH_POINTS, ids=[p for p, _ in CRASH_POINTS]
)
def test_a_worker_killed_at_any_point_of_an_order_leaves_it_charged_once_and_emailed_once(
    database: LessonDatabase, point: str, events_at_death: int
) -> None:
    """The first worker runs everything alone, and SIGKILLs itself at `point`; the
    second, started once it is dead, takes the order (and any child it left
    running) over, replays the history, and completes the order."""
    pool = database.pool
    with worker_process(database, crash_at=point) as doomed, worker_process(database) as rescuer:
        doomed.start()
        [order_task_id] = enqueue_orders(pool, ["A-1"])
        assert doomed.wait(timeout=20) == -signal.SIGKILL, doomed.log()
        assert f"crash point {point}: SIGKILL" in doomed.log()
        assert len(history(pool, order_task_id)) == events_at_death
        rescuer.start()
        completed = wait_for_task(pool, order_task_id, timeout=30)

    assert completed.status == TaskStatus.COMPLETED, completed
    assert (completed.output or {}).get("status") == "confirmed", completed.output
    assert completed.attempt == 2 and completed.worker_id == rescuer.id
    assert_each_order_charged_and_emailed_once(pool, ["A-1"])
    assert [e.name for e in history(pool, order_task_id)] == [
        "charge_payment",
        "send_confirmation_email",
    ]


def test_a_frozen_worker_cannot_add_to_the_history_after_another_took_over(
    database: LessonDatabase,
) -> None:
    """Freeze (SIGSTOP) the worker of an order while it waits for its payment.
    Another worker takes the order over and completes it. Wake the frozen one
    (SIGCONT): its payment has completed, but it must not spawn the email, append
    an event, or record the order; it stops, and the order is as the other left it."""
    pool = database.pool
    with (
        worker_process(database, queues=[ORDERS_QUEUE]) as frozen,
        worker_process(database, queues=[ORDERS_QUEUE]) as rescuer,
        worker_process(database, queues=[ORDER_STEPS_QUEUE]) as steps,
    ):
        frozen.start()
        [order_task_id] = enqueue_orders(pool, ["A-1"])
        # No worker serves the steps yet: the order waits for its queued payment.
        wait_until(lambda: history(pool, order_task_id), message="the payment was not spawned")
        frozen.pause()
        steps.start()
        rescuer.start()
        completed = wait_for_task(pool, order_task_id, timeout=30)
        history_when_completed = history(pool, order_task_id)

        frozen.resume()
        wait_until(
            lambda: "this worker no longer owns that attempt" in frozen.log(),
            message=lambda: f"the frozen worker did not stop:\n{frozen.log()}",
        )
        assert frozen.stop() == 0
        frozen_log = frozen.log()

    assert "stopped: task" in frozen_log
    assert completed.status == TaskStatus.COMPLETED and completed.worker_id == rescuer.id
    assert [(e.name, e.attempt) for e in history_when_completed] == [
        ("charge_payment", 1),
        ("send_confirmation_email", 2),
    ]
    assert history(pool, order_task_id) == history_when_completed
    assert get_task(pool, order_task_id) == completed
    assert_each_order_charged_and_emailed_once(pool, ["A-1"])


def test_200_orders_on_three_workers_one_killed_mid_run_are_each_charged_exactly_once(
    database: LessonDatabase,
) -> None:
    pool = database.pool
    order_ids = [f"A-{n:03}" for n in range(200)]

    def completed_orders() -> int:
        with pool.connection() as conn:
            statuses = Querier(conn).count_tasks_by_status()
        done = {row.status: row.tasks for row in statuses}.get(TaskStatus.COMPLETED, 0)
        return done // 3  # each completed order comes with its two completed children

    with (
        worker_process(database, slots=6) as first,
        worker_process(database, slots=6) as second,
        worker_process(database, slots=6) as third,
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
    survivors = {*first.ids, *third.ids}
    taken_over = [o for o in orders if o.attempt > 1]
    assert taken_over, "the killed worker had no order in flight"
    assert all(o.worker_id in survivors for o in taken_over)
