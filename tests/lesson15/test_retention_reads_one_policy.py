"""A retention batch follows one policy: the one its period and its archive flag come from.

A READ COMMITTED transaction's statements each see the policy as it is when
the statement starts: a batch that read `archive` in one statement and the
period in another could follow two policies. Changed in between, from "a
week, no archive" to "0.2 s, archive", it would remove a tree under the new
period with the old flag: removed, and archived nowhere, although neither
policy says so. So ChooseTreesToRemove reads both. The test changes the policy
while the batch runs, for certain: it holds `task_events` locked, which
ChooseTreesToRemove reads, changes the policy while the batch waits for the
lock, and lets it go; the batch follows the policy it started with, or the
new one, whole.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from lessons.lesson15_operating_at_scale.engine.client import cancel, enqueue, set_retention
from lessons.lesson15_operating_at_scale.engine.retention import Retention
from lessons.lesson15_operating_at_scale.engine.transactions import TransactionLimits
from tests.conftest import LessonDatabase
from tests.waiting import wait_until

LESSON = "lesson15_operating_at_scale"
SHORT = 0.2


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def finished_a_while_ago(database: LessonDatabase, task_id: int) -> bool:
    with database.pool.connection() as conn:
        row = conn.execute(
            "SELECT finished_at < now() - make_interval(secs => %s) FROM tasks WHERE id = %s",
            (SHORT, task_id),
        ).fetchone()
    return bool(row and row[0])


def waits_for_a_lock_on_task_events(database: LessonDatabase) -> bool:
    with database.pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'task_events'::regclass"
        ).fetchone()
    return bool(row and row[0] > 0)


def present_and_archived(database: LessonDatabase, task_id: int) -> tuple[bool, bool]:
    with database.pool.connection() as conn:
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM tasks WHERE id = %s),"
            " EXISTS (SELECT 1 FROM archived_tasks WHERE task_id = %s)",
            (task_id, task_id),
        ).fetchone()
    assert row is not None
    return bool(row[0]), bool(row[1])


def test_a_tree_removed_under_a_policy_that_archives_is_archived(
    database: LessonDatabase,
) -> None:
    with database.pool.connection() as conn:
        task_id = enqueue(conn, "anything", {})
        cancel(conn, task_id, cancelled_by="the test", reason="a finished root, at once")
    wait_until(lambda: finished_a_while_ago(database, task_id), message="the task never finished")
    retention = Retention(
        database.pool,
        worker_id=0,
        interval=60.0,
        # Waits for the test's lock as long as the test holds it.
        limits=TransactionLimits(idle_seconds=30.0, lock_seconds=30.0),
    )
    failures: list[BaseException] = []

    def run_pass() -> None:
        try:
            retention.run_pass()
        except BaseException as error:  # reported by the test's thread
            failures.append(error)

    batch = threading.Thread(target=run_pass)
    with database.pool.connection() as holder, holder.transaction():
        holder.execute("LOCK TABLE task_events IN ACCESS EXCLUSIVE MODE")
        batch.start()
        wait_until(
            lambda: waits_for_a_lock_on_task_events(database),
            message="the retention batch never came to wait for task_events",
        )
        # The batch has read the policy (a week, no archive); it chooses the trees
        # under this one, once the lock is released with this commit.
        set_retention(holder, keep_finished_for=SHORT, archive=True)
    batch.join(timeout=30)
    assert not batch.is_alive() and not failures, failures
    present, archived = present_and_archived(database, task_id)
    assert present or archived, (
        f"task {task_id} was removed under a policy that archives, and archived nowhere"
    )
