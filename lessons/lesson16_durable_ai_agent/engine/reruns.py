"""Running a finished durable task again, two ways: replay it, or fork it.

A durable task already runs again on its own when an attempt fails: that is a
*retry*, and it keeps the history, so whatever was recorded is reused, not done
again (lessons 05 to 07). An operator has two more ways, once a task has
finished:

- **Replay** deletes the task's history and puts it back on the queue. It runs
  from scratch: every step runs again, every child is spawned again, and so
  every side effect happens again.
- **Fork** creates a new task, with the same durable function and input, whose
  history starts as a copy of the source task's events before event N. The
  fork replays those (their outputs, and the very same child tasks) and runs
  from event N on. The source task and its history are not touched, and the
  fork records where it came from: `forked_from_task_id` and `forked_at_event`.

Both refuse a task that is not finished. While a task is queued, running or
suspended the engine is still working on it: a replay would delete the history
a worker is reading and writing, and a fork would run beside it, so that
whatever comes after event N would happen twice, once in each. Wait until the
task has completed or failed (a running task that is stuck is timed out or
reassigned by lesson 04's sweeps, and its retries run out), then replay or
fork it.

Both also refuse a task with a child that has not finished: cancel it first
(`client.cancel`), or wait for it. A task can end with one still queued (it
failed on another child's `ChildTaskFailed`, or never waited for it), and that
child still runs, and does what it does, whenever a worker gets to it: a
replay, or a fork from its event or before, would spawn it again, and its
effect would happen twice. A fork after its event would share it, and wait
for it for ever: a child's end wakes its parent (lesson 09), the task that
spawned it, never a fork that reuses it.

Each runs in one transaction that starts by locking the task's row, so that two
operators (or two clicks) replaying and forking the same task run one after the
other: a fork never copies half of a history that a replay is deleting.
That transaction is the operator's, on the operator's connection, and has none
of the engine's limits (`transactions.py`): it only touches finished tasks,
whose rows no worker locks, and behind a frozen worker it would wait at most
until the server ends that worker's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from ..db.models import Task, TaskEvent
from ..db.queries import ListHistoryRow, Querier
from .shared import FINISHED_STATUSES


class RerunRefused(Exception):
    """A replay or a fork that cannot be done; the message says why, in one line."""


@dataclass(frozen=True)
class Replay:
    """A task put back on the queue, and the history it had before."""

    task: Task
    cleared: list[TaskEvent]


def replay(conn: psycopg.Connection[Any], task_id: int) -> Replay:
    """Delete a finished durable task's history and queue it to run from scratch.

    The children its history pointed at stay as they are (finished tasks of
    their own); the next run spawns new ones. Raises `RerunRefused`.
    """
    with conn.transaction():
        queries = Querier(conn)
        task = lock_rerunnable(queries, task_id, "replayed")
        check_children_finished(task.id, queries.list_history(task_id=task.id), "replayed")
        queries.delete_event_waits(task_id=task.id)  # they belong to the events
        cleared = queries.delete_task_events(task_id=task.id)
        queued = queries.replay_task(id=task.id)
    if queued is None:  # the row is locked, and rerunnable() saw it finished
        raise RuntimeError(f"task {task_id} could not be put back on the queue")
    return Replay(task=queued, cleared=sorted(cleared, key=lambda event: event.event_number))


def fork(conn: psycopg.Connection[Any], task_id: int, *, at_event: int) -> Task:
    """Create and queue a fork of a finished durable task at event `at_event`.

    The fork gets a copy of events 1 to at_event - 1, and runs from `at_event`
    on. `at_event` must be an event of the history: forking at event 1 copies
    nothing, and runs the whole function again as a new task. Raises
    `RerunRefused`.
    """
    with conn.transaction():
        queries = Querier(conn)
        source = lock_rerunnable(queries, task_id, "forked")
        history = queries.list_history(task_id=source.id)
        if not history:
            raise RerunRefused(f"task {task_id} has no events to fork at; replay it instead")
        last = history[-1].event_number
        if not 1 <= at_event <= last:
            raise RerunRefused(
                f"task {task_id} has events 1 to {last}: there is no event {at_event} to fork at"
            )
        check_children_finished(source.id, history, "forked")
        forked = queries.create_fork(source_task_id=source.id, at_event=at_event)
        if forked is None:  # INSERT ... SELECT of a row we hold locked
            raise RuntimeError(f"forking task {task_id} created no task")
        queries.copy_events(to_task_id=forked.id, from_task_id=source.id, before_event=at_event)
        # The waits of the copied events refer to them: copied after them.
        queries.copy_event_waits(
            to_task_id=forked.id, from_task_id=source.id, before_event=at_event
        )
    return forked


def check_children_finished(task_id: int, history: list[ListHistoryRow], done: str) -> None:
    """Refuse to rerun a task whose history holds a child that has not finished (see above)."""
    for event in history:
        if event.child_task_id is not None and event.child_status not in FINISHED_STATUSES:
            raise RerunRefused(
                f"child task {event.child_task_id} of event {event.event_number} is "
                f"{event.child_status}: task {task_id} cannot be {done} until its children "
                "have finished (cancel them first, or wait for them)"
            )


def lock_rerunnable(queries: Querier, task_id: int, done: str) -> Task:
    """Lock the task's row and return it, if it can be `done`; else `RerunRefused`.

    The task is looked at once without the lock first. A running task's row may
    be locked by its worker (appending an event holds it FOR SHARE), for as long
    as that worker is frozen, and a refusal should not wait for that. A finished
    task is then locked, and checked again: it may have changed in between.
    """
    rerunnable(queries.get_task(id=task_id), task_id, done)
    # A task whose range of ids retention is removing will be gone (lesson 15):
    # it may not run again, nor be copied. Retention's choice and this wait
    # for each other (see LockPartitionOfTask), so one of the two sees the other.
    task_range = queries.lock_partition_of_task(task_id=task_id)
    if task_range is not None and task_range.removing_since is not None:
        raise RerunRefused(
            f"task {task_id} is in the range of tasks {task_range.first_id} to "
            f"{task_range.end_id - 1}, which retention is removing: it cannot be {done}"
        )
    return rerunnable(queries.lock_task(id=task_id), task_id, done)


def rerunnable(task: Task | None, task_id: int, done: str) -> Task:
    """The task, if it can be `done` ("replayed", "forked"); else `RerunRefused`."""
    if task is None:
        raise RerunRefused(f"there is no task {task_id}")
    if not task.durable:
        raise RerunRefused(
            f"task {task_id} ({task.task_name}) is not durable: it has no history to be {done}"
        )
    if task.status not in FINISHED_STATUSES:
        raise RerunRefused(
            f"task {task_id} ({task.task_name}) is {task.status}: only a completed or failed "
            f"task can be {done}; wait until it has finished"
        )
    return task
