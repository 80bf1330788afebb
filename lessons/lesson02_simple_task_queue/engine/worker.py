"""A worker: it claims tasks from one queue, runs them, and records what happened.

The database is the broker. The worker runs each task's function *outside* any
transaction (a function may take minutes; a transaction held that long would
block vacuum and hold locks) and records the result in a second, short
statement.

Threads mirror the Go guide's goroutines. The poller (`poller.py`) claims
tasks on a thread of its own, and each claimed task runs in a thread of its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from ..db.models import Task
from ..db.queries import Querier
from .poller import Poller
from .shared import DEFAULT_QUEUE, error_document, exception_message, first_line, to_json

log = logging.getLogger(__name__)

# A task function takes the task's input (a JSON value: dict, list, str, int,
# float, bool or None) and returns its output (another JSON value).
TaskFunction = Callable[[Any], Any]


class Worker:
    """Runs the tasks of one queue with the functions registered under their names.

    Use it as a context manager, or call `start()` and `stop()`:

        with Worker(pool, {"example_task": example_task}):
            ...  # tasks of the "default" queue run in the background
    """

    def __init__(
        self,
        pool: ConnectionPool,
        functions: Mapping[str, TaskFunction] | None = None,
        *,
        queue: str = DEFAULT_QUEUE,
        poll_interval: float = 0.5,
        batch_size: int = 10,
    ) -> None:
        self.pool = pool
        self.queue = queue
        # How long to wait before asking again when the queue was empty.
        self.poll_interval = poll_interval
        # The most tasks one claim takes.
        self.batch_size = batch_size
        self.functions: dict[str, TaskFunction] = dict(functions or {})
        self._poller: Poller | None = None
        self._task_threads: set[threading.Thread] = set()
        self._task_threads_lock = threading.Lock()

    def register(self, name: str, function: TaskFunction) -> None:
        """Tasks enqueued with `task_name=name` will run `function`."""
        self.functions[name] = function

    def start(self) -> None:
        if self._poller is not None:
            raise RuntimeError("this worker has already been started")
        self._poller = Poller(
            self.pool,
            queue=self.queue,
            poll_interval=self.poll_interval,
            batch_size=self.batch_size,
            start_task=self._start_task,
        )
        self._poller.start()
        log.info("worker started on queue %r", self.queue)

    def stop(self) -> None:
        """Stop gracefully: claim nothing more, and wait for the running tasks to finish.

        When this returns, every task this worker claimed has been recorded as
        completed or failed; none is left running.
        """
        if self._poller is not None:
            self._poller.stop()
        while True:
            with self._task_threads_lock:
                running = list(self._task_threads)
            if not running:
                break
            for thread in running:
                thread.join()
        log.info("worker on queue %r stopped", self.queue)

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
        """Run a claimed task on a thread of its own."""
        thread = threading.Thread(
            target=self._run_in_thread, args=(task,), name=f"task-{task.id}", daemon=True
        )
        with self._task_threads_lock:
            self._task_threads.add(thread)
        thread.start()

    def _run_in_thread(self, task: Task) -> None:
        try:
            self.run_task(task)
        except psycopg.Error:
            # The result could not be recorded (the database went away). The task
            # stays "running" in the table: lesson 04 is about exactly this.
            log.exception("could not record the result of task %d", task.id)
        finally:
            with self._task_threads_lock:
                self._task_threads.discard(threading.current_thread())

    def run_task(self, task: Task) -> None:
        """Run one claimed task and record its result: completed, or failed with a reason.

        Every way a task can go wrong ends here in a recorded failure, so a task
        is never left running because of what its function did.
        """
        function = self.functions.get(task.task_name)
        if function is None:
            self.record_failure(
                task, error_document("UnknownTask", f"no function registered for {task.task_name}")
            )
            return
        try:
            output = function(task.input)
        except BaseException as error:  # even SystemExit: a task is never left running
            log.info("task %d (%s) raised %r", task.id, task.display_name, error)
            self.record_failure(
                task, error_document(type(error).__name__, exception_message(error))
            )
            return
        try:
            to_json(output, f"the result of {task.task_name}")
        except ValueError as error:
            self.record_failure(task, error_document("InvalidResult", str(error)))
            return
        self.record_success(task, output)

    def record_success(self, task: Task, output: Any) -> None:
        with self.pool.connection() as conn:
            try:
                Querier(conn).complete_task(id=task.id, output=output)
            except psycopg.DataError as error:
                # Valid JSON that jsonb still refuses, such as a string holding "\u0000".
                Querier(conn).fail_task(
                    id=task.id,
                    error=error_document(
                        "InvalidResult",
                        f"the result of {task.task_name} cannot be stored: {first_line(error)}",
                    ),
                )
                return
        log.info("task %d (%s) completed", task.id, task.display_name)

    def record_failure(self, task: Task, error: dict[str, Any]) -> None:
        with self.pool.connection() as conn:
            Querier(conn).fail_task(id=task.id, error=error)
        log.info("task %d (%s) failed: %s", task.id, task.display_name, error["error"]["message"])
