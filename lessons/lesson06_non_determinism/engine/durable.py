"""The durable context: how a durable function records what it did, and finds it again.

A durable function takes a context and its input, `function(ctx, input)`. What
it wants done once, however many attempts the task takes, it does through the
context. This lesson has one such operation, the step:

    label = ctx.run_step("print_label", print_label, {"order_id": "A-1"})

The first time, the context runs `print_label({"order_id": "A-1"})` and appends
an event (the step's name, input and output) to the task's history, the table
`task_events`. On a later attempt of the same task the event is already there:
the context returns the recorded output and does not run the step again.

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
the function, or one of its steps, runs.

And every statement rides out a connection blip (`statement_retries.py`):
tried again on a transient error, for up to half the worker's inactivity
threshold, after looking in the history for what an earlier try may have
committed.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from ..db.models import EventKind, Task, TaskEvent
from ..db.queries import Querier
from .shared import NonRetryableError, canonical_json, first_line, to_json
from .statement_retries import StatementRetries, with_retries

log = logging.getLogger(__name__)


class LostOwnership(Exception):
    """The database refused an event: this worker no longer owns the attempt.

    The attempt timed out, or was given to another worker while this one looked
    dead. Another attempt is writing the history now, so this one must stop: the
    worker records nothing for it.
    """


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


class InvalidStepData(NonRetryableError):
    """A step's input or output is not JSON the database can store.

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
        retries: StatementRetries,
    ) -> None:
        self.pool = pool
        self.worker_id = worker_id
        self.task_id = task_id
        self.attempt = attempt
        # How long each statement is tried again through a connection blip.
        self.retries = retries
        # What earlier attempts recorded, by event number.
        self._history = {event.event_number: event for event in history}
        self._next_event_number = 1
        # The first mismatch, kept so that a function that catches it (say, with
        # `except Exception`) still cannot go on, or complete.
        self._non_determinism: NonDeterminismError | None = None

    @classmethod
    def load(
        cls, pool: ConnectionPool, *, worker_id: int, task: Task, retries: StatementRetries
    ) -> DurableContext:
        """A context for the current attempt of `task`, with the history recorded so far."""
        history = with_retries(
            pool,
            retries,
            f"task {task.id}: reading its history",
            lambda conn: Querier(conn).list_task_events(task_id=task.id),
        )
        return cls(
            pool,
            worker_id=worker_id,
            task_id=task.id,
            attempt=task.attempt,
            history=history,
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
        event = self._append(event_number, call, output)
        return event.output

    def check_whole_history_replayed(self) -> None:
        """Called when the function returns: it must have made every recorded call.

        A function that returns before reaching an event of the history is not
        the function that wrote it.
        """
        if self._non_determinism is not None:
            raise self._non_determinism
        missing = self._history.get(self._next_event_number)
        if missing is not None:
            raise self._mismatch(missing, "none (the function returned)")

    def _take_event_number(self) -> int:
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

    def _append(self, event_number: int, call: Call, output: Any) -> TaskEvent:
        """Write one event, fenced: only while this worker still owns the attempt.

        A try whose connection died may have been committed: the next try finds
        the event in the history (written by this attempt, with this call's key)
        and returns it, rather than write it again.
        """

        def append(conn: psycopg.Connection[Any]) -> TaskEvent | None:
            return Querier(conn).append_event(
                task_id=self.task_id,
                event_number=event_number,
                kind=call.kind,
                name=call.name,
                input_=written_json(call.input_json),
                key=call.key,
                output=output,
                attempt=self.attempt,
                worker_id=self.worker_id,
            )

        def recorded(conn: psycopg.Connection[Any]) -> TaskEvent | None:
            return self._recorded_event(conn, event_number, call)

        try:
            event = with_retries(
                self.pool,
                self.retries,
                f"task {self.task_id} event {event_number} ({call})",
                append,
                resolve=recorded,
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
