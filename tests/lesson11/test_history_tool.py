"""Lesson 11's command-line tool, run as a real subprocess: its commands show
and change what the README says, and every error is one line on stderr with
its exit code (1: refused, 2: the command line or the database). And the
README's workflow with worker processes: fork an order, workers with the fix
finish it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from lessons.lesson11_retries_replays_forks.db.models import TaskStatus
from lessons.lesson11_retries_replays_forks.db.queries import Querier
from lessons.lesson11_retries_replays_forks.demo.tasks import EMAIL_FIX, ORDERS_QUEUE
from lessons.lesson11_retries_replays_forks.engine.client import wait_for_task
from lessons.lesson11_retries_replays_forks.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.lesson11.helpers import (
    LESSON,
    PARENTS_QUEUE,
    POLL_INTERVAL,
    enqueue_durable,
    get_task,
    history,
    push_once_waiting,
    run_until_finished,
    workers,
)
from tests.waiting import wait_until

TOOL = f"lessons.{LESSON}.tools.history_tool"


@dataclass(frozen=True)
class Tasks:
    """The tasks of the tool's test database, by what they are."""

    finished: int  # step_then_three_children, completed: 4 events
    child: int  # its event 2's child, an echo task (not durable)
    empty: int  # record_nothing, completed with no events
    queued: int  # on a queue no worker serves
    running: int  # claimed by a worker registered by the test, never finished
    suspended: int  # wait_for_ever, waiting for an event nobody pushes


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON, max_size=24)


@pytest.fixture
def tasks(database: LessonDatabase) -> Tasks:
    finished = enqueue_durable(database, "step_then_three_children", {"label": "tool"})
    empty = enqueue_durable(database, "record_nothing", None)
    suspended = enqueue_durable(database, "wait_for_ever", None)
    with workers(database):
        wait_for_task(database.pool, finished)
        wait_for_task(database.pool, empty)
        wait_until(lambda: get_task(database.pool, suspended).status == TaskStatus.SUSPENDED)
    child = history(database.pool, finished)[1].child_task_id
    assert child is not None
    running = enqueue_durable(database, "record_nothing", None, queue="claimed_by_hand")
    queued = enqueue_durable(database, "record_nothing", None, queue="unserved")
    with database.pool.connection() as conn:
        queries = Querier(conn)
        worker = queries.register_worker(
            name="test", queue="claimed_by_hand", slots=1, lease_seconds=10
        )
        assert worker is not None
        queries.claim_tasks(
            worker_id=worker.id,
            queue="claimed_by_hand",
            task_names=[],
            durable_task_names=["record_nothing"],
            max_tasks=1,
        )
    return Tasks(
        finished=finished,
        child=child,
        empty=empty,
        queued=queued,
        running=running,
        suspended=suspended,
    )


def tool(
    database: LessonDatabase, *arguments: str, url: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m ...history_tool --schema <the test's> ARGUMENTS`, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", TOOL, "--schema", database.schema, *arguments],
        env={**os.environ, "DATABASE_URL": url or database.url},
        capture_output=True,
        text=True,
        timeout=60,
    )


def refused(completed: subprocess.CompletedProcess[str], exit_code: int) -> str:
    """The one line of an error; checks that nothing else was written."""
    assert completed.returncode == exit_code, completed
    assert completed.stdout == "", completed.stdout
    lines = completed.stderr.splitlines()
    assert len(lines) == 1, completed.stderr
    return lines[0]


REFUSALS: list[tuple[str, list[str], str]] = [
    ("unknown task: history", ["history", "999"], "error: there is no task 999"),
    ("unknown task: tree", ["tree", "999"], "error: there is no task 999"),
    ("unknown task: replay", ["replay", "999"], "error: there is no task 999"),
    ("unknown task: fork", ["fork", "999", "--at", "1"], "error: there is no task 999"),
    (
        "N after the history",
        ["fork", "{finished}", "--at", "5"],
        "error: task {finished} has events 1 to 4: there is no event 5 to fork at",
    ),
    (
        "N before the history",
        ["fork", "{finished}", "--at", "0"],
        "error: task {finished} has events 1 to 4: there is no event 0 to fork at",
    ),
    (
        "no history at all",
        ["fork", "{empty}", "--at", "1"],
        "error: task {empty} has no events to fork at; replay it instead",
    ),
    (
        "fork of a running task",
        ["fork", "{running}", "--at", "1"],
        "error: task {running} (record_nothing) is running: only a completed or failed task "
        "can be forked; wait until it has finished",
    ),
    (
        "replay of a running task",
        ["replay", "{running}"],
        "error: task {running} (record_nothing) is running: only a completed or failed task "
        "can be replayed; wait until it has finished",
    ),
    (
        "fork of a queued task",
        ["fork", "{queued}", "--at", "1"],
        "error: task {queued} (record_nothing) is queued: only a completed or failed task "
        "can be forked; wait until it has finished",
    ),
    (
        "replay of a queued task",
        ["replay", "{queued}"],
        "error: task {queued} (record_nothing) is queued: only a completed or failed task "
        "can be replayed; wait until it has finished",
    ),
    (
        "fork of a suspended task",
        ["fork", "{suspended}", "--at", "1"],
        "error: task {suspended} (wait_for_ever) is suspended: only a completed or failed task "
        "can be forked; wait until it has finished",
    ),
    (
        "replay of a task that is not durable",
        ["replay", "{child}"],
        "error: task {child} (echo) is not durable: it has no history to be replayed",
    ),
    (
        "fork of a task that is not durable",
        ["fork", "{child}", "--at", "1"],
        "error: task {child} (echo) is not durable: it has no history to be forked",
    ),
]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [(arguments, message) for _, arguments, message in REFUSALS],
    ids=[name for name, _, _ in REFUSALS],
)
def test_a_refused_command_is_one_line_and_exit_code_1_and_changes_nothing(
    database: LessonDatabase, tasks: Tasks, arguments: list[str], message: str
) -> None:
    ids = vars(tasks)
    with database.pool.connection() as conn:
        before = Querier(conn).list_tasks(), history(database.pool, tasks.finished)
    completed = tool(database, *(argument.format(**ids) for argument in arguments))
    assert refused(completed, 1) == message.format(**ids)
    with database.pool.connection() as conn:
        assert (Querier(conn).list_tasks(), history(database.pool, tasks.finished)) == before


def test_a_running_task_whose_worker_holds_its_row_is_refused_without_waiting(
    database: LessonDatabase, tasks: Tasks
) -> None:
    """A worker frozen while it appends an event keeps the task's row locked
    (FOR SHARE) until it wakes up; the tool must not wait for it to refuse."""
    with database.pool.connection() as frozen_worker, frozen_worker.transaction():
        frozen_worker.execute("SELECT 1 FROM tasks WHERE id = %s FOR SHARE", (tasks.running,))
        started = time.monotonic()
        completed = tool(database, "replay", str(tasks.running))
        assert time.monotonic() - started < 10
    assert refused(completed, 1).startswith(
        f"error: task {tasks.running} (record_nothing) is running"
    )


def test_a_schema_without_the_lesson_s_tables_is_one_line_and_exit_code_2(
    database: LessonDatabase, fresh_schema: str
) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", TOOL, "--schema", fresh_schema, "list"],
        env={**os.environ, "DATABASE_URL": database.url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused(completed, 2) == (
        f"error: schema {fresh_schema} has no tasks table: run this lesson's main.py first, "
        "or name another schema with --schema"
    )


def test_an_unreachable_database_is_one_line_and_exit_code_2(database: LessonDatabase) -> None:
    completed = tool(database, "list", url="postgresql://nobody@127.0.0.1:1/nothing")
    line = refused(completed, 2)
    assert line.startswith(
        "error: cannot connect to PostgreSQL at postgresql://nobody@127.0.0.1:1/nothing"
    )


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (["fork", "1"], "the following arguments are required: --at"),
        (["history", "one"], "argument task: invalid int value: 'one'"),
        (["rewind", "1"], "invalid choice: 'rewind'"),
        ([], "the following arguments are required: COMMAND"),
        (["list", "--limit", "0"], "argument --limit: expected a whole number, 1 or more, not '0'"),
    ],
    ids=[
        "fork without --at",
        "a task that is not a number",
        "unknown command",
        "no command",
        "an empty list",
    ],
)
def test_a_command_line_that_does_not_parse_is_exit_code_2_with_usage(
    database: LessonDatabase, arguments: list[str], complaint: str
) -> None:
    completed = tool(database, *arguments)
    assert completed.returncode == 2 and completed.stdout == ""
    assert completed.stderr.startswith("usage: ")
    assert complaint in completed.stderr.splitlines()[-1]


def test_help_lists_every_command(database: LessonDatabase) -> None:
    completed = tool(database, "--help")
    assert completed.returncode == 0, completed.stderr
    for command in ("list", "history", "tree", "replay", "fork"):
        assert re.search(rf"^    {command} ", completed.stdout, re.MULTILINE), completed.stdout


def test_history_shows_each_event_with_its_key_child_and_time(
    database: LessonDatabase, tasks: Tasks
) -> None:
    completed = tool(database, "history", str(tasks.finished))
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0] == (
        f"task {tasks.finished} step_then_three_children (durable): completed on attempt 1"
    )
    assert re.fullmatch(r"enqueued \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", lines[1])
    heading = "event kind name key child task attempt recorded at until copied from"
    assert lines[2].split() == heading.split()
    events = history(database.pool, tasks.finished)
    for line, event in zip(lines[3:], events, strict=True):
        child = [str(event.child_task_id), "(completed)"] if event.child_task_id else []
        assert line.split()[:-1] == [
            str(event.event_number), event.kind, event.name, event.key[:8], *child, "1",
        ]  # fmt: skip
        assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", line.split()[-1])


def test_fork_then_history_tree_and_list_show_the_lineage(
    database: LessonDatabase, tasks: Tasks
) -> None:
    finished = tasks.finished
    completed = tool(database, "fork", str(finished), "--at", "3")
    assert completed.returncode == 0, completed.stderr
    first_line = completed.stdout.splitlines()[0]
    match = re.fullmatch(
        rf"task (\d+) \(step_then_three_children\) is a fork of task {finished} at event 3, "
        rf"queued on {PARENTS_QUEUE}\.",
        first_line,
    )
    assert match, completed.stdout
    fork_id = int(match.group(1))
    reused = history(database.pool, finished)[1].child_task_id
    assert completed.stdout.splitlines()[1] == (
        f"It starts with a copy of events 1 to 2, and runs from event 3 on; "
        f"it reuses child task {reused}."
    )
    assert run_until_finished(database, fork_id).status == TaskStatus.COMPLETED

    shown = tool(database, "history", str(fork_id)).stdout.splitlines()
    assert shown[2] == f"forked from task {finished} at event 3"
    assert [line.endswith(f"task {finished}") for line in shown[4:]] == [True, True, False, False]

    tree = tool(database, "tree", str(finished)).stdout.splitlines()
    original, forked = history(database.pool, finished), history(database.pool, fork_id)
    assert tree == [
        f"task {finished} step_then_three_children (durable): completed on attempt 1",
        f"├── event 2 echo: task {original[1].child_task_id} (completed)",
        f"├── event 3 echo: task {original[2].child_task_id} (completed)",
        f"├── event 4 echo: task {original[3].child_task_id} (completed)",
        f"└── fork at event 3: task {fork_id} step_then_three_children (durable): "
        "completed on attempt 1",
        f"    ├── event 2 echo: task {original[1].child_task_id} (completed), "
        f"copied from task {finished}",
        f"    ├── event 3 echo: task {forked[2].child_task_id} (completed)",
        f"    └── event 4 echo: task {forked[3].child_task_id} (completed)",
    ]

    listed = tool(database, "list").stdout.splitlines()
    assert listed[0].split() == [
        "task",
        "name",
        "durable",
        "status",
        "attempts",
        "age",
        "forked",
        "from",
    ]
    [fork_line] = [line for line in listed if line.split()[0] == str(fork_id)]
    assert re.fullmatch(
        rf"{fork_id} +step_then_three_children +yes +completed +1 +\d+ s +"
        rf"task {finished} at event 3",
        fork_line.strip(),
    ), fork_line
    assert len(tool(database, "list", "--limit", "3").stdout.splitlines()) == 1 + 3


def test_replay_says_what_it_deleted_and_queues_the_task(
    database: LessonDatabase, tasks: Tasks
) -> None:
    children = [e.child_task_id for e in history(database.pool, tasks.finished)][1:]
    completed = tool(database, "replay", str(tasks.finished))
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == [
        f"task {tasks.finished} (step_then_three_children) is queued to run from scratch; "
        "4 events deleted.",
        f"The children they recorded (tasks {', '.join(map(str, children))}) stay as they are: "
        "the next run spawns new ones.",
    ]
    task = get_task(database.pool, tasks.finished)
    assert (task.status, history(database.pool, task.id)) == (TaskStatus.QUEUED, [])
    assert run_until_finished(database, task.id).attempt == 2
    shown = tool(database, "history", str(task.id)).stdout.splitlines()
    assert shown[:3][-1] == "replayed after attempt 1"


def test_an_operator_forks_an_order_and_worker_processes_with_the_fix_finish_it(
    database: LessonDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's workflow, end to end in real processes: workers without the
    fix run the order; workers started with COURSE_EMAIL_FIX=deployed run the
    fork the tool creates, and send the fixed email without a new approval and
    without charging again."""
    monkeypatch.delenv(EMAIL_FIX, raising=False)
    order = {"order_id": "A-7", "card": "4242", "amount_cents": 100, "email": "ada@x.org"}
    with worker_process(database) as before_the_fix:
        before_the_fix.start()
        order_id = enqueue_durable(database, "process_order", order, queue=ORDERS_QUEUE)
        push_once_waiting(database, order_id, "approval:A-7", {"approved": True})
        assert wait_for_task(database.pool, order_id).status == TaskStatus.COMPLETED
        assert before_the_fix.stop() == 0
    with worker_process(database, {EMAIL_FIX: "deployed"}) as after_the_fix:
        after_the_fix.start()
        completed = tool(database, "fork", str(order_id), "--at", "3")
        assert completed.returncode == 0, completed.stderr
        fork_id = int(completed.stdout.split()[1])
        assert wait_for_task(database.pool, fork_id).status == TaskStatus.COMPLETED
        assert after_the_fix.stop() == 0
    with database.pool.connection() as conn:
        charges, emails = Querier(conn).list_charges(), Querier(conn).list_emails()
    assert len(charges) == 1
    assert [email.subject for email in emails] == [
        "Order A-7: your payment failed",
        f"Order A-7: paid, charge {charges[0].id}",
    ]


def worker_process(
    database: LessonDatabase, environment: dict[str, str] | None = None
) -> WorkerProcess:
    """A worker process for the orders and their children, with short intervals."""
    return WorkerProcess(
        schema=database.schema,
        queues=[ORDERS_QUEUE],
        slots=2,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=0.1,
        inactivity_threshold=1.0,
        environment=environment,
    )
