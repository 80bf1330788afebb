"""Lesson 09, a worker frozen inside a transaction: it must not hold its locks for ever.

A worker process freezes itself (SIGSTOP, COURSE_FREEZE_AT) at a point inside
one of the engine's multi-statement transactions, holding the row locks that
transaction took. The transaction limits (engine/transactions.py) end its
session, and its locks, within half its inactivity threshold, so that:

- a healthy worker's results are not held up for more than one threshold, even
  when one of them must wake a parent whose row the frozen worker holds;
- the frozen worker's task is reassigned, once its lease expires, within two
  thresholds of the freeze, and completes on the healthy worker. Timed on the
  database's clock from the earliest moment the sweeper's rule allows it
  (tests/takeovers.py), since the healthy worker starts after the freeze, and
  its start-up is slow on a busy machine.

Without the limits the frozen transaction never ends: the healthy worker's
result writer waits behind it for ever (WakeTasks locks the parent's row), and
the sweeps pass over its locked rows (SKIP LOCKED), so nothing is reassigned.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from psycopg_pool import ConnectionPool

from lessons.lesson09_durable_sleep.db.models import Task, TaskStatus
from lessons.lesson09_durable_sleep.db.queries import Querier
from lessons.lesson09_durable_sleep.engine.client import enqueue, wait_for_task
from lessons.lesson09_durable_sleep.engine.crash_points import FREEZE_AT
from lessons.lesson09_durable_sleep.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.lesson09.functions import ARM_FREEZE_AT, CHILDREN_QUEUE
from tests.takeovers import assert_taken_back_in_time, is_frozen, record_takeovers
from tests.waiting import wait_until

LESSON = "lesson09_durable_sleep"
PARENTS_QUEUE = "parents"
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
        functions="tests.lesson09.functions",
        slots=4,
        poll_interval=0.1,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
        verbose=True,
        environment=environment,
    )


def get_task(pool: ConnectionPool, task_id: int) -> Task:
    with pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    assert task is not None
    return task


def all_tasks(pool: ConnectionPool) -> list[Task]:
    with pool.connection() as conn:
        return Querier(conn).list_tasks()


def seconds_until_recorded(pool: ConnectionPool, task_ids: list[int], timeout: float) -> float:
    """How long until every one of `task_ids` is completed, from now."""
    start = time.monotonic()
    wait_until(
        lambda: all(get_task(pool, task_id).status == TaskStatus.COMPLETED for task_id in task_ids),
        timeout=timeout,
        message="the healthy worker's results were not recorded",
    )
    return time.monotonic() - start


def enqueue_trivial_tasks(pool: ConnectionPool) -> list[int]:
    """Three tasks for the healthy worker's children queue: their results share its
    result writer with the child whose end must wake the frozen worker's parent."""
    with pool.connection() as conn:
        return [enqueue(conn, "echo", {"n": n}, queue=CHILDREN_QUEUE) for n in range(3)]


def test_a_worker_frozen_inside_spawn_child_delays_no_result_and_loses_its_parent(
    database: LessonDatabase,
) -> None:
    """The parent spawns child 1, then freezes inside spawn_child of child 2,
    holding its share lock on the parent's row (AppendEvent ... FOR SHARE). A
    healthy worker runs child 1: recording it wakes the parent (WakeTasks ...
    FOR UPDATE), which must not wait for the frozen transaction. Child 1 and
    three trivial tasks are recorded within one threshold; the parent is
    reassigned within two thresholds of the freeze, and completes, with child 1
    from the history and child 2 spawned again."""
    pool = database.pool
    record_takeovers(pool, database.schema)
    frozen = worker_process(
        database, [PARENTS_QUEUE], environment={ARM_FREEZE_AT: "spawn_child:before_commit"}
    )
    healthy = worker_process(database, [PARENTS_QUEUE, CHILDREN_QUEUE])
    with frozen, healthy:
        frozen.start()
        with pool.connection() as conn:
            parent_id = enqueue(
                conn, "spawn_two_children_then_wait", {"n": 7}, queue=PARENTS_QUEUE, durable=True
            )
        wait_until(lambda: is_frozen(frozen.pid), message=frozen.log)
        healthy.start()
        # Child 2 is not committed: only child 1 can be seen.
        [first_child] = [task for task in all_tasks(pool) if task.parent_id == parent_id]
        trivial = enqueue_trivial_tasks(pool)
        recorded_in = seconds_until_recorded(
            pool, [first_child.id, *trivial], timeout=4 * INACTIVITY_THRESHOLD
        )
        assert recorded_in < INACTIVITY_THRESHOLD, healthy.log()
        assert_taken_back_in_time(
            pool, database.schema, parent_id, frozen, healthy, threshold=INACTIVITY_THRESHOLD
        )
        parent = wait_for_task(pool, parent_id, timeout=20)
        assert (parent.status, parent.output) == (
            TaskStatus.COMPLETED,
            [{"n": 7, "child": 1}, {"n": 7, "child": 2}],
        ), healthy.log()
        children = [task for task in all_tasks(pool) if task.parent_id == parent_id]
        assert len(children) == 2, "child 1 came from the history, child 2 was spawned once"
        assert healthy.stop() == 0, healthy.log()


def test_a_worker_frozen_inside_its_result_writer_loses_its_child_and_blocks_no_parent(
    database: LessonDatabase,
) -> None:
    """The frozen worker runs a parent and its child; its result writer freezes
    inside the transaction that records the child and wakes the parent, holding
    both rows. A healthy worker started then records its own results within one
    threshold; the child, still running on the frozen worker once its session
    ends, is reassigned within two thresholds, and the parent completes."""
    pool = database.pool
    record_takeovers(pool, database.schema)
    frozen = worker_process(
        database,
        [PARENTS_QUEUE, CHILDREN_QUEUE],
        environment={FREEZE_AT: "finish_attempts:before_commit"},
    )
    healthy = worker_process(database, [PARENTS_QUEUE, CHILDREN_QUEUE])
    with frozen, healthy:
        frozen.start()
        with pool.connection() as conn:
            parent_id = enqueue(
                conn, "call_on_the_children_queue", {"n": 8}, queue=PARENTS_QUEUE, durable=True
            )
        wait_until(lambda: is_frozen(frozen.pid), message=frozen.log)
        healthy.start()
        [child] = [task for task in all_tasks(pool) if task.parent_id == parent_id]
        recorded_in = seconds_until_recorded(
            pool, enqueue_trivial_tasks(pool), timeout=4 * INACTIVITY_THRESHOLD
        )
        assert recorded_in < INACTIVITY_THRESHOLD, healthy.log()
        assert_taken_back_in_time(
            pool, database.schema, child.id, frozen, healthy, threshold=INACTIVITY_THRESHOLD
        )
        parent = wait_for_task(pool, parent_id, timeout=20)
        assert (parent.status, parent.output) == (TaskStatus.COMPLETED, {"n": 8}), healthy.log()
        finished_child = get_task(pool, child.id)
        assert (finished_child.status, finished_child.attempt) == (TaskStatus.COMPLETED, 2)
        assert healthy.stop() == 0, healthy.log()


def test_a_worker_frozen_inside_wait_for_child_delays_no_result_and_loses_its_parent(
    database: LessonDatabase,
) -> None:
    """The parent has spawned its child (spawn_child, then wait_for_child: `call`
    would spawn and suspend in one transaction) and freezes inside wait_for_child's
    transaction, its row locked by the suspension it has not committed. A
    healthy worker runs the child: recording it wakes the parent, which must not
    wait for the frozen transaction. The child and three trivial tasks are
    recorded within one threshold; the parent is reassigned within two
    thresholds of the freeze, and completes without a second child."""
    pool = database.pool
    record_takeovers(pool, database.schema)
    frozen = worker_process(
        database, [PARENTS_QUEUE], environment={FREEZE_AT: "wait_for_child:before_commit"}
    )
    healthy = worker_process(database, [PARENTS_QUEUE, CHILDREN_QUEUE])
    with frozen, healthy:
        frozen.start()
        with pool.connection() as conn:
            parent_id = enqueue(
                conn,
                "spawn_then_wait_on_the_children_queue",
                {"n": 9},
                queue=PARENTS_QUEUE,
                durable=True,
            )
        wait_until(lambda: is_frozen(frozen.pid), message=frozen.log)
        healthy.start()
        [child] = [task for task in all_tasks(pool) if task.parent_id == parent_id]
        trivial = enqueue_trivial_tasks(pool)
        recorded_in = seconds_until_recorded(
            pool, [child.id, *trivial], timeout=4 * INACTIVITY_THRESHOLD
        )
        assert recorded_in < INACTIVITY_THRESHOLD, healthy.log()
        assert_taken_back_in_time(
            pool, database.schema, parent_id, frozen, healthy, threshold=INACTIVITY_THRESHOLD
        )
        parent = wait_for_task(pool, parent_id, timeout=20)
        assert (parent.status, parent.output) == (TaskStatus.COMPLETED, {"n": 9}), healthy.log()
        assert [task.id for task in all_tasks(pool) if task.parent_id == parent_id] == [child.id]
        assert healthy.stop() == 0, healthy.log()


def test_a_worker_frozen_inside_call_loses_its_parent_and_its_child_never_was(
    database: LessonDatabase,
) -> None:
    """The parent freezes inside call's one transaction: its child created, the
    event naming it written, its own row locked by the suspension, none of it
    committed. No one can see the child, so no one can run it; the parent is
    reassigned within two thresholds of the freeze, and completes with the one
    child its second attempt spawned."""
    pool = database.pool
    record_takeovers(pool, database.schema)
    frozen = worker_process(
        database, [PARENTS_QUEUE], environment={FREEZE_AT: "call:before_commit"}
    )
    healthy = worker_process(database, [PARENTS_QUEUE, CHILDREN_QUEUE])
    with frozen, healthy:
        frozen.start()
        with pool.connection() as conn:
            parent_id = enqueue(
                conn, "call_on_the_children_queue", {"n": 11}, queue=PARENTS_QUEUE, durable=True
            )
        wait_until(lambda: is_frozen(frozen.pid), message=frozen.log)
        healthy.start()
        assert [task for task in all_tasks(pool) if task.parent_id == parent_id] == []
        assert_taken_back_in_time(
            pool, database.schema, parent_id, frozen, healthy, threshold=INACTIVITY_THRESHOLD
        )
        parent = wait_for_task(pool, parent_id, timeout=20)
        assert (parent.status, parent.output) == (TaskStatus.COMPLETED, {"n": 11}), healthy.log()
        assert parent.attempt == 2
        [child] = [task for task in all_tasks(pool) if task.parent_id == parent_id]
        assert child.worker_id in healthy.ids
        assert healthy.stop() == 0, healthy.log()


def test_a_worker_frozen_inside_sleep_loses_its_task_within_two_thresholds(
    database: LessonDatabase,
) -> None:
    """The task freezes inside sleep's transaction: its sleep event written and
    its row locked by the suspension, not yet committed. The sweeps pass over a
    locked row, so without the limits the task would never be reassigned; with
    them it is, within two thresholds of the freeze, and completes on attempt 2,
    its first step replayed, not run again."""
    pool = database.pool
    record_takeovers(pool, database.schema)
    frozen = worker_process(
        database, [PARENTS_QUEUE], environment={FREEZE_AT: "sleep:before_commit"}
    )
    healthy = worker_process(database, [PARENTS_QUEUE])
    with frozen, healthy:
        frozen.start()
        with pool.connection() as conn:
            task_id = enqueue(
                conn, "nap", {"n": 10, "seconds": 0.5}, queue=PARENTS_QUEUE, durable=True
            )
        wait_until(lambda: is_frozen(frozen.pid), message=frozen.log)
        healthy.start()
        assert_taken_back_in_time(
            pool, database.schema, task_id, frozen, healthy, threshold=INACTIVITY_THRESHOLD
        )
        task = wait_for_task(pool, task_id, timeout=20)
        assert (task.status, task.output, task.attempt) == (TaskStatus.COMPLETED, 10, 2)
        with pool.connection() as conn:
            events = Querier(conn).list_task_events(task_id=task_id)
        assert [(event.name, event.attempt) for event in events] == [
            ("before", 1),
            ("sleep", 2),
            ("after", 2),
        ]
        assert healthy.stop() == 0, healthy.log()
