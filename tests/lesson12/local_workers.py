"""What the in-process tests of lesson 12 share: a worker in this process, and a task's row."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from psycopg_pool import ConnectionPool

from lessons.lesson12_flow_control.db.models import Task
from lessons.lesson12_flow_control.db.queries import Querier
from lessons.lesson12_flow_control.engine.worker import Worker
from tests.lesson12.functions_rates import DURABLE_FUNCTIONS, FUNCTIONS


@contextmanager
def local_worker(pool: ConnectionPool, *, queue: str, slots: int = 4) -> Iterator[Worker]:
    """A worker of `queue` in this process, with short intervals, stopped on the way out."""
    with Worker(
        pool,
        FUNCTIONS,
        durable_functions=DURABLE_FUNCTIONS,
        queue=queue,
        slots=slots,
        poll_interval=0.05,
        heartbeat_interval=0.1,
        inactivity_threshold=1.0,
    ) as worker:
        yield worker


def get_task(pool: ConnectionPool, task_id: int) -> Task:
    with pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    assert task is not None, f"there is no task {task_id}"
    return task
