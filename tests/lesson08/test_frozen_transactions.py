"""Lesson 08, a worker frozen inside spawn_child's transaction must not keep its task.

The parent's worker freezes itself (SIGSTOP, COURSE_FREEZE_AT) with spawn_child's
transaction open: the child's row is written, and the parent's row share-locked
(AppendEvent ... FOR SHARE), not yet committed. The sweeps pass over a locked
row (SKIP LOCKED), so without the transaction limits (engine/transactions.py)
the parent would never be reassigned. With them the server ends the frozen
session within half its inactivity threshold, and a healthy worker takes the
parent over once its lease expires, and completes it: charged and emailed once.

The takeover is timed on the database's clock from the earliest moment the
sweeper's rule allows it (tests/takeovers.py), not from the freeze: the healthy
worker's start-up, slow on a busy machine, is not what the limits are about.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from lessons.lesson08_listen_notify.db.models import TaskStatus
from lessons.lesson08_listen_notify.db.queries import Querier
from lessons.lesson08_listen_notify.demo.tasks import ORDER_STEPS_QUEUE, ORDERS_QUEUE
from lessons.lesson08_listen_notify.engine.client import enqueue, wait_for_task
from lessons.lesson08_listen_notify.engine.crash_points import FREEZE_AT
from lessons.lesson08_listen_notify.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.takeovers import assert_taken_back_in_time, is_frozen, record_takeovers
from tests.waiting import wait_until

LESSON = "lesson08_listen_notify"
HEARTBEAT_INTERVAL = 0.2
INACTIVITY_THRESHOLD = 2.0


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def worker_process(
    database: LessonDatabase, queues: list[str], environment: dict[str, str] | None = None
) -> WorkerProcess:
    return WorkerProcess(
        schema=database.schema,
        queues=queues,
        slots=2,
        poll_interval=0.1,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
        verbose=True,
        environment=environment,
    )


def test_a_worker_frozen_inside_spawn_child_loses_its_parent_within_two_thresholds(
    database: LessonDatabase,
) -> None:
    """Taken back no sooner than the rule allows (its lease expired, the healthy
    worker in touch for a whole lease), and within a threshold of that (ten
    sweeps): two thresholds of the freeze, had the healthy worker been running."""
    pool = database.pool
    record_takeovers(pool, database.schema)
    frozen = worker_process(
        database, [ORDERS_QUEUE], environment={FREEZE_AT: "spawn_child:before_commit"}
    )
    healthy = worker_process(database, [ORDERS_QUEUE, ORDER_STEPS_QUEUE])
    with frozen, healthy:
        frozen.start()
        with pool.connection() as conn:
            order = {"order_id": "F-1", "card": "4242", "amount_cents": 4200, "email": "ada@ex"}
            parent_id = enqueue(conn, "process_order", order, queue=ORDERS_QUEUE, durable=True)
        wait_until(lambda: is_frozen(frozen.pid), message=frozen.log)
        healthy.start()
        assert_taken_back_in_time(
            pool, database.schema, parent_id, frozen, healthy, threshold=INACTIVITY_THRESHOLD
        )
        parent = wait_for_task(pool, parent_id, timeout=20)
        assert (parent.status, parent.attempt) == (TaskStatus.COMPLETED, 2), healthy.log()
        with pool.connection() as conn:
            queries = Querier(conn)
            charges = Counter(charge.order_id for charge in queries.list_charges())
            emails = Counter(email.order_id for email in queries.list_emails())
        assert (charges, emails) == (Counter(["F-1"]), Counter(["F-1"]))
        assert healthy.stop() == 0, healthy.log()
