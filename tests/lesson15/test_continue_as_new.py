"""Lesson 15's continue-as-new (engine/durable.py), with the real server and real worker processes.

What it proves:

- A durable function with a side-effecting step and child per iteration,
  continuing as new whenever its history holds the worker's `--history-limit`
  events, runs as a chain of tasks linked both ways, carrying its state over;
  each iteration's effects happen once across the whole chain, and
  `history_tool history` shows the links.
- A worker SIGKILLed at the boundary (COURSE_CRASH_AT=continue_as_new:before_commit,
  the successor written and the task completed, not committed) leaves no
  successor; the next attempt, on another worker, replays the history (no
  effect again) and makes exactly one.
- A child task that calls continue_as_new fails with a readable error, and
  makes no successor; a cancelled task meets its cancellation (and
  compensates) instead of continuing.
- The determinism check (`history_tool check`) replays up to the continuation
  and stops there: no successor, the task's row as it was; a live run then
  continues at that very point.

What the functions did is counted from their own rows (`executions`, see
tests/lesson15/functions_continue.py), not from the engine's word.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from lessons.lesson15_operating_at_scale.db.models import EventKind, Task, TaskEvent, TaskStatus
from lessons.lesson15_operating_at_scale.db.queries import Querier
from lessons.lesson15_operating_at_scale.engine.client import (
    cancel,
    enqueue,
    push_event,
    wait_for_task,
)
from lessons.lesson15_operating_at_scale.engine.crash_points import CRASH_AT
from lessons.lesson15_operating_at_scale.tools import history_tool
from lessons.lesson15_operating_at_scale.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.lesson15.functions_continue import arrival_file, next_key
from tests.recording import create_executions_table, open_gate
from tests.waiting import wait_until

LESSON = "lesson15_operating_at_scale"
FUNCTIONS_MODULE = "tests.lesson15.functions_continue"

# Each iteration of `chain` is two events (its step, its child): two iterations a task.
HISTORY_LIMIT = 4


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    created = lesson_database(LESSON, max_size=4)
    with created.pool.connection() as conn:
        create_executions_table(conn)
    return created


def worker_process(
    database: LessonDatabase,
    *,
    history_limit: int = HISTORY_LIMIT,
    environment: dict[str, str] | None = None,
) -> WorkerProcess:
    """A worker process of these tests' functions, with a 1 s lease and no retention."""
    return WorkerProcess(
        schema=database.schema,
        functions=FUNCTIONS_MODULE,
        slots=4,
        poll_interval=0.05,
        heartbeat_interval=0.1,
        inactivity_threshold=1.0,
        retention_interval=0,
        history_limit=history_limit,
        environment=environment,
    )


def submit(pool: ConnectionPool, task_name: str, input: Any) -> int:
    with pool.connection() as conn:
        return enqueue(conn, task_name, input, durable=True)


def get_task(pool: ConnectionPool, task_id: int) -> Task:
    with pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    assert task is not None, f"there is no task {task_id}"
    return task


def all_tasks(pool: ConnectionPool) -> list[Task]:
    with pool.connection() as conn:
        return Querier(conn).list_tasks()


def history_of(pool: ConnectionPool, task_id: int) -> list[TaskEvent]:
    with pool.connection() as conn:
        return Querier(conn).list_task_events(task_id=task_id)


def successors_of(pool: ConnectionPool, task_id: int) -> list[Task]:
    return [task for task in all_tasks(pool) if task.continued_from_task_id == task_id]


def chain_from(pool: ConnectionPool, first: int) -> list[Task]:
    """The tasks of a chain, from `first`, following continued_as_task_id."""
    tasks = [get_task(pool, first)]
    while tasks[-1].continued_as_task_id is not None:
        tasks.append(get_task(pool, tasks[-1].continued_as_task_id))
    return tasks


def wait_for_chain_end(pool: ConnectionPool, first: int) -> list[Task]:
    """Wait until the chain's last task has finished; return the chain."""

    def finished() -> list[Task] | None:
        tasks = chain_from(pool, first)
        last = tasks[-1]
        done = last.status in (TaskStatus.FAILED, TaskStatus.CANCELLED) or (
            last.status == TaskStatus.COMPLETED and last.continued_as_task_id is None
        )
        return tasks if done else None

    return wait_until(finished, timeout=30, message=lambda: str(chain_from(pool, first)))


def effects(pool: ConnectionPool, event: str) -> list[int]:
    """The iterations of each run of `event` ("step", "child"), in the order they ran."""
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT key FROM executions WHERE event = %s ORDER BY seq", (event,)
        ).fetchall()
    return [int(row[0]) for row in rows]


def run_tool_here(
    database: LessonDatabase, capsys: pytest.CaptureFixture[str], *arguments: str
) -> tuple[int, list[str]]:
    """`history_tool.main` in this process: exit status and stdout lines."""
    capsys.readouterr()
    status = history_tool.main([f"--schema={database.schema}", *arguments])
    return status, capsys.readouterr().out.splitlines()


def push(pool: ConnectionPool, key: str) -> None:
    with pool.connection() as conn:
        push_event(conn, key, {"pushed": key})


def waiting_at(pool: ConnectionPool, task_id: int, events: int) -> bool:
    """Whether the task is suspended with `events` events, the last one an open wait."""
    history = history_of(pool, task_id)
    return (
        get_task(pool, task_id).status == TaskStatus.SUSPENDED
        and len(history) == events
        and history[-1].kind == EventKind.WAIT
    )


def wait_waiting_at(pool: ConnectionPool, task_id: int, events: int) -> None:
    wait_until(
        lambda: waiting_at(pool, task_id, events),
        timeout=30,
        message=lambda: (
            f"task {task_id}: {get_task(pool, task_id).status}, "
            f"{len(history_of(pool, task_id))} events"
        ),
    )


# ---------------------------------------------------------------------------
# A chain, each effect once
# ---------------------------------------------------------------------------


def test_a_long_running_function_continues_as_new_every_n_events_and_runs_each_effect_once(
    database: LessonDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    """`chain` of five iterations on a worker whose history limit is 4 events: three
    tasks (two iterations, two, one), each linked to the one before and the one
    after, each with the state carried over as its input; the first two completed
    with outputs that name their successor (and a finish time), the last with the
    final state. Each iteration's step and child ran once. `history_tool history`
    shows the links."""
    pool = database.pool
    with worker_process(database) as process:
        process.start()
        first = submit(pool, "chain", {"iteration": 0, "iterations": 5})
        tasks = wait_for_chain_end(pool, first)

    assert tasks[0].id == first and len(tasks) == 3
    assert [task.input["iteration"] for task in tasks] == [0, 2, 4]
    assert [len(history_of(pool, task.id)) for task in tasks] == [4, 4, 2]
    assert [task.continued_from_task_id for task in tasks] == [None, tasks[0].id, tasks[1].id]
    for earlier, later in pairwise(tasks):
        assert earlier.status == TaskStatus.COMPLETED
        assert earlier.output == {"continued_as": later.id}
        assert earlier.finished_at is not None and earlier.finished_at <= later.inserted_at
    assert tasks[-1].status == TaskStatus.COMPLETED
    assert tasks[-1].output == {"iteration": 5, "iterations": 5}
    assert effects(pool, "step") == [1, 2, 3, 4, 5]
    assert effects(pool, "child") == [1, 2, 3, 4, 5]
    assert len(all_tasks(pool)) == 3 + 5  # the chain, and one child per iteration

    status, lines = run_tool_here(database, capsys, "history", str(tasks[1].id))
    assert status == 0
    assert f"continues task {tasks[0].id} (continue-as-new)" in lines
    assert f"continued as task {tasks[2].id}" in lines
    status, lines = run_tool_here(database, capsys, "history", str(tasks[0].id))
    assert status == 0 and f"continued as task {tasks[1].id}" in lines
    assert not any(line.startswith("continues task") for line in lines)


# ---------------------------------------------------------------------------
# A crash at the boundary
# ---------------------------------------------------------------------------


def test_a_worker_killed_at_the_boundary_leaves_no_successor_and_the_next_attempt_makes_one(
    database: LessonDatabase,
) -> None:
    """A worker with COURSE_CRASH_AT=continue_as_new:before_commit runs `chain` (three
    iterations, limit 4) and is SIGKILLed at the boundary, after two iterations: no
    successor was committed, the task is still running on attempt 1. A second worker
    takes it over once the first's lease has expired: attempt 2 replays the four
    events (no step, no child runs again) and continues, making exactly one
    successor, which runs iteration 3. Each effect happened once."""
    pool = database.pool
    crashing = worker_process(database, environment={CRASH_AT: "continue_as_new:before_commit"})
    with crashing, worker_process(database) as taking_over:
        crashing.start()
        first = submit(pool, "chain", {"iteration": 0, "iterations": 3})
        assert crashing.wait(timeout=30) == -signal.SIGKILL
        assert "crash point continue_as_new:before_commit" in crashing.log()
        crashed = get_task(pool, first)
        assert (crashed.status, crashed.attempt, crashed.continued_as_task_id) == (
            TaskStatus.RUNNING,
            1,
            None,
        )
        assert successors_of(pool, first) == []
        assert len(history_of(pool, first)) == 4
        assert (effects(pool, "step"), effects(pool, "child")) == ([1, 2], [1, 2])

        taking_over.start()
        tasks = wait_for_chain_end(pool, first)

    assert len(tasks) == 2 and [task.id for task in successors_of(pool, first)] == [tasks[1].id]
    assert tasks[0].attempt == 2 and tasks[0].output == {"continued_as": tasks[1].id}
    assert len(history_of(pool, first)) == 4  # the replay recorded nothing new
    assert tasks[1].status == TaskStatus.COMPLETED
    assert tasks[1].output == {"iteration": 3, "iterations": 3}
    assert effects(pool, "step") == [1, 2, 3]
    assert effects(pool, "child") == [1, 2, 3]
    assert len([task for task in all_tasks(pool) if task.task_name == "chain"]) == 2


# ---------------------------------------------------------------------------
# A child, a cancelled task
# ---------------------------------------------------------------------------


def test_a_child_task_that_continues_as_new_fails_with_a_readable_error(
    database: LessonDatabase,
) -> None:
    """A durable child that calls continue_as_new fails (its parent waits for its own
    result, not a successor's): its error says it is a child of its parent and that
    only a task that is no one's child continues as new. No successor exists, and
    the parent, which caught ChildTaskFailed, completes."""
    pool = database.pool
    with worker_process(database) as process:
        process.start()
        parent = submit(pool, "parent_of_continuing_child", {})
        finished = wait_for_task(pool, parent, timeout=30)
    assert finished.status == TaskStatus.COMPLETED, finished
    assert isinstance(finished.output, dict)
    child = get_task(pool, finished.output["child"])
    assert finished.output["error"] == "ValueError"
    assert child.status == TaskStatus.FAILED and child.parent_id == parent
    assert child.output is not None
    assert child.output["error"] == {
        "type": "ValueError",
        "message": f"task {child.id} is a child of task {parent}: only a task that is no "
        "one's child continues as new",
    }
    assert successors_of(pool, child.id) == [] and child.continued_as_task_id is None
    assert child.finished_at is not None


def test_a_cancelled_task_meets_its_cancellation_instead_of_continuing(
    database: LessonDatabase, tmp_path: Path
) -> None:
    """`held_then_continued` holds in a step; the task is cancelled meanwhile, then
    the gate opens. The step is recorded, and the continuation that comes next
    meets the cancellation instead: a cancellation event, the compensation's step,
    and the task ends cancelled, with no successor."""
    pool = database.pool
    gate = tmp_path / "gate"
    with worker_process(database) as process:
        process.start()
        task_id = submit(pool, "held_then_continued", {"gate": str(gate)})
        wait_until(lambda: arrival_file(str(gate), task_id).exists(), timeout=30, message="no hold")
        with pool.connection() as conn:
            status = cancel(conn, task_id, cancelled_by="support desk", reason="refunded")
        assert status == TaskStatus.RUNNING
        open_gate(gate)
        finished = wait_for_task(pool, task_id, timeout=30)
    assert finished.status == TaskStatus.CANCELLED, finished
    assert finished.continued_as_task_id is None and successors_of(pool, task_id) == []
    history = history_of(pool, task_id)
    assert [(str(event.kind), event.name) for event in history] == [
        ("step", "hold"),
        ("cancellation", "support desk"),
        ("step", "undo"),
    ]
    assert effects(pool, "undone") == [0]
    assert finished.finished_at is not None
    assert len(all_tasks(pool)) == 1


# ---------------------------------------------------------------------------
# The determinism check
# ---------------------------------------------------------------------------


def paced_to_the_boundary(
    database: LessonDatabase, *, history_limit: int, state: dict[str, Any]
) -> int:
    """A `paced` task whose history ends where it continues as new, its worker gone:
    two iterations done (four events), the second wait ended, the task due."""
    pool = database.pool
    with worker_process(database, history_limit=history_limit) as process:
        process.start()
        task_id = submit(pool, "paced", {"run": "R", "iteration": 0, "iterations": 3, **state})
        wait_waiting_at(pool, task_id, 2)
        push(pool, next_key("R", 1))
        wait_waiting_at(pool, task_id, 4)
        assert process.stop() == 0
    push(pool, next_key("R", 2))  # ends the wait: a run would go on from here
    return task_id


def check_line(lines: list[str], task_id: int) -> str:
    """What `check --all` says about one task."""
    (line,) = [line for line in lines if line.startswith(f"task {task_id} ")]
    return line


def test_the_determinism_check_stops_at_the_continuation_and_creates_no_successor(
    database: LessonDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    """A `paced` task that continues once its history holds four events, stopped
    right there (its worker gone, its last wait ended). `history_tool check --all`
    replays it up to the continuation and says so, exit 0: no task is created, the
    task's row and history are as they were. A worker then runs it, and it continues
    at that very point: one successor, the history still four events long."""
    pool = database.pool
    task_id = paced_to_the_boundary(database, history_limit=1000, state={"events_per_task": 4})
    before = (all_tasks(pool), history_of(pool, task_id))

    status, lines = run_tool_here(
        database, capsys, "check", f"--functions={FUNCTIONS_MODULE}", "--all"
    )
    assert status == 0, lines
    assert "continues as new here" in check_line(lines, task_id), lines
    assert (all_tasks(pool), history_of(pool, task_id)) == before

    with worker_process(database) as process:
        process.start()
        wait_until(
            lambda: len(successors_of(pool, task_id)) == 1,
            timeout=30,
            message="the task never continued",
        )
        (successor,) = successors_of(pool, task_id)
        wait_waiting_at(pool, successor.id, 2)
    assert get_task(pool, task_id).output == {"continued_as": successor.id}
    assert successor.input["iteration"] == 2
    assert len(history_of(pool, task_id)) == 4
    assert effects(pool, "step") == [1, 2, 3]


def test_the_determinism_check_stops_where_history_is_long_continues_as_new(
    database: LessonDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same, for a `paced` task that continues once its history is long
    (`ctx.history_is_long`), on a worker whose limit is four events: the check, told
    that limit, must stop at the continuation, where the live run continues, too."""
    pool = database.pool
    task_id = paced_to_the_boundary(database, history_limit=4, state={"by_limit": True})
    before = (all_tasks(pool), history_of(pool, task_id))

    # Told the workers' limit: where the history ends, the run would continue.
    status, lines = run_tool_here(
        database, capsys, "check", f"--functions={FUNCTIONS_MODULE}", "--all", "--history-limit=4"
    )
    assert status == 0, lines
    assert (all_tasks(pool), history_of(pool, task_id)) == before
    assert "continues as new here" in check_line(lines, task_id), lines


def test_a_task_whose_history_a_higher_limit_wrote_goes_on_under_a_lower_limit(
    database: LessonDatabase,
) -> None:
    """A `paced` task (continuing when long) runs three iterations, six events, on a
    worker whose limit is 10, and waits. That worker stops; one whose limit is 4
    takes the task on when its event comes. The task must go on: its chain ends
    completed, each iteration's step run once."""
    pool = database.pool
    with worker_process(database, history_limit=10) as process:
        process.start()
        first = submit(
            pool, "paced", {"run": "R", "iteration": 0, "iterations": 4, "by_limit": True}
        )
        for iteration in (1, 2):
            wait_waiting_at(pool, first, 2 * iteration)
            push(pool, next_key("R", iteration))
        wait_waiting_at(pool, first, 6)
        assert process.stop() == 0
    with worker_process(database, history_limit=4) as process:
        process.start()
        push(pool, next_key("R", 3))

        def waiting_last_or_ended() -> bool:
            last = chain_from(pool, first)[-1]
            return last.status in (TaskStatus.FAILED, TaskStatus.COMPLETED) or (
                len(chain_from(pool, first)) > 1 and waiting_at(pool, last.id, 2)
            )

        wait_until(waiting_last_or_ended, timeout=30, message="the task went nowhere")
        push(pool, next_key("R", 4))
        tasks = wait_for_chain_end(pool, first)
    assert [task.status for task in tasks] == [TaskStatus.COMPLETED] * len(tasks), [
        task.output for task in tasks
    ]
    assert effects(pool, "step") == [1, 2, 3, 4]
