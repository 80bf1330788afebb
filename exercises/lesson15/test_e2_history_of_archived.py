"""Read the archive: `history_tool history` of an archived task.

Once retention has archived and removed a tree, `history_tool history` of one
of its tasks says there is no such task. When a task is not in `tasks`, read
it from `archived_tasks`: print the same lines as for the task before it
went, with one more right after the first, `archived YYYY-MM-DD HH:MM:SS
UTC` (when it was archived). The check runs, on a worker process, a durable
order with a step, a child that completes, one that fails, a durable child
and a sleep, and a durable task that stays suspended, under a policy that
archives; it keeps `history` of the order and of each child, then shortens
the period and lets the worker's retention archive and remove the tree:
`history` of each of the four must print what it printed before, with the
`archived` line, exit status 0; of the suspended task, still in `tasks`,
what it printed before, with no `archived` line; of a task that never was,
exit status 1 and `there is no task N`.
"""

from __future__ import annotations

import datetime
import re
import subprocess
import sys
from collections.abc import Callable

import pytest

from exercises import expect
from lessons.lesson15_operating_at_scale.db.models import TaskStatus
from lessons.lesson15_operating_at_scale.db.queries import Querier
from lessons.lesson15_operating_at_scale.engine.client import enqueue, set_retention
from lessons.lesson15_operating_at_scale.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.waiting import wait_until

LESSON = "lesson15_operating_at_scale"
SHOP = "exercises.lesson15.shop"

ARCHIVED_LINE = re.compile(r"archived (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC")


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def history(database: LessonDatabase, task_id: int) -> subprocess.CompletedProcess[str]:
    """`history_tool history TASK`, as an operator runs it."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            f"lessons.{LESSON}.tools.history_tool",
            f"--schema={database.schema}",
            "history",
            str(task_id),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def history_lines(database: LessonDatabase, task_id: int) -> list[str]:
    shown = history(database, task_id)
    assert shown.returncode == 0, f"history of task {task_id}: {shown.stderr}"
    return shown.stdout.splitlines()


def status_of(database: LessonDatabase, task_id: int) -> TaskStatus | None:
    with database.pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    return task.status if task else None


def children_of(database: LessonDatabase, task_id: int) -> list[int]:
    with database.pool.connection() as conn:
        rows = conn.execute(
            "SELECT id FROM tasks WHERE parent_id = %s ORDER BY id", (task_id,)
        ).fetchall()
    return [row[0] for row in rows]


def archived_and_removed(database: LessonDatabase, task_ids: list[int]) -> bool:
    with database.pool.connection() as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM archived_tasks WHERE task_id = ANY(%s)),"
            " (SELECT count(*) FROM tasks WHERE id = ANY(%s))",
            (task_ids, task_ids),
        ).fetchone()
    return row is not None and row[0] == len(task_ids) and row[1] == 0


def last_finished_at(database: LessonDatabase, task_ids: list[int]) -> datetime.datetime:
    with database.pool.connection() as conn:
        row = conn.execute(
            "SELECT max(finished_at) FROM tasks WHERE id = ANY(%s)", (task_ids,)
        ).fetchone()
    assert row is not None and row[0] is not None
    moment: datetime.datetime = row[0]
    return moment.astimezone(datetime.UTC)


def database_now(database: LessonDatabase) -> datetime.datetime:
    with database.pool.connection() as conn:
        row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    moment: datetime.datetime = row[0]
    return moment.astimezone(datetime.UTC)


def show(lines: list[str]) -> str:
    return "\n".join(f"    {line}" for line in lines)


def test_the_history_of_an_archived_task_reads_as_it_did_before_it_went(
    database: LessonDatabase,
) -> None:
    with WorkerProcess(
        schema=database.schema,
        functions=SHOP,
        slots=4,
        poll_interval=0.05,
        heartbeat_interval=0.5,
        inactivity_threshold=5.0,
        retention_interval=0.2,
    ) as worker:
        # Archive from the start, the period still a week: whichever policy a pass reads,
        # a tree it removes is archived.
        with database.pool.connection() as conn:
            set_retention(conn, keep_finished_for=7 * 24 * 3600.0, archive=True)
        worker.start()
        with database.pool.connection() as conn:
            order = enqueue(conn, "audited_checkout", {"order_id": "A-1"}, durable=True)
            held = enqueue(conn, "held", {"order_id": "H-1"}, durable=True)
        wait_until(
            lambda: (
                status_of(database, order) == TaskStatus.COMPLETED
                and status_of(database, held) == TaskStatus.SUSPENDED
            ),
            message=lambda: (
                f"the order is {status_of(database, order)} and the held task "
                f"{status_of(database, held)}\n{worker.log()[-3000:]}"
            ),
        )
        tree = [order, *children_of(database, order)]
        assert len(tree) == 4, f"the order's tree should be four tasks, not {tree}"
        before = {task_id: history_lines(database, task_id) for task_id in [*tree, held]}
        assert "(failed)" in "\n".join(before[order]), show(before[order])

        # No pass archives a task before it has finished.
        archiving_from = last_finished_at(database, tree).replace(microsecond=0)
        with database.pool.connection() as conn:
            set_retention(conn, keep_finished_for=0.2, archive=True)
        wait_until(
            lambda: archived_and_removed(database, tree),
            message=lambda: (
                f"the worker's retention never archived and removed the order's tree {tree}"
                f"\n{worker.log()[-3000:]}"
            ),
        )
        archived_by = database_now(database)

        for task_id in tree:
            shown = history(database, task_id)
            output = (shown.stdout + shown.stderr).strip()
            expect(
                shown.returncode == 0,
                f"`history_tool history {task_id}` of a task retention archived and removed "
                f"should print its history from archived_tasks (exit 0); it exited "
                f"{shown.returncode}: {output}: see exercise 2 in lesson 15's README",
            )
            lines = shown.stdout.splitlines()
            marked = ARCHIVED_LINE.fullmatch(lines[1]) if len(lines) > 1 else None
            expect(
                marked is not None,
                f"the history of archived task {task_id} should say when it was archived on "
                f"its second line, `archived YYYY-MM-DD HH:MM:SS UTC`; it printed:\n"
                f"{show(lines)}",
            )
            assert marked is not None
            when = datetime.datetime.fromisoformat(marked[1]).replace(tzinfo=datetime.UTC)
            expect(
                archiving_from <= when <= archived_by,
                f"archived task {task_id} says it was archived at {when:%H:%M:%S}, but "
                f"retention archived it between {archiving_from:%H:%M:%S} (when its tree "
                f"finished) and {archived_by:%H:%M:%S} UTC",
            )
            expected = [before[task_id][0], lines[1], *before[task_id][1:]]
            expect(
                lines == expected,
                f"the history of archived task {task_id} should read as it did before it "
                f"went, with the `archived` line; before:\n{show(before[task_id])}\n"
                f"archived:\n{show(lines)}",
            )

        still_there = history_lines(database, held)
        expect(
            still_there == before[held],
            f"the history of task {held}, suspended and still in tasks, should not change; "
            f"before:\n{show(before[held])}\nnow:\n{show(still_there)}",
        )
        never = max([*tree, held]) + 1000
        missing = history(database, never)
        expect(
            missing.returncode == 1 and f"there is no task {never}" in missing.stderr,
            f"`history {never}`, a task that never was, should still exit 1 with `there is "
            f"no task {never}`; it exited {missing.returncode}: "
            f"{(missing.stdout + missing.stderr).strip()}",
        )
        expect(worker.stop() == 0, f"the worker did not stop cleanly:\n{worker.log()[-3000:]}")
