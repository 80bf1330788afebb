"""A worker: it claims tasks from one queue, runs them, and records what happened.

The database is the broker. A task is claimed by one `UPDATE ... RETURNING`
statement that marks it running, so no two workers ever get the same task. The
worker then runs the task's function *outside* any transaction (a function may
take minutes; a transaction held that long would block vacuum and hold locks)
and records the result in a second, short statement.

Threads mirror the Go guide's goroutines: one poller thread claims tasks, and a
fixed pool of task threads runs them. The worker has a number of *slots*, one per
task thread. It never claims more tasks than it has free slots: the claim's
LIMIT is the number of free slots, so a task is never claimed only to wait in
this process while another worker sits idle.

Two more threads make the worker survive the failures of others, and of itself:

- the heartbeat thread tells the database, every `heartbeat_interval`, that this
  worker is alive; then it sweeps: tasks of workers silent for longer than
  `inactivity_threshold` go back to the queue, and timeouts fire;
- the result writer (see `result_writer.py`) records finished attempts, many per
  statement, each only if this worker still owns that attempt (fencing).

A durable task runs a durable function, `function(ctx, input)`, whose context
(see `durable.py`) records what the function did in the task's history. Its
operations are the one exception to "task threads never touch the database":
each is a short statement (or transaction) of its own, from the task thread.

A durable function that sleeps, or waits for a child that has not finished, or
for an external event that has not been pushed, *suspends* its task: the
context marks it suspended and raises `TaskSuspended`, and the slot is free
again. The claim takes the task back when its wake-up time comes, and the
attempt goes on where it stopped.

And one thread makes it quick: the listener (see `listener.py`) holds a
connection that LISTENs for what the database announces: a task of this
worker's queue was enqueued (or queued again), or a suspended one has a new
wake-up time, and the poller claims at once (and, if nothing is due yet,
waits no longer than the next wake-up time). Polling stays, at a longer
interval, as the fallback for notifications that never arrive: a listener
reconnecting hears nothing.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from .crash_points import crash_point
from .db.models import Task
from .db.queries import Querier
from .durable import (
    ChildTaskFailed,
    DurableContext,
    DurableFunction,
    EventTimeout,
    InvalidStepData,
    LostOwnership,
    NonDeterminismError,
    TaskSuspended,
)
from .listener import Listener
from .result_writer import (
    AttemptOutcome,
    ResultWriter,
    error_document,
    exception_message,
    wake_parents,
)

log = logging.getLogger(__name__)

DEFAULT_QUEUE = "default"

# A task function takes the task's input (a JSON value: dict, list, str, int,
# float, bool or None) and returns its output (another JSON value).
TaskFunction = Callable[[Any], Any]


class NonRetryableError(Exception):
    """Raise it (or a subclass) from a task function to fail the task at once.

    Any other exception fails only the attempt, and the task is retried while it
    has retries left. Use this one when trying again cannot help: a declined
    card, an input that can never be valid.
    """


@dataclass(frozen=True)
class RunningTask:
    """The attempt a task function is running in, as `current_task()` returns it."""

    id: int
    name: str
    attempt: int
    max_retries: int
    # The worker's pool, for task functions that keep their effects in this
    # database (the example's charges and emails).
    pool: ConnectionPool
    # Set when this worker no longer owns the attempt: it timed out, or it was
    # given to another worker while this one looked dead. Python cannot stop a
    # thread from outside, so a long function should look at this flag now and
    # then (`current_task().cancelled.wait(seconds)` is a sleep that ends early)
    # and give up. Whatever it returns after that is rejected anyway.
    cancelled: threading.Event = field(default_factory=threading.Event)


_current_task: ContextVar[RunningTask] = ContextVar("current_task")


def current_task() -> RunningTask:
    """The attempt the calling task function runs in. Only valid inside a task function."""
    try:
        return _current_task.get()
    except LookupError:
        raise RuntimeError("current_task() is only available inside a task function") from None


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

    It uses three connections of the pool for the poller, the heartbeat and the
    result writer, and one more for each durable function while it records or
    reads its history: give the pool `slots + 3` connections, and a durable
    function never waits for one. The listener has a connection of its own,
    outside the pool.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        functions: Mapping[str, TaskFunction] | None = None,
        *,
        queue: str = DEFAULT_QUEUE,
        poll_interval: float = 5.0,
        slots: int = 10,
        heartbeat_interval: float = 1.0,
        inactivity_threshold: float = 10.0,
        name: str | None = None,
        durable_functions: Mapping[str, DurableFunction] | None = None,
        listen: bool = True,
        reconnect_interval: float = 1.0,
    ) -> None:
        if slots < 1:
            raise ValueError(f"a worker needs at least one slot, not {slots}")
        if inactivity_threshold <= heartbeat_interval:
            raise ValueError("the inactivity threshold must be longer than the heartbeat interval")
        self.pool = pool
        self.queue = queue
        # How long to wait before asking again when the queue was empty, unless
        # a notification, or the next wake-up time, comes first. Only a fallback.
        self.poll_interval = poll_interval
        # The most tasks this worker runs at once.
        self.slots = slots
        # How often this worker says it is alive, and sweeps.
        self.heartbeat_interval = heartbeat_interval
        # How long a worker may stay silent before its tasks are taken back.
        self.inactivity_threshold = inactivity_threshold
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
        self._stopping = threading.Event()
        # Set when there may be new work: by the listener on a notification, and
        # by stop(). The poller waits on it, for poll_interval at most.
        self._work_may_be_waiting = threading.Event()
        self._listener: Listener | None = None
        self._poller: threading.Thread | None = None
        self._heartbeat: threading.Thread | None = None
        self._heartbeat_stopping = threading.Event()
        self._results: ResultWriter | None = None
        self._task_threads = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="task")
        # Slots in use: incremented by the poller for each task it claims,
        # decremented by a task thread when its function returns. The condition
        # wakes the poller when a slot frees up.
        self._slots_changed = threading.Condition()
        self._slots_in_use = 0
        self._peak_slots_in_use = 0
        self._tasks_finished = 0
        self._attempts_lost = 0
        # The attempts whose functions are running now, by task id, so that the
        # heartbeat can raise their cancellation flags.
        self._running: dict[int, RunningTask] = {}

    @property
    def id(self) -> int:
        """This worker's row in the `workers` table (known once started)."""
        if self._id is None:
            raise RuntimeError("the worker has no id until it is started")
        return self._id

    @property
    def slots_in_use(self) -> int:
        return self._slots_in_use

    @property
    def peak_slots_in_use(self) -> int:
        """The most slots that were ever in use at once since the worker started."""
        return self._peak_slots_in_use

    @property
    def tasks_finished(self) -> int:
        """How many attempts this worker has run (their results may still be on their way)."""
        return self._tasks_finished

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
        if self._poller is not None:
            raise RuntimeError("this worker has already been started")
        with self.pool.connection() as conn:
            worker = Querier(conn).register_worker(
                name=self.name, queue=self.queue, slots=self.slots
            )
        if worker is None:  # INSERT ... RETURNING always returns the row
            raise RuntimeError("registering the worker returned no row")
        self._id = worker.id
        self._results = ResultWriter(self.pool, worker_id=worker.id)
        self._results.start()
        self._heartbeat = threading.Thread(
            target=self._heartbeat_loop, name=f"heartbeat-{worker.id}", daemon=True
        )
        self._heartbeat.start()
        if self.listen:
            self._listener = self._start_listener(worker.id)
        self._poller = threading.Thread(
            target=self._poll_loop, name=f"poller-{self.queue}", daemon=True
        )
        self._poller.start()
        log.info("worker %d (%s) started on queue %r", worker.id, self.name, self.queue)

    def _start_listener(self, worker_id: int) -> Listener:
        with self.pool.connection() as conn:
            channels = Querier(conn).notification_channels()
        if channels is None:  # a SELECT without FROM always returns its row
            raise RuntimeError("the database named no notification channels")
        # The pool's connection string (a pool may be given a function returning it).
        conninfo = self.pool.conninfo() if callable(self.pool.conninfo) else self.pool.conninfo
        listener = Listener(
            conninfo,
            {channels.task_queued: self._on_task_queued},
            on_connected=self._on_listener_connected,
            application_name=listener_name(channels.schema_name, worker_id),
            reconnect_interval=self.reconnect_interval,
        )
        listener.start()
        # A task enqueued before the LISTEN is done is found by the first claim;
        # waiting here means one enqueued after start() returns is announced too.
        if not listener.wait_until_listening(timeout=10):
            log.warning("the listener is not listening yet; polling until it is")
        return listener

    def _on_task_queued(self, queue: str) -> None:
        # The channel carries every queue of this schema; the payload says which.
        if queue == self.queue:
            self._work_may_be_waiting.set()

    def _on_listener_connected(self) -> None:
        # Whatever was announced while nobody listened was announced to nobody:
        # look for new tasks, and for tasks that are due.
        self._work_may_be_waiting.set()

    def stop(self) -> None:
        """Stop gracefully: claim nothing more, and wait for the running tasks to finish.

        When this returns, every task this worker claimed has been recorded as
        completed or failed (or put back on the queue for a retry); none is left
        running. The heartbeat stops last, so that no other worker takes this
        worker's tasks while they are finishing.
        """
        self._stopping.set()
        self._work_may_be_waiting.set()  # the poller may be waiting for work
        with self._slots_changed:
            self._slots_changed.notify_all()  # or for a free slot
        if self._poller is not None:
            self._poller.join()
        if self._listener is not None:
            self._listener.stop()  # only the poller needed it
        self._task_threads.shutdown(wait=True)
        if self._results is not None:
            self._results.stop()
        self._heartbeat_stopping.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
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

    def _poll_loop(self) -> None:
        while not self._stopping.is_set():
            free_slots = self._wait_for_free_slots()
            if free_slots == 0:
                break  # stopping
            # Cleared *before* the claim: a notification that arrives while the
            # claim runs sets it again, and the wait below returns at once. Clear
            # it after the claim, and that notification would be lost.
            self._work_may_be_waiting.clear()
            try:
                tasks = self.claim_tasks(free_slots)
            except psycopg.Error:
                # The database may be restarting; try again at the next poll.
                log.exception("could not claim tasks from queue %r", self.queue)
                tasks = []
            for task in tasks:
                self._start_task(task)
            if not tasks and not self._stopping.is_set():
                # Nothing to do: wait for a notification, or until the next
                # wake-up time, or poll_interval at most. (stop() sets the flag
                # after _stopping, so if it came after the clear() above, this
                # wait returns at once.)
                self._work_may_be_waiting.wait(self._time_until_next_poll())

    def _wait_for_free_slots(self) -> int:
        """Block until at least one slot is free; return how many are (0 when stopping)."""
        with self._slots_changed:
            while self._slots_in_use == self.slots and not self._stopping.is_set():
                self._slots_changed.wait()
            if self._stopping.is_set():
                return 0
            return self.slots - self._slots_in_use

    def _time_until_next_poll(self) -> float:
        """The poll interval, or less when a suspended task of this queue is due sooner.

        A sleeping task is not a new task: nothing tells the poller that its
        time has come. So an idle poller waits no longer than until the next
        wake-up time it can see.
        """
        try:
            with self.pool.connection() as conn:
                row = Querier(conn).seconds_until_next_wake_up(
                    queue=self.queue, max_seconds=self.poll_interval
                )
        except psycopg.Error:
            return self.poll_interval  # the database may be restarting
        return row.seconds if row is not None else self.poll_interval

    def claim_tasks(self, max_tasks: int) -> list[Task]:
        with self.pool.connection() as conn:
            tasks = Querier(conn).claim_tasks(
                worker_id=self.id, queue=self.queue, max_tasks=max_tasks
            )
        if tasks:
            log.info("claimed %d task(s): %s", len(tasks), [task.id for task in tasks])
        return tasks

    def _start_task(self, task: Task) -> None:
        with self._slots_changed:
            self._slots_in_use += 1
            self._peak_slots_in_use = max(self._peak_slots_in_use, self._slots_in_use)
        self._task_threads.submit(self._run_in_slot, task)

    def _run_in_slot(self, task: Task) -> None:
        try:
            self.run_task(task)
        finally:
            with self._slots_changed:
                self._slots_in_use -= 1
                self._tasks_finished += 1
                self._slots_changed.notify()

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
        with self._attempt_running(task):
            try:
                output = function(task.input)
            except TaskSuspended as suspension:
                # Not an outcome: the task waits in the database, and its
                # attempt goes on when it is claimed again. Nothing to record.
                log.info("%s", suspension)
                return
            except LostOwnership as error:
                log.info("stopped: %s", error)
                with self._slots_changed:
                    self._attempts_lost += 1
                return
            # Trying again cannot help with these: they fail the task at once.
            except (
                NonRetryableError,
                InvalidStepData,
                NonDeterminismError,
                ChildTaskFailed,
                EventTimeout,
            ) as error:
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
            # allow_nan=False: Python would write NaN and Infinity, which are not JSON.
            output_json = json.dumps(output, allow_nan=False)
        except (TypeError, ValueError) as error:
            self.record_failure(
                task,
                error_document(
                    "InvalidResult", f"the result of {task.task_name} is not JSON: {error}"
                ),
                retryable=False,
            )
            return
        self.record_success(task, output_json)

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
            context = DurableContext.load(self.pool, worker_id=self.id, task=task)
            output = durable_function(context, input)
            context.check_whole_history_replayed()
            return output

        return with_context

    @contextmanager
    def _attempt_running(self, task: Task) -> Iterator[RunningTask]:
        """Make the attempt visible to `current_task()` and to the heartbeat while it runs."""
        running = RunningTask(
            id=task.id,
            name=task.task_name,
            attempt=task.attempt,
            max_retries=task.max_retries,
            pool=self.pool,
        )
        with self._slots_changed:
            self._running[task.id] = running
        token = _current_task.set(running)
        try:
            yield running
        finally:
            _current_task.reset(token)
            with self._slots_changed:
                # A task that suspended may be claimed again, by this worker,
                # before this run has unwound: leave that new run's entry alone.
                if self._running.get(task.id) is running:
                    del self._running[task.id]

    def record_success(self, task: Task, output_json: str) -> None:
        self._result_writer().submit(AttemptOutcome.completed(task, output_json))

    def record_failure(self, task: Task, error: dict[str, Any], *, retryable: bool) -> None:
        self._result_writer().submit(AttemptOutcome.failed(task, error, retryable=retryable))

    def _result_writer(self) -> ResultWriter:
        if self._results is None:
            raise RuntimeError("the worker is not started")
        return self._results

    def _heartbeat_loop(self) -> None:
        while not self._heartbeat_stopping.wait(self.heartbeat_interval):
            try:
                self.heartbeat()
            except psycopg.Error:
                # Missing a beat or two is fine; missing them all for the whole
                # inactivity threshold gets this worker's tasks reassigned.
                log.exception("heartbeat of worker %d failed", self.id)

    def heartbeat(self) -> None:
        """Say this worker is alive, sweep for work others left, and cancel lost attempts."""
        # Which attempts run here *before* asking the database which ones this
        # worker owns: an attempt claimed after this line may not be visible to
        # the query below, and must not be mistaken for a lost one.
        with self._slots_changed:
            running = list(self._running.values())
        with self.pool.connection() as conn:
            queries = Querier(conn)
            queries.record_heartbeat(id=self.id)
            self._sweep(conn, "schedule timeout", queries.time_out_queued_tasks)
            self._sweep(conn, "execution timeout", queries.time_out_running_tasks)
            self._sweep(
                conn,
                "worker lost",
                lambda: queries.reassign_tasks_of_lost_workers(
                    inactivity_threshold_seconds=self.inactivity_threshold
                ),
            )
            owned = {
                (row.id, row.attempt) for row in queries.list_owned_attempts(worker_id=self.id)
            }
        for attempt in running:
            if (attempt.id, attempt.attempt) not in owned and not attempt.cancelled.is_set():
                log.info(
                    "task %d attempt %d is no longer this worker's: cancelling it",
                    attempt.id,
                    attempt.attempt,
                )
                attempt.cancelled.set()

    def _sweep(
        self, conn: psycopg.Connection[Any], reason: str, sweep: Callable[[], list[Task]]
    ) -> None:
        """Run one sweep; a child it fails wakes its parent, in the same transaction."""
        with conn.transaction():
            tasks = sweep()
            wake_parents(Querier(conn), tasks)
        for task in tasks:
            log.info(
                "%s: task %d (%s) attempt %d is now %s",
                reason,
                task.id,
                task.display_name,
                task.attempt,
                task.status,
            )
