"""Recording how attempts ended, many per statement, from a thread of its own.

Task threads hand their outcomes to the writer and go back to work; the writer
takes everything that piled up since its last write and records it with one
`FinishAttempts` statement. Under load a write carries hundreds of outcomes;
when the worker is quiet, each outcome is written the moment it arrives. No
timer is involved: a batch is whatever accumulated while the previous write was
in flight.

Every write is fenced: the database applies an outcome only if this worker still
owns that attempt. The rows it returns are the outcomes it applied; the others
are *rejected*, and logged, because the attempt timed out or was given to
another worker while this one looked dead.

A write the database cannot make for now (it is restarting, out of reach) is
tried again until it succeeds. A write it refuses for good (an output jsonb
cannot hold, one too big for a row) is narrowed down to the outcome it
refuses, which fails its own task with a readable error, while the others of
the batch are recorded: one poison result never blocks a worker's writer.

A child task that finishes wakes its parent, which is suspended while it waits
for it, in the same transaction: there is no moment at which a child has
finished and its parent does not know it may run. That transaction is bounded
(`transactions.py`): a parent whose row a frozen worker holds (it was spawning
another child) makes the write fail after the lock timeout, a transient error,
and the writer tries again, instead of waiting behind it with every result of
this worker.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from ..db.models import Task
from ..db.queries import Querier
from .crash_points import crash_point
from .shared import error_document, first_line, is_transient
from .transactions import TransactionLimits, bounded_transaction
from .wake_ups import wake_parents

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """How one attempt of a task ended, waiting to be recorded."""

    task_id: int
    attempt: int
    display_name: str
    succeeded: bool
    # Only for failures: may the task be tried again, if it has retries left?
    retryable: bool
    # Only for failures: did the infrastructure end the attempt (the database
    # stayed out of reach)? Then it goes back to the queue, uncharged.
    infrastructure: bool
    # Did the attempt end its task's cancellation (its durable function met
    # Cancelled, and its compensation is done)? Then the task ends cancelled.
    cancelled: bool
    # The result when it succeeded, the error document when it failed, as JSON text.
    output_json: str

    @classmethod
    def completed(cls, task: Task, output_json: str) -> AttemptOutcome:
        return cls(
            task_id=task.id,
            attempt=task.attempt,
            display_name=task.display_name,
            succeeded=True,
            retryable=False,
            infrastructure=False,
            cancelled=False,
            output_json=output_json,
        )

    @classmethod
    def ended_cancelled(cls, task: Task, output: dict[str, Any]) -> AttemptOutcome:
        """The attempt met its task's cancellation, and compensated; `output` says so."""
        return cls(
            task_id=task.id,
            attempt=task.attempt,
            display_name=task.display_name,
            succeeded=False,
            retryable=False,
            infrastructure=False,
            cancelled=True,
            output_json=json.dumps(output),
        )

    @classmethod
    def failed(
        cls,
        task: Task,
        error: dict[str, Any],
        *,
        retryable: bool,
        infrastructure: bool = False,
    ) -> AttemptOutcome:
        return cls(
            task_id=task.id,
            attempt=task.attempt,
            display_name=task.display_name,
            succeeded=False,
            retryable=retryable or infrastructure,
            infrastructure=infrastructure,
            cancelled=False,
            output_json=json.dumps(error),
        )

    def refused(self, error: psycopg.Error) -> AttemptOutcome:
        """This outcome turned into a failure, because the database refused its output."""
        document = error_document(
            "InvalidResult",
            f"the result of {self.display_name} cannot be stored: {first_line(error)}",
        )
        return AttemptOutcome(
            task_id=self.task_id,
            attempt=self.attempt,
            display_name=self.display_name,
            succeeded=False,
            retryable=False,
            infrastructure=False,
            cancelled=self.cancelled,
            output_json=json.dumps(document),
        )


class ResultWriter:
    """Writes attempt outcomes for one worker, from a thread of its own."""

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        worker_id: int,
        limits: TransactionLimits,
        max_batch: int = 1000,
        retry_interval: float = 1.0,
        tries_when_stopping: int = 3,
    ) -> None:
        self.pool = pool
        self.worker_id = worker_id
        # The bounds of each write's transaction (the worker's).
        self.limits = limits
        # The most outcomes one statement records.
        self.max_batch = max_batch
        # When the database cannot be reached (or a lock cannot be had), how
        # long to wait before trying again.
        self.retry_interval = retry_interval
        self.tries_when_stopping = tries_when_stopping
        # How many outcomes the database rejected (fencing).
        self.rejected = 0
        # None is the signal to stop, queued behind every outcome submitted before it.
        self._outcomes: queue.SimpleQueue[AttemptOutcome | None] = queue.SimpleQueue()
        self._stopping = False
        self._thread = threading.Thread(
            target=self._write_loop, name=f"results-{worker_id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def submit(self, outcome: AttemptOutcome) -> None:
        """Hand over an outcome to be recorded. Never waits for the database."""
        self._outcomes.put(outcome)

    def stop(self) -> None:
        """Record every outcome submitted so far, then stop."""
        self._stopping = True
        self._outcomes.put(None)
        self._thread.join()

    def _write_loop(self) -> None:
        while True:
            batch, stop_seen = self._next_batch()
            if batch:
                self._write_until_done(batch)
            if stop_seen:
                return

    def _next_batch(self) -> tuple[list[AttemptOutcome], bool]:
        """Wait for one outcome, then take whatever else is already waiting."""
        batch: list[AttemptOutcome] = []
        outcome = self._outcomes.get()
        while outcome is not None:
            batch.append(outcome)
            if len(batch) == self.max_batch:
                return batch, False
            try:
                outcome = self._outcomes.get_nowait()
            except queue.Empty:
                return batch, False
        return batch, True

    def _write_until_done(self, batch: list[AttemptOutcome]) -> None:
        """Record `batch`; narrow a refusal down to the outcomes the database refuses."""
        try:
            self._write_while_transient(batch)
        except psycopg.Error as refusal:
            if len(batch) > 1:
                for outcome in batch:
                    self._write_until_done([outcome])
            elif batch[0].succeeded:
                log.warning(
                    "task %d (%s) attempt %d: the database refused its result: %s",
                    batch[0].task_id,
                    batch[0].display_name,
                    batch[0].attempt,
                    first_line(refusal),
                )
                self._write_until_done([batch[0].refused(refusal)])
            else:
                # An error document is short text made storable: this would be a
                # bug. The task stays running until this worker stops, and is
                # then taken back like any task of a stopped worker.
                log.error(
                    "task %d attempt %d: the database refused its failure: %s",
                    batch[0].task_id,
                    batch[0].attempt,
                    first_line(refusal),
                )

    def _write_while_transient(self, batch: list[AttemptOutcome]) -> None:
        """Write `batch`, trying again while the error is one that passes with time."""
        tries = 0
        while True:
            tries += 1
            try:
                self.write(batch)
                return
            except psycopg.Error as error:
                if not is_transient(error):
                    raise
                if self._stopping and tries >= self.tries_when_stopping:
                    # Nothing is lost for good: this worker's heartbeat stops with
                    # it, and other workers then take these tasks back.
                    log.error("gave up recording %d result(s): %s", len(batch), first_line(error))
                    return
                log.warning(
                    "could not record %d result(s), trying again in %s s: %s",
                    len(batch),
                    self.retry_interval,
                    first_line(error),
                )
                time.sleep(self.retry_interval)

    def write(self, outcomes: list[AttemptOutcome]) -> None:
        """Record `outcomes` in one fenced statement, and log the ones rejected."""
        with self.pool.connection() as conn:
            # psycopg prepares a statement the fifth time it runs it, and
            # PostgreSQL may then reuse a *generic* plan, made without looking
            # at the arrays (it guesses 10 elements) and from statistics that
            # may say no task is running. For this statement such a plan can
            # compare every running task with every outcome: slow, and slower
            # as results pile up. A fresh plan per batch costs far less.
            prepare_threshold, conn.prepare_threshold = conn.prepare_threshold, None
            try:
                with bounded_transaction(conn, self.limits):
                    queries = Querier(conn)
                    recorded = queries.finish_attempts(
                        worker_id=self.worker_id,
                        ids=[outcome.task_id for outcome in outcomes],
                        attempts=[outcome.attempt for outcome in outcomes],
                        succeeded=[outcome.succeeded for outcome in outcomes],
                        retryable=[outcome.retryable for outcome in outcomes],
                        infrastructure=[outcome.infrastructure for outcome in outcomes],
                        cancelled=[outcome.cancelled for outcome in outcomes],
                        outputs=[outcome.output_json for outcome in outcomes],
                    )
                    wake_parents(queries, recorded)
                    crash_point("finish_attempts:before_commit")
            finally:
                conn.prepare_threshold = prepare_threshold
        status_of = {(row.id, row.attempt): row.status for row in recorded}
        for outcome in outcomes:
            status = status_of.get((outcome.task_id, outcome.attempt))
            if status is None:
                self.rejected += 1
                log.info(
                    "task %d (%s) attempt %d: result rejected, this worker no longer owns "
                    "that attempt (it timed out, or was reassigned while this worker looked dead)",
                    outcome.task_id,
                    outcome.display_name,
                    outcome.attempt,
                )
            else:
                log.info(
                    "task %d (%s) attempt %d recorded: %s",
                    outcome.task_id,
                    outcome.display_name,
                    outcome.attempt,
                    status,
                )
