"""The determinism check: would new code replay the histories in flight?

Before a deploy, run each unfinished durable task's function, in its new
version, against the task's recorded history, and say which tasks would
break, where, and how:

    python -m lessons.lesson16_durable_ai_agent.tools.history_tool \\
        check --functions myapp.tasks_v2

The replay uses `ReplayOnlyContext`, a durable context that only reads. A
recorded operation returns what the history holds, as in any replay (a step's
output, a child's outcome, an event's payload); the first operation the
history does not hold ends the run there, because the new code would go on
live from that point, and that is not the check's business. So the check
never runs a step, spawns a child, sleeps, opens a wait, or writes anything:
every operation asks the history first (`_replay`), and the context raises
instead of doing what a live run does next. Nor does it wait where a live run
would suspend (a child not finished, a wait still open): it stops there too.

What it finds for each task:

- replays: the new code makes the recorded calls, in order, up to where the
  history ends (or returns where the recorded run did);
- breaks: it makes another call (the event number, both calls, and which
  keys of the input changed), returns early, raises where the recorded run
  did not, or has no function of the task's name.

It also says which patches' old paths each replay took (`patched` said
False): the tasks that still need the old path, and so the patch.

A durable function's own code between operations runs, as in any replay: it
must be deterministic, and free of side effects, like every durable function.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

import psycopg
from psycopg_pool import ConnectionPool

from ..db.models import EventWait, Task, TaskEvent, TaskStatus
from ..db.queries import Querier
from .durable import (
    DEFAULT_HISTORY_LIMIT,
    Call,
    Cancelled,
    ChildTask,
    DurableContext,
    DurableFunction,
    FinishedChild,
    NonDeterminismError,
    TaskSuspended,
)
from .statement_retries import StatementRetries
from .transactions import TransactionLimits

# The check's reads ride out a blip like a worker's (it has no lease to outlive).
CHECK_RETRIES = StatementRetries(window_seconds=5.0)
CHECK_LIMITS = TransactionLimits(idle_seconds=5.0, lock_seconds=1.0)


class ReplayStopped(BaseException):
    """The replay reached a point where a live run would go on, or wait: the check stops.

    A `BaseException`, like `TaskSuspended`: an `except Exception:` in the
    durable function does not swallow it and carry on.
    """

    def __init__(self, where: str) -> None:
        self.where = where
        super().__init__(where)


class ReplayOnlyContext(DurableContext):
    """A durable context that reads a history and never adds to it.

    Each override is a point where a live context would write, or wait: here
    the replay stops instead.
    """

    def _replay(self, event_number: int, call: Call) -> TaskEvent | None:
        recorded = super()._replay(event_number, call)
        if recorded is None:
            raise ReplayStopped(
                f"event {event_number}: the history ends; the new code goes on live"
            )
        return recorded

    def _suspend_unless_finished(
        self, child: ChildTask, *, wait: TaskEvent | None = None
    ) -> FinishedChild:
        raise ReplayStopped(f"waits for child task {child.id} ({child.task_name}), unfinished")

    def _ended_wait(self, recorded: TaskEvent) -> EventWait:
        with self.pool.connection() as conn:
            wait = Querier(conn).get_wait(task_id=self.task_id, event_number=recorded.event_number)
        if wait is None:
            raise LookupError(f"event {recorded.event_number} of task {self.task_id} has no wait")
        if wait.ended_at is None:
            raise ReplayStopped(f"event {recorded.event_number}: waits for event {wait.key}")
        return wait

    def _suspend(self, conn: psycopg.Connection[Any], wake_at: datetime | None) -> TaskSuspended:
        raise ReplayStopped(f"sleeps until {wake_at:%Y-%m-%d %H:%M:%S}" if wake_at else "waits")

    def _record_cancellation(self, event_number: int | None) -> NoReturn:
        raise ReplayStopped("meets its cancellation here, live")

    def _continue(self, conn: psycopg.Connection[Any], input_json: str) -> int:
        raise ReplayStopped("continues as new here")


@dataclass(frozen=True)
class CheckedTask:
    """What the check found for one task."""

    task: Task
    breaks: bool
    # For people: where the replay stopped, or why it breaks.
    detail: str
    # The mismatch, when the new code made another call than the history holds.
    mismatch: NonDeterminismError | None
    # The patches whose old path the replay took.
    old_paths_taken: frozenset[str]


def tasks_to_check(
    pool: ConnectionPool, *, ran_since: datetime | None = None, code_version: str | None = None
) -> list[Task]:
    """Every unfinished durable task that has started, and the finished ones whose
    last attempt started since `ran_since`; of `code_version` only, when given."""
    with pool.connection() as conn:
        return Querier(conn).list_durable_tasks_to_check(
            ran_since=ran_since, code_version=code_version
        )


def check_tasks(
    pool: ConnectionPool,
    durable_functions: Mapping[str, DurableFunction],
    tasks: list[Task],
    *,
    history_limit: int = DEFAULT_HISTORY_LIMIT,
) -> Iterator[CheckedTask]:
    """Replay each task's history against `durable_functions`, one task at a time.

    `history_limit` is the workers' (`history_is_long`): where a history ends,
    it says whether the run would continue as new there.
    """
    for task in tasks:
        yield check_task(pool, durable_functions, task, history_limit=history_limit)


def check_task(
    pool: ConnectionPool,
    durable_functions: Mapping[str, DurableFunction],
    task: Task,
    *,
    history_limit: int = DEFAULT_HISTORY_LIMIT,
) -> CheckedTask:
    """Replay one task's history against its function in `durable_functions`."""
    function = durable_functions.get(task.task_name)
    if function is None:
        return CheckedTask(
            task, True, f"the new code has no durable function {task.task_name}", None, frozenset()
        )
    context = ReplayOnlyContext.load(
        pool,
        worker_id=task.worker_id or 0,
        task=task,
        limits=CHECK_LIMITS,
        retries=CHECK_RETRIES,
        history_limit=history_limit,
    )
    # A sleep whose time has come by now is over, as for a run claimed now.
    with pool.connection() as conn:
        now = Querier(conn).database_now()
    if now is not None:
        context.claimed_at = now
    breaks, detail = replay(context, function, task)
    mismatch = context.non_determinism
    if mismatch is not None:  # even one the function caught
        breaks, detail = True, str(mismatch)
    return CheckedTask(task, breaks, detail, mismatch, frozenset(context.old_paths_taken))


def replay(context: ReplayOnlyContext, function: DurableFunction, task: Task) -> tuple[bool, str]:
    """Run `function` on the history: whether it breaks, and where it stopped or why."""
    try:
        try:
            function(context, task.input)
        except Cancelled:
            context.check_whole_history_replayed()
            return False, "compensates and ends cancelled, as recorded"
        context.check_whole_history_replayed()
        return False, "returns: its whole history replays"
    except ReplayStopped as stop:
        return False, f"replays up to where it would go on live: {stop.where}"
    except NonDeterminismError as error:
        return True, str(error)
    except Exception as error:
        recorded_error = (task.output or {}).get("error") or {}
        if task.status == TaskStatus.FAILED and recorded_error.get("type") == type(error).__name__:
            return False, f"raises {type(error).__name__}, as the recorded run did"
        return True, f"the new code raises {type(error).__name__}: {error}"
