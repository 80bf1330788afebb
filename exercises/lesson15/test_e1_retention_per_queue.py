"""Retention per queue: `set_retention(conn, keep_finished_for=..., queue=...)`.

One policy keeps a failed payment as long as a confirmation email. Give
`retention_policy` a `queue` column, a row per queue, with the row whose
queue is NULL as the default for the queues without one; let `set_retention`
take `queue` (None, the default row, unless told otherwise) and set that
row's period and archive flag alone; and have retention apply to each tree
the row of its root's queue. The check runs trees on three queues on a
worker process (its own retention off) and runs retention passes itself:
with the default at an hour and `emails` at half a second, a pass removes
the trees whose root is on `emails`, a child on `payments` with them, and
nothing else, archiving none; with `payments` set to an hour, then the
default to half a second with archive, a pass removes the default queue's
tree, archived, and keeps the `payments` trees, a child on `emails` with
them; with `payments` set again, to half a second, a pass removes those, not
archived.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import ExitStack

import pytest

from exercises import expect
from lessons.lesson15_operating_at_scale.engine import client
from lessons.lesson15_operating_at_scale.engine.client import enqueue
from lessons.lesson15_operating_at_scale.engine.retention import Retention
from lessons.lesson15_operating_at_scale.engine.transactions import TransactionLimits
from lessons.lesson15_operating_at_scale.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.waiting import wait_until

LESSON = "lesson15_operating_at_scale"
SHOP = "exercises.lesson15.shop"
QUEUES = ["default", "emails", "payments"]

# Short enough to pass while the check waits; long enough never to.
SHORT = 0.5
LONG = 3600.0


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def has_queue_column(database: LessonDatabase) -> bool:
    with database.pool.connection() as conn:
        row = conn.execute(
            "SELECT 1 FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = 'retention_policy'"
            " AND column_name = 'queue'",
            (database.schema,),
        ).fetchone()
    return row is not None


def set_retention(
    database: LessonDatabase, keep_finished_for: float, *, archive: bool = False, **queue: str
) -> None:
    """`client.set_retention`, with `queue=` only when given: the default row's call is the
    lesson's own."""
    # Typed loosely: the lesson as shipped has no `queue` parameter.
    setter: Callable[..., None] = client.set_retention
    with database.pool.connection() as conn:
        setter(conn, keep_finished_for=keep_finished_for, archive=archive, **queue)


def run_retention_pass(database: LessonDatabase) -> None:
    """One pass, as a worker's retention thread runs it: every batch it can."""
    retention = Retention(
        database.pool,
        worker_id=0,
        interval=LONG,
        limits=TransactionLimits.for_worker(inactivity_threshold=10.0),
    )
    retention.run_pass()


def tree_of(database: LessonDatabase, root_id: int) -> list[int]:
    """The root and its children (the checks' trees are one level deep)."""
    with database.pool.connection() as conn:
        rows = conn.execute(
            "SELECT id FROM tasks WHERE id = %s OR parent_id = %s ORDER BY id", (root_id, root_id)
        ).fetchall()
    return [row[0] for row in rows]


def finished_before_short(database: LessonDatabase, task_ids: list[int]) -> bool:
    """Whether every task has finished, longer ago than the short period."""
    with database.pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE finished_at < now() - make_interval(secs => %s))"
            " FROM tasks WHERE id = ANY(%s)",
            (SHORT, task_ids),
        ).fetchone()
    return bool(row and row[0] == len(task_ids))


def present(database: LessonDatabase, task_ids: list[int]) -> set[int]:
    with database.pool.connection() as conn:
        rows = conn.execute("SELECT id FROM tasks WHERE id = ANY(%s)", (task_ids,)).fetchall()
    return {row[0] for row in rows}


def archived(database: LessonDatabase, task_ids: list[int]) -> set[int]:
    with database.pool.connection() as conn:
        rows = conn.execute(
            "SELECT task_id FROM archived_tasks WHERE task_id = ANY(%s)", (task_ids,)
        ).fetchall()
    return {row[0] for row in rows}


def test_each_tree_is_kept_for_the_period_of_its_roots_queue(database: LessonDatabase) -> None:
    expect(
        "queue" in inspect.signature(client.set_retention).parameters,
        "lesson 15's set_retention() has no `queue` parameter yet: see exercise 1 in its README",
    )
    expect(
        has_queue_column(database),
        "lesson 15's retention_policy has no `queue` column yet: see exercise 1 in its README",
    )
    set_retention(database, LONG)
    set_retention(database, SHORT, queue="emails")
    with ExitStack() as stack:
        worker = stack.enter_context(
            WorkerProcess(
                schema=database.schema,
                queues=QUEUES,
                functions=SHOP,
                slots=4,
                poll_interval=0.05,
                heartbeat_interval=0.5,
                inactivity_threshold=5.0,
                retention_interval=0,  # the check runs the passes
            )
        )
        worker.start()
        with database.pool.connection() as conn:
            roots = {
                # A tree of one task on each queue.
                "the email": enqueue(conn, "note", {"n": 1}, queue="emails"),
                "the payment": enqueue(conn, "note", {"n": 2}, queue="payments"),
                "the default queue's task": enqueue(conn, "note", {"n": 3}),
                # A root on one queue with its child on another.
                "the email checkout": enqueue(
                    conn,
                    "checkout",
                    {"order_id": "E-1", "child_queue": "payments"},
                    queue="emails",
                    durable=True,
                ),
                "the payment checkout": enqueue(
                    conn,
                    "checkout",
                    {"order_id": "P-1", "child_queue": "emails"},
                    queue="payments",
                    durable=True,
                ),
            }
        wait_until(
            lambda: (
                len(tree_of(database, roots["the email checkout"])) == 2
                and len(tree_of(database, roots["the payment checkout"])) == 2
            ),
            message=lambda: f"the checkouts never spawned their children\n{worker.log()[-3000:]}",
        )
        trees = {name: tree_of(database, root) for name, root in roots.items()}
        every_task = sorted(task for tree in trees.values() for task in tree)
        wait_until(
            lambda: finished_before_short(database, every_task),
            message=lambda: f"the shop's tasks never all finished\n{worker.log()[-3000:]}",
        )
    # The worker is gone: nothing but the check's passes removes a task from here on.

    def expect_after_pass(gone: list[str], kept: list[str], policy: str) -> None:
        run_retention_pass(database)
        for name in gone:
            expect(
                not present(database, trees[name]),
                f"{policy}: a retention pass should remove {name}'s tree {trees[name]}, but "
                f"tasks {sorted(present(database, trees[name]))} are still there",
            )
        for name in kept:
            expect(
                present(database, trees[name]) == set(trees[name]),
                f"{policy}: a retention pass should keep {name}'s tree {trees[name]} whole, "
                f"but only tasks {sorted(present(database, trees[name]))} are left",
            )

    expect_after_pass(
        gone=["the email", "the email checkout"],
        kept=["the payment", "the default queue's task", "the payment checkout"],
        policy=f"with the default kept {LONG:.0f} s and `emails` {SHORT} s",
    )
    removed = trees["the email"] + trees["the email checkout"]
    expect(
        not archived(database, removed),
        f"`emails`' row does not archive, yet tasks {sorted(archived(database, removed))} "
        "were archived",
    )

    set_retention(database, LONG, queue="payments")
    set_retention(database, SHORT, archive=True)
    expect_after_pass(
        gone=["the default queue's task"],
        kept=["the payment", "the payment checkout"],
        policy=f"with `payments` kept {LONG:.0f} s, then the default {SHORT} s with archive",
    )
    default_tree = trees["the default queue's task"]
    expect(
        archived(database, default_tree) == set(default_tree),
        f"the default row archives: the default queue's task {default_tree} should be in "
        f"archived_tasks, but only {sorted(archived(database, default_tree))} are",
    )

    set_retention(database, SHORT, queue="payments")
    expect_after_pass(
        gone=["the payment", "the payment checkout"],
        kept=[],
        policy=f"with `payments` set again, to {SHORT} s",
    )
    payments = trees["the payment"] + trees["the payment checkout"]
    expect(
        not archived(database, payments),
        f"`payments`' row does not archive, yet tasks {sorted(archived(database, payments))} "
        "were archived",
    )
