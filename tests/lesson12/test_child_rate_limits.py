"""Lesson 12: a durable function's children take a rate limit, like the tasks a client
enqueues. Spawned all at once, they start no faster than the limit allows, across
worker processes; a limit that does not exist, or units it could never grant, fail
the parent readably with nothing written; and a replay that asks for another limit
is a mismatch.

The database's own account is what the tests read: the grants audit of
`test_rate_limits.py` records every start of a rate-limited task at its grant time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import timedelta
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from lessons.lesson12_flow_control.db.models import TaskStatus
from lessons.lesson12_flow_control.db.queries import Querier
from lessons.lesson12_flow_control.engine.client import enqueue, set_rate_limit, wait_for_task
from lessons.lesson12_flow_control.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.lesson12.functions_rates import GRANTS_AUDIT
from tests.lesson12.test_rate_limits import grants_of, most_units_in_a_window

LESSON = "lesson12_flow_control"
FUNCTIONS_MODULE = "tests.lesson12.functions_rates"
QUEUE = "agents"
LIMIT = "model_api"
UNITS = 3
PER = timedelta(seconds=1)
CHILDREN = 12
PROCESSES = 2
# More slots than the limit allows: only the limit holds the children back.
SLOTS = 4


def worker_process(schema: str) -> WorkerProcess:
    return WorkerProcess(
        schema=schema,
        queues=[QUEUE],
        functions=FUNCTIONS_MODULE,
        slots=SLOTS,
        poll_interval=0.05,
        heartbeat_interval=0.1,
        inactivity_threshold=1.0,
    )


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> Iterator[LessonDatabase]:
    """The lesson's schema with the grants audit, the limit, and two worker processes."""
    database = lesson_database(LESSON)
    with database.pool.connection() as conn:
        conn.execute(GRANTS_AUDIT)
        set_rate_limit(conn, LIMIT, UNITS, PER.total_seconds())
    with ExitStack() as stack:
        for _ in range(PROCESSES):
            stack.enter_context(worker_process(database.schema)).start()
        yield database


def run_parent(pool: ConnectionPool, task_name: str, input: Any) -> Any:
    """Enqueue a durable parent with no retries and wait for it to end."""
    with pool.connection() as conn:
        task_id = enqueue(conn, task_name, input, queue=QUEUE, durable=True, max_retries=0)
    return wait_for_task(pool, task_id, timeout=60)


def children_of(pool: ConnectionPool, parent_id: int) -> list[tuple[int, str | None, int | None]]:
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT id, rate_limit, rate_units FROM tasks WHERE parent_id = %s ORDER BY id",
            (parent_id,),
        ).fetchall()
    return [(child_id, limit, units) for child_id, limit, units in rows]


def test_spawned_children_start_no_faster_than_their_rate_limit(
    database: LessonDatabase,
) -> None:
    """12 children spawned at once on a limit of 3 per second, 8 slots between two
    worker processes: no window of a second holds more than 3 starts, and the
    limit is used in full (3 in some window), so the test would see an excess."""
    pool = database.pool
    parent = run_parent(
        pool,
        "fan_out_on_a_rate_limit",
        {"children": CHILDREN, "rate_limit": LIMIT, "seconds": 0.0},
    )
    assert parent.status == TaskStatus.COMPLETED, parent
    children = children_of(pool, parent.id)
    assert [(limit, units) for _, limit, units in children] == [(LIMIT, 1)] * CHILDREN
    grants = grants_of(pool, LIMIT)
    assert sorted(grant.task_id for grant in grants) == [child_id for child_id, _, _ in children]
    assert most_units_in_a_window(grants, PER) == UNITS
    # 12 starts at 3 a second cannot take less than 3 windows.
    assert grants[-1].granted_at - grants[0].granted_at >= 3 * PER


def test_a_called_child_waits_for_its_units(database: LessonDatabase) -> None:
    """`call` (spawn and suspension in one transaction) takes the limit too."""
    pool = database.pool
    parent = run_parent(pool, "call_on_a_rate_limit", {"rate_limit": LIMIT, "rate_units": UNITS})
    assert parent.status == TaskStatus.COMPLETED, parent
    assert parent.output == {"called": True}
    [(child_id, limit, units)] = children_of(pool, parent.id)
    assert (limit, units) == (LIMIT, UNITS)
    assert [grant.task_id for grant in grants_of(pool, LIMIT)] == [child_id]


@pytest.mark.parametrize(
    ("rate_limit", "rate_units", "message"),
    [
        ("no_such_limit", 1, "there is no rate limit 'no_such_limit': set it with set_rate_limit"),
        (LIMIT, UNITS + 1, f"a task takes 1 to {UNITS} units of rate limit '{LIMIT}', not 4"),
        (LIMIT, 0, f"a task takes 1 to {UNITS} units of rate limit '{LIMIT}', not 0"),
    ],
)
def test_a_limit_the_child_cannot_take_fails_the_parent_readably_and_writes_nothing(
    database: LessonDatabase, rate_limit: str, rate_units: int, message: str
) -> None:
    """The refusal is the parent's failure, recorded in its output; the spawn's
    transaction rolled back, so there is no child and no event."""
    pool = database.pool
    parent = run_parent(
        pool, "call_on_a_rate_limit", {"rate_limit": rate_limit, "rate_units": rate_units}
    )
    assert parent.status == TaskStatus.FAILED, parent
    assert message in str(parent.output), parent.output
    assert children_of(pool, parent.id) == []
    with pool.connection() as conn:
        assert Querier(conn).list_task_events(task_id=parent.id) == []


def test_a_replay_that_asks_for_another_limit_is_a_mismatch(
    database: LessonDatabase,
) -> None:
    """Attempt 1 spawns its child on one limit and fails; attempt 2 asks for the
    same child on another: the event's key records the limit, so it does not match."""
    pool = database.pool
    with pool.connection() as conn:
        set_rate_limit(conn, "other_api", UNITS, PER.total_seconds())
        task_id = enqueue(
            conn,
            "change_the_limit_on_retry",
            {"limits": [LIMIT, "other_api"]},
            queue=QUEUE,
            durable=True,
            max_retries=1,
        )
    parent = wait_for_task(pool, task_id, timeout=60)
    assert parent.status == TaskStatus.FAILED, parent
    assert parent.output is not None
    message = parent.output["error"]["message"]
    assert message == (
        'event 1 does not match the history: recorded child work({"child":0}), '
        """new call child work({"child":0}) on rate limit 'other_api' (units: 1)"""
    )
    assert [limit for _, limit, _ in children_of(pool, task_id)] == [LIMIT]
