"""Putting tasks on the queue, and waiting for their results."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from ..db.models import Task
from ..db.queries import Querier
from .shared import DEFAULT_QUEUE, FINISHED_STATUSES, to_json


def enqueue(
    conn: psycopg.Connection[Any],
    task_name: str,
    input: Any,
    *,
    queue: str = DEFAULT_QUEUE,
    display_name: str | None = None,
) -> int:
    """Add a task to `queue` and return its id.

    It takes a connection, not a pool, so that a caller can enqueue inside its
    own transaction: the task then exists if and only if that transaction commits.
    An input that is not JSON is refused here, before anything is written.
    """
    to_json(input, f"the input of {task_name}")
    try:
        task = Querier(conn).create_task(
            queue=queue,
            task_name=task_name,
            display_name=display_name or task_name,
            input_=input,
        )
    except psycopg.DataError as error:
        # JSON that jsonb still refuses: a string holding U+0000.
        raise ValueError(f"the input of {task_name} cannot be stored: {error}") from error
    if task is None:  # INSERT ... RETURNING always returns the row
        raise RuntimeError(f"enqueueing {task_name} returned no row")
    return task.id


def wait_for_task(
    pool: ConnectionPool, task_id: int, *, timeout: float = 10.0, poll_interval: float = 0.05
) -> Task:
    """Poll until the task is completed or failed, and return it."""
    deadline = time.monotonic() + timeout
    while True:
        with pool.connection() as conn:
            task = Querier(conn).get_task(id=task_id)
        if task is None:
            raise LookupError(f"there is no task {task_id}")
        if task.status in FINISHED_STATUSES:
            return task
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task_id} is still {task.status} after {timeout} s")
        time.sleep(poll_interval)
