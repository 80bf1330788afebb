"""A worker: it claims tasks from one queue, runs them, and records what happened.

The database is the broker. The worker runs each task's function *outside* any
transaction (a function may take minutes; a transaction held that long would
block vacuum and hold locks) and records the result in a second, short
statement.

Threads mirror the Go guide's goroutines. The worker is made of peers, each
with its own thread and its own lock, which this file starts and stops:

- the poller (`poller.py`) claims tasks, never more than the free slots
  (`slots.py`), and hands each to a fixed pool of task threads, one per slot;
- the heartbeat (`heartbeat.py`) renews this worker's lease every
  `heartbeat_interval`, by `inactivity_threshold`, and cancels the attempts
  it no longer owns (`attempts.py`);
- the sweeper (`sweeper.py`) takes back the tasks of workers whose lease
  expired, and fires timeouts;
- the result writer (`result_writer.py`) records finished attempts, many per
  statement, each only if this worker still owns that attempt (fencing);
- the listener (`listener.py`) holds a connection that LISTENs for what the
  database announces: a task of this worker's queue was enqueued (or queued
  again), or a suspended one has a new wake-up time; it wakes the poller.

A durable task runs a durable function, `function(ctx, input)`, whose context
(see `durable.py`) records what the function did in the task's history. Its
operations are the one exception to "task threads never touch the database":
each is a short statement (or transaction) of its own, from the task thread.

A durable function that sleeps, or waits for a child that has not finished, or
for an external event that has not been pushed, *suspends* its task: the
context marks it suspended and raises `TaskSuspended`, and the slot is free
again. The claim takes the task back when its wake-up time comes, and the
attempt goes on where it stopped.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

from psycopg_pool import ConnectionPool

from ..db.models import Task
from ..db.queries import Querier
from .attempts import RunningAttempts
from .claims import ClaimedAttempts
from .crash_points import crash_point
from .durable import DurableContext, DurableFunction, LostOwnership, TaskSuspended
from .heartbeat import Heartbeat
from .listener import Listener
from .poller import DEFAULT_CLAIM_POLICY, ClaimPolicy, Poller
from .result_writer import AttemptOutcome, ResultWriter
from .shared import (
    DEFAULT_QUEUE,
    NonRetryableError,
    error_document,
    exception_message,
    first_line,
    to_json,
)
from .slots import Slots
from .statement_retries import DatabaseUnreachable, StatementRetries
from .sweeper import Sweeper
from .transactions import TransactionLimits

log = logging.getLogger(__name__)

# A task function takes the task's input (a JSON value: dict, list, str, int,
# float, bool or None) and returns its output (another JSON value).
TaskFunction = Callable[[Any], Any]


def listener_name(schema: str, worker_id: int) -> str:
    """The application_name of a worker's listening connection, in pg_stat_activity."""
    return f"{schema} worker {worker_id} listener"


class Worker:
    """Runs the tasks of one queue with the functions registered under their names.

    Use it as a context manager, or call `start()` and `stop()`:

        with Worker(pool, {"example_task": example_task}):
            ...  # tasks of the "default" queue run in the background

    Durable functions are registered apart, `durable_functions`, because they are
    called differently: with a context first.

    It uses two connections of the pool for the sweeper and the result writer,
    and one more for each durable function while it records or reads its
    history: give the pool `slots + 2` connections, and a durable function never
    waits for one. The heartbeat, the listener and the poller have a connection
    each of their own, outside the pool.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        functions: Mapping[str, TaskFunction] | None = None,
        *,
        queue: str = DEFAULT_QUEUE,
        poll_interval: float = 5.0,
        slots: int = 10,
        claim_policy: ClaimPolicy = DEFAULT_CLAIM_POLICY,
        heartbeat_interval: float = 1.0,
        inactivity_threshold: float = 10.0,
        name: str | None = None,
        durable_functions: Mapping[str, DurableFunction] | None = None,
        listen: bool = True,
        reconnect_interval: float = 1.0,
    ) -> None:
        if inactivity_threshold <= heartbeat_interval:
            raise ValueError("the inactivity threshold must be longer than the heartbeat interval")
        self.pool = pool
        self.queue = queue
        # How long to wait before asking again when the queue was empty, unless
        # a notification, or the next wake-up time, comes first. Only a fallback.
        self.poll_interval = poll_interval
        # The most tasks this worker runs at once.
        self.slots = slots
        self._slots = Slots(slots)
        # When a saturated worker claims again: latency against claims per round trip.
        self.claim_policy = claim_policy
        # How often this worker renews its lease, and sweeps.
        self.heartbeat_interval = heartbeat_interval
        # How long this worker's lease lasts: how long it may stay silent
        # before its tasks are taken back.
        self.inactivity_threshold = inactivity_threshold
        # The bounds of every multi-statement transaction this worker opens:
        # frozen inside one, it holds its locks for half its lease at most.
        self._transaction_limits = TransactionLimits.for_worker(inactivity_threshold)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.functions: dict[str, TaskFunction] = dict(functions or {})
        self.durable_functions: dict[str, DurableFunction] = dict(durable_functions or {})
        # Whether to LISTEN. Without it the worker finds tasks by polling only,
        # as in lesson 07.
        self.listen = listen
        # How long the listener waits before connecting again after losing its
        # connection. What was announced meanwhile is found when it is back, or
        # by the next poll, whichever comes first.
        self.reconnect_interval = reconnect_interval
        self._id: int | None = None
        self._running = RunningAttempts()
        self._claimed = ClaimedAttempts()
        self._task_threads = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="task")
        # The peers, created by start() once this worker has its row.
        self._results: ResultWriter | None = None
        self._heartbeat: Heartbeat | None = None
        self._sweeper: Sweeper | None = None
        self._poller: Poller | None = None
        self._listener: Listener | None = None
        # How many durable attempts stopped because their history refused an
        # event; task threads count them.
        self._attempts_lost = 0
        self._attempts_lost_lock = threading.Lock()

    @property
    def id(self) -> int:
        """This worker's row in the `workers` table (known once started)."""
        if self._id is None:
            raise RuntimeError("the worker has no id until it is started")
        return self._id

    @property
    def slots_in_use(self) -> int:
        return self._slots.in_use

    @property
    def peak_slots_in_use(self) -> int:
        """The most slots that were ever in use at once since the worker started."""
        return self._slots.peak_in_use

    @property
    def tasks_finished(self) -> int:
        """How many attempts this worker has run (their results may still be on their way)."""
        return self._slots.given_back

    @property
    def listener_backend_pid(self) -> int | None:
        """The server process of the listening connection (None while it reconnects)."""
        return self._listener.backend_pid if self._listener else None

    @property
    def results_rejected(self) -> int:
        """How many results were rejected because this worker no longer owned the attempt."""
        return self._results.rejected if self._results else 0

    @property
    def attempts_lost(self) -> int:
        """How many durable attempts stopped because their history refused an event."""
        return self._attempts_lost

    def register(self, name: str, function: TaskFunction) -> None:
        """Tasks enqueued with `task_name=name` will run `function`."""
        self.functions[name] = function

    def register_durable(self, name: str, function: DurableFunction) -> None:
        """Durable tasks enqueued with `task_name=name` will run `function(ctx, input)`."""
        self.durable_functions[name] = function

    def start(self) -> None:
        """Register this worker, then start its peers: the poller last, once all can run."""
        if self._poller is not None:
            raise RuntimeError("this worker has already been started")
        with self.pool.connection() as conn:
            worker = Querier(conn).register_worker(
                name=self.name,
                queue=self.queue,
                slots=self.slots,
                lease_seconds=self.inactivity_threshold,
            )
        if worker is None:  # INSERT ... RETURNING always returns the row
            raise RuntimeError("registering the worker returned no row")
        self._id = worker.id
        # A result that cannot be written yet is tried again well within a
        # lease, so that an outage costs no more delay than it must.
        self._results = ResultWriter(
            self.pool,
            worker_id=worker.id,
            limits=self._transaction_limits,
            retry_interval=self.heartbeat_interval,
        )
        self._heartbeat = Heartbeat(
            self.pool,
            worker_id=worker.id,
            interval=self.heartbeat_interval,
            running=self._running,
            claimed=self._claimed,
            registered_at=worker.last_heartbeat_at,
        )
        heartbeat = self._heartbeat
        self._sweeper = Sweeper(
            self.pool,
            worker_id=worker.id,
            interval=self.heartbeat_interval,
            healthy_since=lambda: heartbeat.healthy_since,
            limits=self._transaction_limits,
        )
        self._poller = Poller(
            self.pool,
            worker_id=worker.id,
            queue=self.queue,
            poll_interval=self.poll_interval,
            slots=self._slots,
            claimed=self._claimed,
            claim_policy=self.claim_policy,
            task_names=lambda: sorted(self.functions),
            durable_task_names=lambda: sorted(self.durable_functions),
            start_task=self._start_task,
        )
        self._results.start()
        self._heartbeat.start()
        self._sweeper.start()
        if self.listen:
            self._listener = self._start_listener(worker.id, self._poller)
        self._poller.start()
        log.info("worker %d (%s) started on queue %r", worker.id, self.name, self.queue)

    def _start_listener(self, worker_id: int, poller: Poller) -> Listener:
        with self.pool.connection() as conn:
            channels = Querier(conn).notification_channels()
        if channels is None:  # a SELECT without FROM always returns its row
            raise RuntimeError("the database named no notification channels")

        def on_task_queued(queue: str) -> None:
            # The channel carries every queue of this schema; the payload says which.
            if queue == self.queue:
                poller.wake()

        # The pool's connection string (a pool may be given a function returning it).
        conninfo = self.pool.conninfo() if callable(self.pool.conninfo) else self.pool.conninfo
        listener = Listener(
            conninfo,
            {channels.task_queued: on_task_queued},
            # Whatever was announced while nobody listened was announced to
            # nobody: look for new tasks, and for tasks that are due.
            on_connected=poller.wake,
            application_name=listener_name(channels.schema_name, worker_id),
            reconnect_interval=self.reconnect_interval,
        )
        listener.start()
        # A task enqueued before the LISTEN is done is found by the first claim;
        # waiting here means one enqueued after start() returns is announced too.
        if not listener.wait_until_listening(timeout=10):
            log.warning("the listener is not listening yet; polling until it is")
        return listener

    def stop(self) -> None:
        """Stop gracefully: claim nothing more, and wait for the running tasks to finish.

        When this returns, every task this worker claimed has been recorded as
        completed or failed (or put back on the queue for a retry); none is left
        running. The heartbeat stops last, so that no other worker takes this
        worker's tasks while they are finishing.
        """
        if self._poller is not None:
            self._poller.stop()
        if self._listener is not None:
            self._listener.stop()  # only the poller needed it
        self._task_threads.shutdown(wait=True)
        if self._results is not None:
            self._results.stop()
        if self._sweeper is not None:
            self._sweeper.stop()
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self._id is not None:
            with self.pool.connection() as conn:
                Querier(conn).mark_worker_stopped(id=self._id)
        log.info("worker %s on queue %r stopped", self._id, self.queue)

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _start_task(self, task: Task) -> None:
        """Run a claimed task on a task thread; the poller has taken its slot."""
        self._task_threads.submit(self._run_in_slot, task)

    def _run_in_slot(self, task: Task) -> None:
        try:
            self.run_task(task)
        except BaseException as error:
            # run_task ends every attempt in an outcome, whatever its function
            # did; an exception here is the worker's own (say, an output whose
            # code raises while it is written out). The attempt must still end
            # in a readable failure, not stay running on a worker that lives on.
            # Not retried: the same output would meet the same failure.
            log.exception("task %d attempt %d: the worker failed", task.id, task.attempt)
            self.record_failure(
                task,
                error_document(
                    "WorkerError",
                    f"the worker failed while running attempt {task.attempt}: "
                    f"{type(error).__name__}: {first_line(error)}",
                ),
                retryable=False,
            )
        finally:
            self._slots.give_back()

    def run_task(self, task: Task) -> None:
        """Run one attempt of a claimed task and hand its outcome to the result writer.

        Every way an attempt can go wrong ends here in a failure to record, so a
        task is never left running because of what its function did. The one
        exception is a durable attempt that lost its ownership: another worker
        owns the task now, and this one has nothing left to record.
        """
        function = self._function_for(task)
        if function is None:
            kind = "durable function" if task.durable else "function"
            self.record_failure(
                task,
                error_document("UnknownTask", f"no {kind} registered for {task.task_name}"),
                retryable=False,
            )
            return
        with self._running.running(task, self.pool):
            try:
                output = function(task.input)
            except TaskSuspended as suspension:
                # Not an outcome: the task waits in the database, and its
                # attempt goes on when it is claimed again. Nothing to record.
                log.info("%s", suspension)
                if suspension.child_to_claim:
                    # Its child was announced to nobody: claim it here, in
                    # the slot this run gives back (see durable.py, `call`).
                    self._claim_now()
                return
            except LostOwnership as error:
                log.info("stopped: %s", error)
                with self._attempts_lost_lock:
                    self._attempts_lost += 1
                return
            # Trying again cannot help: a declined card, a changed durable
            # function, a failed child... Each says so by its type.
            except DatabaseUnreachable as error:
                # The database, not the task: back to the queue, not charged.
                log.info("task %d (%s): %s", task.id, task.display_name, error)
                self.record_failure(
                    task,
                    error_document(type(error).__name__, exception_message(error)),
                    retryable=True,
                    infrastructure=True,
                )
                return
            except NonRetryableError as error:
                log.info("task %d (%s) failed for good: %r", task.id, task.display_name, error)
                self.record_failure(
                    task,
                    error_document(type(error).__name__, exception_message(error)),
                    retryable=False,
                )
                return
            except BaseException as error:  # even SystemExit: a task is never left running
                log.info("task %d (%s) raised %r", task.id, task.display_name, error)
                self.record_failure(
                    task,
                    error_document(type(error).__name__, exception_message(error)),
                    retryable=True,
                )
                return
        crash_point(f"task_returned:{task.task_name}")
        try:
            output_json = to_json(output, f"the result of {task.task_name}")
        except ValueError as error:
            self.record_failure(task, error_document("InvalidResult", str(error)), retryable=False)
            return
        self.record_success(task, output_json)

    def _claim_now(self) -> None:
        """Wake this worker's poller, as a notification would (it claims once a slot is free)."""
        if self._poller is not None:
            self._poller.wake()

    def _function_for(self, task: Task) -> TaskFunction | None:
        """What to call with the task's input, or None when nothing is registered.

        A durable function is called with a context first: this attempt's view of
        the task's history, read when the attempt starts. When it returns, it must
        have replayed all of that history.
        """
        if not task.durable:
            return self.functions.get(task.task_name)
        durable_function = self.durable_functions.get(task.task_name)
        if durable_function is None:
            return None

        def with_context(input: Any) -> Any:
            context = DurableContext.load(
                self.pool,
                worker_id=self.id,
                task=task,
                limits=self._transaction_limits,
                retries=StatementRetries.for_worker(self.inactivity_threshold),
            )
            output = durable_function(context, input)
            context.check_whole_history_replayed()
            return output

        return with_context

    def record_success(self, task: Task, output_json: str) -> None:
        self._result_writer().submit(AttemptOutcome.completed(task, output_json))

    def record_failure(
        self,
        task: Task,
        error: dict[str, Any],
        *,
        retryable: bool,
        infrastructure: bool = False,
    ) -> None:
        self._result_writer().submit(
            AttemptOutcome.failed(task, error, retryable=retryable, infrastructure=infrastructure)
        )

    def _result_writer(self) -> ResultWriter:
        if self._results is None:
            raise RuntimeError("the worker is not started")
        return self._results
