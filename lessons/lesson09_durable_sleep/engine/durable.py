"""The durable context: how a durable function records what it did, and finds it again.

A durable function takes a context and its input, `function(ctx, input)`. What
it wants done once, however many attempts the task takes, it does through the
context. There are two such operations. The step:

    label = ctx.run_step("print_label", print_label, {"order_id": "A-1"})

The first time, the context runs `print_label({"order_id": "A-1"})` and appends
an event (the step's name, input and output) to the task's history, the table
`task_events`. On a later attempt of the same task the event is already there:
the context returns the recorded output and does not run the step again.

And the child task:

    payment = ctx.call("charge_payment", {"order_id": "A-1", "amount_cents": 4200})

The first time, the context puts a `charge_payment` task on the queue,
appends an event that holds the child's id, and suspends the task to wait for
the child (below), all in one transaction; the run that finds the child
finished returns its output. On a later attempt the event is there: the
context waits for *that* child again (it has usually finished long ago), and
never creates another. (`spawn_child` and `wait_for_child` do the two halves
apart, for a function with something to do in between.)

Waiting does not hold the worker. A child that has not finished *suspends* the
task: the context marks it suspended and raises `TaskSuspended`, which ends
the function's run, and the worker's slot is free. When the child finishes, it
makes its parent runnable again (its row names its parent); a worker claims
it, and the function runs from the top, replaying its history (recorded steps
return at once, recorded children are not spawned again) until it gets back
to the wait, which now finds the child finished. A run reads the history
once, with the outcome of each child it names: a finished child is final, so
its replayed wait returns at once, with no statement and no suspension, and a
run costs one read plus the work that is new, however long the history.

The sleep works the same way:

    ctx.sleep(3600)

records the wake-up time (computed once, on the database's clock) in the
history and suspends the task until then. When the task is claimed again the
replayed sleep finds its time has come, and the function goes on.

A wait for a child has no limit unless it is given one:

    payment = ctx.call("charge_payment", {...}, timeout=600)

records the deadline once, like a sleep's wake-up, and suspends the task
until the child finishes or the deadline comes. Past the deadline with the
child unfinished, the wait records its timeout and raises `ChildTimeout`;
every later run replays the same outcome, whenever the child finishes.

Events are numbered in the order the function makes its operations: the first
operation of every attempt is event 1, the second event 2, and so on. That is
how an attempt finds its events in a history an earlier attempt wrote, and why
a durable function must make the same operations in the same order every time
it runs.

The context checks that it does. Each event stores a *key* of the call that
recorded it: a hash of the operation's kind, its name and its input. On a later
attempt, operation n must have the key of event n; if it has not, the code now
calls something else than it did when the history was written, the recorded
output does not belong to this call, and the task fails with a
`NonDeterminismError` that says which event, which call was recorded and which
call was made instead.

Every operation uses its own short statement: no transaction stays open while
the function, or one of its steps, runs. The transactions of more than one
statement (spawning a child, suspending to wait for one, starting a sleep) are
bounded (`transactions.py`): a worker frozen in the middle of one loses its
session, and its locks, within half its inactivity threshold.

And every statement, every transaction, rides out a connection blip
(`statement_retries.py`): tried again on a transient error, for up to half the
worker's inactivity threshold, after looking in the history (or, for a
suspension, at the task's row) for what an earlier try may have committed.

A suspension does not end the attempt, and costs no retry: the task goes on
with the same attempt number when it is claimed again, on whichever worker
claims it. Suspending is a fenced write, like every other.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from ..db.models import EventKind, Task, TaskEvent, TaskStatus
from ..db.queries import Querier
from .crash_points import crash_point
from .shared import (
    DEFAULT_MAX_RETRIES,
    FINISHED_STATUSES,
    NonRetryableError,
    canonical_json,
    first_line,
    to_json,
)
from .statement_retries import StatementRetries, with_retries
from .transactions import TransactionLimits, bounded_transaction

log = logging.getLogger(__name__)


class LostOwnership(Exception):
    """The database refused an event: this worker no longer owns the attempt.

    The attempt timed out, or was given to another worker while this one looked
    dead. Another attempt is writing the history now, so this one must stop: the
    worker records nothing for it.
    """


class TaskSuspended(BaseException):
    """The task is suspended: its function must stop here, and will run again later.

    A durable operation raises it after it has marked the task suspended (a
    sleep whose time has not come, a child that has not finished). It is not
    a failure: the worker records nothing, frees the slot, and a worker claims
    the task again when it is due. Like `KeyboardInterrupt`, it derives from
    `BaseException`, so that the `except Exception:` of a durable function does
    not stop it; and a function that catches it anyway cannot go on, because
    every later operation of its context raises it again.

    `child_to_claim`: the suspension created a child on this task's queue,
    which nobody was told of (see `_spawn_and_suspend`): the worker must wake
    its own poller, which claims the child with the slot this run frees.
    """

    def __init__(
        self, task_id: int, wake_at: datetime | None, *, child_to_claim: bool = False
    ) -> None:
        self.task_id = task_id
        self.wake_at = wake_at
        self.child_to_claim = child_to_claim
        until = f"until {wake_at.isoformat()}" if wake_at else "until its child finishes"
        super().__init__(f"task {task_id} suspended {until}")


class ChildTimeout(NonRetryableError):
    """A child task had not finished by the deadline its parent's wait recorded.

    The timeout is recorded (the wait's event says so), so a replay raises it
    again, however the child ends. The child is not stopped: it runs whenever a
    worker gets to it (children cannot be cancelled yet). Catch it to carry on
    another way; left uncaught, it fails the task at once, without a retry: a
    retry would replay the same timeout.
    """

    def __init__(self, child_id: int, task_name: str, timeout: float) -> None:
        self.child_id = child_id
        self.task_name = task_name
        self.timeout = timeout
        super().__init__(f"child task {child_id} ({task_name}) did not finish within {timeout} s")


class NonDeterminismError(NonRetryableError):
    """This attempt made another call than the history recorded at the same event number.

    The message names the event, the recorded call and the new one:

        event 2 does not match the history: recorded step print_label({"order_id":"A-1"}),
        new call step print_shipping_label({"order_id":"A-1"})

    or, when the function returned before making every call the history holds,
    `new call none (the function returned)`. The same code would make the same
    call again, so it is a `NonRetryableError`: the worker fails the task at
    once, retries left or not.
    """


class ChildTaskFailed(NonRetryableError):
    """A child task failed (all its retries, if it had any), so the call that waited for it fails.

    Catch it in the durable function to carry on another way; left uncaught, it
    fails the durable task at once, without a retry (it is a `NonRetryableError`):
    the child has had its own retries, and a retry of the parent would only find
    the same failed child.
    """

    def __init__(self, child_id: int, task_name: str, output: Any) -> None:
        error = (output or {}).get("error") or {}
        self.child_id = child_id
        self.task_name = task_name
        self.error_type: str = error.get("type", "")
        self.error_message: str = error.get("message", "")
        super().__init__(
            f"child task {child_id} ({task_name}) failed: {self.error_type}: {self.error_message}"
        )


class InvalidStepData(NonRetryableError):
    """A step's input or output, or a child's input, is not JSON the database can store.

    Not JSON at all (a set, NaN), or a string jsonb refuses (one holding U+0000,
    or a lone surrogate), so the history cannot record it.

    Trying again cannot help, so it is a `NonRetryableError`: the worker fails
    the task at once.
    """


# A durable function takes its context and the task's JSON input, and returns a
# JSON output, like any task function.
DurableFunction = Callable[["DurableContext", Any], Any]

# A step takes a JSON input and returns a JSON output.
StepFunction = Callable[[Any], Any]


@dataclass(frozen=True)
class Call:
    """An operation as its event will record it, taken before the operation runs anything.

    A step may change the input it was given (append to a list of it, delete one
    of its keys), and its event must record the input it was called with, not
    what the step left of it: the next attempt makes the same call again, and the
    key of the changed input would not match it. So the key and the input's JSON
    are taken first, and the event stores them.
    """

    kind: EventKind
    name: str
    # What the history compares (`event_key`).
    key: str
    # The input as canonical JSON text: what the event stores, and a mismatch shows.
    input_json: str

    @classmethod
    def of(cls, kind: EventKind, name: str, input: Any) -> Call:
        """The call, with its key and its input as canonical JSON text (`check_json`
        says whether it can be stored; `InvalidStepData` if it has no key)."""
        return cls(kind, name, key=event_key(kind, name, input), input_json=canonical_json(input))

    def __str__(self) -> str:
        """The call as log lines and errors name it: `step print_label`."""
        return f"{self.kind} {self.name}"


@dataclass(frozen=True)
class ChildTask:
    """A child task a durable function spawned: what it passes to `wait_for_child`."""

    id: int
    task_name: str


@dataclass(frozen=True)
class FinishedChild:
    """How a child task ended (completed or failed), and its output: final, never changed."""

    status: TaskStatus
    output: Any


class DurableContext:
    """One attempt of a durable task: its history, and the way to add to it."""

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        worker_id: int,
        task_id: int,
        attempt: int,
        history: list[TaskEvent],
        finished_children: dict[int, FinishedChild],
        queue: str,
        claimed_at: datetime,
        limits: TransactionLimits,
        retries: StatementRetries,
    ) -> None:
        self.pool = pool
        self.worker_id = worker_id
        self.task_id = task_id
        self.attempt = attempt
        # Where children go unless the function says otherwise: this task's queue.
        self.queue = queue
        # When a worker claimed the task for this run, on the database's clock:
        # a sleep recorded with an earlier wake-up time is over.
        self.claimed_at = claimed_at
        # The bounds of this context's transactions (the worker's).
        self.limits = limits
        # How long each statement is tried again through a connection blip.
        self.retries = retries
        # What earlier attempts recorded, by event number.
        self._history = {event.event_number: event for event in history}
        # The children of that history that had finished when this run loaded
        # it, by task id: their waits replay from here, without a statement.
        self._finished_children = finished_children
        self._next_event_number = 1
        # The first mismatch, kept so that a function that catches it (say, with
        # `except Exception`) still cannot go on, or complete.
        self._non_determinism: NonDeterminismError | None = None
        # Set once this run has suspended the task: nothing may follow.
        self._suspended: TaskSuspended | None = None

    @classmethod
    def load(
        cls,
        pool: ConnectionPool,
        *,
        worker_id: int,
        task: Task,
        limits: TransactionLimits,
        retries: StatementRetries,
    ) -> DurableContext:
        """A context for the current attempt of `task`, with the history recorded so far."""
        if task.started_at is None:  # the claim sets it
            raise ValueError(f"task {task.id} has not been claimed")
        # One read for the whole run: the events, and each child's outcome.
        rows = with_retries(
            pool,
            retries,
            f"task {task.id}: reading its history",
            lambda conn: Querier(conn).list_task_history_with_children(task_id=task.id),
        )
        finished_children = {
            row.task_event.child_task_id: FinishedChild(row.child_status, row.child_output)
            for row in rows
            if row.task_event.child_task_id is not None
            and row.child_status is not None
            and row.child_status in FINISHED_STATUSES
        }
        return cls(
            pool,
            worker_id=worker_id,
            task_id=task.id,
            attempt=task.attempt,
            history=[row.task_event for row in rows],
            finished_children=finished_children,
            queue=task.queue,
            claimed_at=task.started_at,
            limits=limits,
            retries=retries,
        )

    def run_step(self, name: str, function: StepFunction, input: Any) -> Any:
        """Run `function(input)` once for this task, however many attempts it takes.

        When an earlier attempt ran this step, the history holds its event: check
        that it records this same call (or raise `NonDeterminismError`), and return
        the output recorded there, without running `function`. Otherwise run it,
        record its output, and return the recorded output, so that a step returns
        the same value whether it ran now or before (JSON, as the database keeps it).

        A step that raises records nothing: the exception reaches the durable
        function, and if it fails the attempt, the next attempt runs the step again.
        """
        event_number = self._take_event_number()
        check_json(f"the input of step {name}", input)
        # Before the step runs: it may change its input.
        call = Call.of(EventKind.STEP, name, input)
        recorded = self._replay(event_number, call)
        if recorded is not None:
            return recorded.output
        output = function(input)
        check_json(f"the output of step {name}", output)
        event = with_retries(
            self.pool,
            self.retries,
            f"task {self.task_id} event {event_number} ({call})",
            lambda conn: self._append(conn, event_number, call, output=output),
            resolve=lambda conn: self._recorded_event(conn, event_number, call),
        )
        return event.output

    def spawn_child(
        self,
        task_name: str,
        input: Any,
        *,
        queue: str | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> ChildTask:
        """Put a child task on the queue, once for this task, however many attempts it takes.

        The child is an ordinary task, run by whichever worker serves `queue`
        (this task's queue unless told otherwise). Creating it and recording the
        event that holds its id happen in one transaction, fenced: either both
        are written, by the worker that owns this attempt, or neither is. When
        an earlier attempt spawned this child, the history holds its event:
        return that child, and create none.
        """
        return self._spawn(
            task_name, input, queue=queue, max_retries=max_retries, then_suspend=False
        )

    def _spawn(
        self,
        task_name: str,
        input: Any,
        *,
        queue: str | None,
        max_retries: int,
        then_suspend: bool,
    ) -> ChildTask:
        """`spawn_child`. With `then_suspend`, a child new to the history is
        waited for in the same transaction (`_spawn_and_suspend`, which raises
        `TaskSuspended`): only a child the history records comes back."""
        event_number = self._take_event_number()
        check_json(f"the input of child task {task_name}", input)
        call = Call.of(EventKind.CHILD, task_name, input)
        recorded = self._replay(event_number, call)
        if recorded is not None:
            if recorded.child_task_id is None:  # the CHECK on task_events rules it out
                raise RuntimeError(f"event {event_number} of task {self.task_id} has no child")
            return ChildTask(id=recorded.child_task_id, task_name=task_name)
        if then_suspend:
            self._spawn_and_suspend(event_number, call, queue or self.queue, max_retries)

        def spawn(conn: psycopg.Connection[Any]) -> ChildTask:
            # A task thread may wait for locks: a lock timeout would fail the attempt.
            with bounded_transaction(conn, self.limits, wait_for_locks=True):
                child = self._create_child(conn, call, queue or self.queue, max_retries)
                # Refused when this attempt is no longer ours: the exception leaves the
                # transaction, which rolls back, so the child is never created either.
                self._append(conn, event_number, call, child_task_id=child.id)
                crash_point("spawn_child:before_commit")
            return ChildTask(id=child.id, task_name=task_name)

        def spawned_earlier(conn: psycopg.Connection[Any]) -> ChildTask | None:
            # A commit whose reply was lost: the event, if it is there, names the
            # child that try created. Never create a second one.
            event = self._recorded_event(conn, event_number, call)
            if event is None or event.child_task_id is None:
                return None
            return ChildTask(id=event.child_task_id, task_name=task_name)

        spawned = with_retries(
            self.pool,
            self.retries,
            f"task {self.task_id} event {event_number} ({call})",
            spawn,
            resolve=spawned_earlier,
        )
        crash_point("spawn_child:after_commit")
        return spawned

    def wait_for_child(self, child: ChildTask, *, timeout: float | None = None) -> Any:
        """Return the child task's output once it has finished; suspend the task until then.

        Raises `ChildTaskFailed` if it failed. Waiting is no event: the child's
        own row is the record of its result, and reading it again on a later
        attempt gives the same answer. A child that has not finished suspends
        this task (`TaskSuspended`): it holds no slot while it waits, and the
        child's end makes it runnable again. A child that had finished when this
        run loaded its history is final: its outcome is returned at once, with
        no statement and no suspension, so that replaying n finished children
        costs nothing but the one read of `load` (suspending and looking for
        each of them made every run cost n writes, and n children n^2).

        Without a `timeout` (the default) the wait has no limit: a child on a
        queue no worker serves suspends this task for ever. With one (seconds),
        the wait is an event of its own, a child wait, whose deadline the
        database computes once (its now + timeout); the task is suspended until
        the child finishes or the deadline comes. A run that finds the deadline
        passed and the child unfinished records the timeout, and raises
        `ChildTimeout`; every later run replays that outcome.
        """
        self._check_not_suspended()
        if timeout is None:
            finished = self._finished_children.get(child.id) or self._suspend_unless_finished(child)
        else:
            finished = self._wait_with_timeout(child, timeout)
        crash_point("wait_for_child:finished")
        if finished.status == TaskStatus.FAILED:
            raise ChildTaskFailed(child.id, child.task_name, finished.output)
        return finished.output

    def _wait_with_timeout(self, child: ChildTask, timeout: float) -> FinishedChild:
        """The child's outcome, from a child wait that records its deadline once."""
        if timeout <= 0:
            raise ValueError(f"a wait needs a positive timeout, not {timeout} s")
        event_number = self._take_event_number()
        call = Call.of(
            EventKind.CHILD_WAIT, child.task_name, {"child_task_id": child.id, "timeout": timeout}
        )
        wait = self._replay(event_number, call)
        if wait is None:
            # One statement: a run that stops before it suspends replays this event.
            with self.pool.connection() as conn:
                wait = self._append(conn, event_number, call, wake_after_seconds=timeout)
        elif wait.output is not None:  # TimeOutChildWait recorded the timeout
            raise ChildTimeout(child.id, child.task_name, timeout)
        finished = self._finished_children.get(child.id)
        return finished or self._suspend_unless_finished(child, wait=wait)

    def _suspend_unless_finished(
        self, child: ChildTask, *, wait: TaskEvent | None = None
    ) -> FinishedChild:
        """The child's outcome if it has finished by now; else suspend the task until it has.

        `wait` is the event of a child wait: the task is suspended until its
        deadline at the latest, and a run claimed at or after that deadline
        records the timeout instead, and raises `ChildTimeout`.
        """
        deadline = wait.wake_at if wait is not None else None
        row, timed_out, suspension = with_retries(
            self.pool,
            self.retries,
            f"task {self.task_id}: waiting for child task {child.id}",
            lambda conn: self._suspend_then_look(conn, child, deadline),
            resolve=self._suspended_earlier_without_child,
        )
        if wait is not None and timed_out:
            self._time_out(wait)
            raise ChildTimeout(child.id, child.task_name, wait.input["timeout"])
        if suspension is not None:
            crash_point("wait_for_child:suspended")
            self._stop(suspension)
        if row is None:  # only a suspension comes back without the child's row
            raise RuntimeError(f"task {self.task_id}: no row for child task {child.id}")
        return FinishedChild(row.status, row.output)

    def _suspend_then_look(
        self, conn: psycopg.Connection[Any], child: ChildTask, deadline: datetime | None
    ) -> tuple[Task | None, bool, TaskSuspended | None]:
        """Suspend the task (until `deadline` at the latest) and look at the child.

        Returns the child's row when it has finished, and True when the deadline
        has passed and it has not (either way the suspension is undone); else the
        suspension.
        """
        # A task thread may wait for locks: a lock timeout would fail the attempt.
        with bounded_transaction(conn, self.limits, wait_for_locks=True):
            # Suspend first, then look. Suspending locks this task's row until we
            # commit. A child finishing now must take that lock to wake us
            # (WakeTasks): it waits for our commit, finds us suspended, and wakes
            # us. A child that finished before we took the lock has committed,
            # and the look below sees it. Look first, and a child could finish in
            # between, find us still running, wake nobody, and leave us
            # suspended for ever.
            suspension = self._suspend(conn, wake_at=deadline)
            row = Querier(conn).get_task(id=child.id)
            if row is None:
                raise LookupError(f"child task {child.id} ({child.task_name}) does not exist")
            finished = row.status in FINISHED_STATUSES
            timed_out = not finished and deadline is not None and deadline <= self.claimed_at
            crash_point("wait_for_child:before_commit")
            if finished or timed_out:
                raise psycopg.Rollback()  # no need to wait: undo the suspension
        if finished:
            return row, False, None
        if timed_out:
            return None, True, None
        return None, False, suspension

    def call(
        self,
        task_name: str,
        input: Any,
        *,
        queue: str | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        timeout: float | None = None,
    ) -> Any:
        """Spawn a child task and wait for it: its output, `ChildTaskFailed` or `ChildTimeout`.

        No `timeout` (the default): the wait has no limit (see `wait_for_child`).
        A child this run spawns with no limit to the wait cannot have finished
        yet, so the spawn and the suspension are one transaction
        (`_spawn_and_suspend`). A child the history records, or a wait with a
        timeout, is `spawn_child` then `wait_for_child`.
        """
        if timeout is not None:
            child = self.spawn_child(task_name, input, queue=queue, max_retries=max_retries)
            return self.wait_for_child(child, timeout=timeout)
        child = self._spawn(
            task_name, input, queue=queue, max_retries=max_retries, then_suspend=True
        )
        return self.wait_for_child(child)

    def _spawn_and_suspend(
        self, event_number: int, call: Call, queue: str, max_retries: int
    ) -> NoReturn:
        """Suspend the task, create the child and record its event, in one transaction.

        `spawn_child` then `wait_for_child` would take two: the spawn, then the
        suspension and a look at the child, undone if it had finished. A child
        created in this very transaction has not: no worker can claim it until
        the transaction commits (until then no other session sees its row), and
        by then the suspension is committed with it. Its end wakes us all the
        same: its WakeTasks locks this task's row, which our suspension holds
        until the commit, so it comes after, and finds us suspended. So there is
        no look, and nothing to undo. Fenced as the two were: a refused
        suspension or event leaves the transaction, which rolls back, child and all.

        The suspension comes first so that the insert's trigger sees it: a
        child on this task's queue, whose parent this transaction suspended, is
        announced to nobody (schema.sql). No worker needs the hint: this one
        gets the slot back as this run ends, and `child_to_claim` tells it to
        wake its own poller, which claims the child (the worker, run_task).
        Should this worker die before its poller claims, the child waits for
        another worker's next poll: later, never lost.
        """

        def spawn_and_suspend(conn: psycopg.Connection[Any]) -> TaskSuspended:
            # A task thread may wait for locks: a lock timeout would fail the attempt.
            with bounded_transaction(conn, self.limits, wait_for_locks=True):
                self._suspend(conn, wake_at=None)
                child = self._create_child(conn, call, queue, max_retries)
                self._append(conn, event_number, call, child_task_id=child.id)
                crash_point("call:before_commit")
            return TaskSuspended(self.task_id, None, child_to_claim=queue == self.queue)

        def spawned_and_suspended_earlier(conn: psycopg.Connection[Any]) -> TaskSuspended | None:
            # A commit whose reply was lost: the event, if it is there, names the
            # child that try created, and the suspension committed with it. Never
            # create a second child. The event is the proof, not the task's row:
            # since that commit the child may have run and woken the task, and a
            # worker claimed it again; this run must stop all the same.
            event = self._recorded_event(conn, event_number, call)
            if event is None:
                return None
            return TaskSuspended(self.task_id, None, child_to_claim=queue == self.queue)

        suspension = with_retries(
            self.pool,
            self.retries,
            f"task {self.task_id} event {event_number} ({call}): spawning and suspending",
            spawn_and_suspend,
            resolve=spawned_and_suspended_earlier,
        )
        crash_point("call:suspended")
        self._stop(suspension)

    def sleep(self, seconds: float) -> None:
        """Pause the durable function for `seconds`, without holding a worker.

        The first time, record a sleep event whose wake-up time the database
        computes (its now + seconds), and suspend the task until then, both in
        one fenced transaction. A later run finds the event, and with it the
        wake-up time: if that time had come when the task was claimed, the
        sleep is over and the function goes on; if not (the task was woken for
        another reason), it suspends again, until the same time. The wake-up
        time is never computed again, so a sleep never starts over.
        """
        if seconds < 0:
            raise ValueError(f"cannot sleep for a negative time, {seconds} s")
        event_number = self._take_event_number()
        call = Call.of(EventKind.SLEEP, "sleep", {"seconds": seconds})
        recorded = self._replay(event_number, call)
        if recorded is not None:
            if recorded.wake_at is None:  # the CHECK on task_events rules it out
                raise RuntimeError(f"event {event_number} of task {self.task_id} has no wake_at")
            if recorded.wake_at <= self.claimed_at:
                return  # the sleep was over when this run began
            wake_at = recorded.wake_at
            self._stop(
                with_retries(
                    self.pool,
                    self.retries,
                    f"task {self.task_id} event {event_number} (sleep): suspending again",
                    lambda conn: self._suspend(conn, wake_at=wake_at),
                    resolve=lambda conn: self._suspended_earlier(conn, wake_at=wake_at),
                )
            )

        def start_sleeping(conn: psycopg.Connection[Any]) -> TaskSuspended:
            with bounded_transaction(conn, self.limits, wait_for_locks=True):
                event = self._append(conn, event_number, call, wake_after_seconds=seconds)
                suspension = self._suspend(conn, wake_at=event.wake_at)
                crash_point("sleep:before_commit")
            return suspension

        def slept_earlier(conn: psycopg.Connection[Any]) -> TaskSuspended | None:
            # The event and the suspension commit together: the event is the proof.
            event = self._recorded_event(conn, event_number, call)
            return None if event is None else TaskSuspended(self.task_id, event.wake_at)

        suspension = with_retries(
            self.pool,
            self.retries,
            f"task {self.task_id} event {event_number} (sleep)",
            start_sleeping,
            resolve=slept_earlier,
        )
        crash_point("sleep:suspended")
        self._stop(suspension)

    def check_whole_history_replayed(self) -> None:
        """Called when the function returns: it must have made every recorded call.

        A function that returns before reaching an event of the history is not
        the function that wrote it. And one that returns after it suspended its
        task (it caught `TaskSuspended`) must not complete it.
        """
        self._check_not_suspended()
        if self._non_determinism is not None:
            raise self._non_determinism
        missing = self._history.get(self._next_event_number)
        if missing is not None:
            raise self._mismatch(missing, "none (the function returned)")

    def _create_child(
        self, conn: psycopg.Connection[Any], call: Call, queue: str, max_retries: int
    ) -> Task:
        """Insert the child's row: an ordinary task, queued, no timeouts, with the
        input its event records."""
        try:
            child = Querier(conn).create_task(
                queue=queue,
                task_name=call.name,
                display_name=call.name,
                input_=written_json(call.input_json),
                priority=0,
                max_retries=max_retries,
                execution_timeout_seconds=None,
                schedule_timeout_seconds=None,
                durable=False,
                parent_id=self.task_id,
            )
        except psycopg.DataError as error:
            # JSON that jsonb still refuses: a string holding the character U+0000.
            raise InvalidStepData(
                f"the input of child task {call.name} cannot be stored: {first_line(error)}"
            ) from error
        if child is None:  # INSERT ... RETURNING always returns the row
            raise RuntimeError(f"creating child task {call.name} returned no row")
        return child

    def _suspend(self, conn: psycopg.Connection[Any], wake_at: datetime | None) -> TaskSuspended:
        """Mark the task suspended until `wake_at` (None: until a child finishes), fenced.

        Returns the `TaskSuspended` for the caller to pass to `_stop` once its
        transaction has committed.
        """
        suspended = Querier(conn).suspend_task(
            id=self.task_id, attempt=self.attempt, worker_id=self.worker_id, wake_at=wake_at
        )
        if suspended is None:
            raise LostOwnership(
                f"task {self.task_id} attempt {self.attempt}: suspension rejected, "
                "this worker no longer owns that attempt"
            )
        return TaskSuspended(self.task_id, wake_at)

    def _time_out(self, wait: TaskEvent) -> None:
        """Record, fenced, that the child wait `wait` ended at its deadline."""
        with self.pool.connection() as conn:
            ended = Querier(conn).time_out_child_wait(
                task_id=self.task_id,
                event_number=wait.event_number,
                attempt=self.attempt,
                worker_id=self.worker_id,
            )
        if ended is None:
            raise LostOwnership(
                f"task {self.task_id} attempt {self.attempt}: timeout of event "
                f"{wait.event_number} rejected, this worker no longer owns that attempt"
            )

    def _suspended_earlier(
        self, conn: psycopg.Connection[Any], wake_at: datetime | None
    ) -> TaskSuspended | None:
        """The suspension an earlier try committed, if the task is suspended at this attempt.

        What resolves a suspension whose commit is in doubt: suspended, at this
        attempt, by this worker, the task is as that try left it. Running, it was
        not (or another worker has it now, and the next try says so).
        """
        task = Querier(conn).get_task(id=self.task_id)
        if (
            task is not None
            and task.status == TaskStatus.SUSPENDED
            and (task.attempt, task.worker_id) == (self.attempt, self.worker_id)
        ):
            return TaskSuspended(self.task_id, wake_at)
        return None

    def _suspended_earlier_without_child(
        self, conn: psycopg.Connection[Any]
    ) -> tuple[None, bool, TaskSuspended] | None:
        """`_suspended_earlier`, as `_suspend_then_look` returns it: no row, no timeout."""
        suspension = self._suspended_earlier(conn, wake_at=None)
        return None if suspension is None else (None, False, suspension)

    def _stop(self, suspension: TaskSuspended) -> NoReturn:
        """End this run: raise `suspension`, and again at every later operation."""
        self._suspended = suspension
        raise suspension

    def _check_not_suspended(self) -> None:
        if self._suspended is not None:
            raise self._suspended

    def _take_event_number(self) -> int:
        self._check_not_suspended()
        if self._non_determinism is not None:
            raise self._non_determinism
        event_number = self._next_event_number
        self._next_event_number += 1
        return event_number

    def _replay(self, event_number: int, call: Call) -> TaskEvent | None:
        """The recorded event for this operation, if there is one and it records this call.

        Every operation takes its `Call` before it does anything else: a call
        that cannot have a key (`InvalidStepData`) runs nothing.
        """
        recorded = self._history.get(event_number)
        if recorded is None:
            return None
        if recorded.key != call.key:
            raise self._mismatch(recorded, describe_call(call.kind, call.name, call.input_json))
        log.info(
            "task %d event %d (%s): replayed from the history", self.task_id, event_number, call
        )
        return recorded

    def _mismatch(self, recorded: TaskEvent, new_call: str) -> NonDeterminismError:
        self._non_determinism = NonDeterminismError(
            f"event {recorded.event_number} does not match the history: recorded "
            f"{describe_call(recorded.kind, recorded.name, canonical_json(recorded.input))}, "
            f"new call {new_call}"
        )
        return self._non_determinism

    def _append(
        self,
        conn: psycopg.Connection[Any],
        event_number: int,
        call: Call,
        *,
        output: Any = None,
        child_task_id: int | None = None,
        wake_after_seconds: float | None = None,
    ) -> TaskEvent:
        """Write one event, fenced: only while this worker still owns the attempt."""
        try:
            event = Querier(conn).append_event(
                task_id=self.task_id,
                event_number=event_number,
                kind=call.kind,
                name=call.name,
                input_=written_json(call.input_json),
                key=call.key,
                output=output,
                child_task_id=child_task_id,
                wake_after_seconds=wake_after_seconds,
                attempt=self.attempt,
                worker_id=self.worker_id,
            )
        except psycopg.DataError as error:
            # JSON that jsonb still refuses: a string holding the character U+0000.
            raise InvalidStepData(
                f"event {event_number} ({call}) cannot be stored: {first_line(error)}"
            ) from error
        if event is None:
            raise LostOwnership(
                f"task {self.task_id} attempt {self.attempt}: event {event_number} ({call}) "
                "rejected, this worker no longer owns that attempt"
            )
        log.info("task %d event %d (%s): recorded", self.task_id, event_number, call)
        return event

    def _recorded_event(
        self, conn: psycopg.Connection[Any], event_number: int, call: Call
    ) -> TaskEvent | None:
        """Event `event_number` of the history, if this attempt wrote it for this call.

        What resolves a write whose commit is in doubt (its connection died
        before the reply came): the event there, with this call's key, was written.
        """
        for event in Querier(conn).list_task_events(task_id=self.task_id):
            if (
                event.event_number == event_number
                and event.attempt == self.attempt
                and event.key == call.key
            ):
                return event
        return None


def event_key(kind: EventKind, name: str, input: Any) -> str:
    """The key of a call: SHA-256, in hex, of the canonical JSON of [kind, name, input].

    An input that is JSON but has no canonical form is refused (`InvalidStepData`):
    `{1: "a", "b": 2}`, whose keys of two types cannot be sorted.
    """
    try:
        call = canonical_json([str(kind), name, input])
    except TypeError as error:
        raise InvalidStepData(
            f"the input of {kind} {name} has no canonical JSON form, so no key: {error}"
        ) from error
    return hashlib.sha256(call.encode()).hexdigest()


def describe_call(kind: EventKind, name: str, input_json: str) -> str:
    """A call as people read it in an error message: step print_label({"order_id":"A-1"}).

    `input_json` is the canonical JSON of its input.
    """
    return f"{kind} {name}({input_json})"


def written_json(text: str) -> Jsonb:
    """JSON text already written out, for a jsonb parameter: sent as it is.

    (A plain `str` would be sent as a JSON string, its text in quotes.)
    """
    return Jsonb(text, dumps=lambda written: written)


def check_json(what: str, value: Any) -> None:
    """Refuse a value the history could not hold, with a message that says whose it is."""
    try:
        to_json(value, what)
    except ValueError as error:
        raise InvalidStepData(str(error)) from error
