"""Run a worker in a process of its own until SIGTERM or Ctrl-C, then stop gracefully.

    python -m lessons.lesson02_simple_task_queue.tools.worker_process \\
        --functions lessons.lesson02_simple_task_queue.demo.tasks --queue default

`--functions` names a module whose `FUNCTIONS` mapping lists the task functions
to register. The database comes from DATABASE_URL (or the embedded server), and
`--schema` says which schema holds this lesson's tables, so tests can point
workers at schemas of their own. The process prints "worker ready" once it is
polling, so a parent process knows when to rely on it.
"""

from __future__ import annotations

import importlib
import signal
import sys
from collections.abc import Mapping

from lessons.common.cli import Lesson, argument_parser, configure_logging
from lessons.common.database import DatabaseUnavailable, create_pool

from ..engine.shared import DEFAULT_QUEUE
from ..engine.worker import TaskFunction, Worker

LESSON = Lesson.of(__file__)

# The task functions a worker process registers unless told otherwise.
DEMO_FUNCTIONS = f"{LESSON.package}.demo.tasks"


def load_functions(module_name: str) -> Mapping[str, TaskFunction]:
    module = importlib.import_module(module_name)
    functions = getattr(module, "FUNCTIONS", None)
    if not isinstance(functions, Mapping):
        raise SystemExit(f"error: module {module_name} has no FUNCTIONS mapping")
    return functions


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__ or "")
    parser.add_argument("--schema", default=LESSON.schema)
    parser.add_argument("--queue", default=DEFAULT_QUEUE)
    parser.add_argument("--functions", default=DEMO_FUNCTIONS, metavar="MODULE")
    parser.add_argument("--poll-interval", type=float, default=0.5, metavar="SECONDS")
    options = parser.parse_args(argv)
    configure_logging(options.verbose)

    functions = load_functions(options.functions)
    # Block the stop signals before any thread exists: threads started later
    # inherit the mask, so a signal stays pending until the main thread takes it
    # with sigwait(). (A Python signal handler is not enough: when the kernel
    # hands the signal to another thread, a main thread waiting on a lock never
    # wakes up to run the handler.)
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)

    try:
        pool = create_pool(options.schema)
    except DatabaseUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with pool, Worker(pool, functions, queue=options.queue, poll_interval=options.poll_interval):
        print("worker ready", flush=True)
        signal.sigwait(stop_signals)
    return 0


if __name__ == "__main__":
    sys.exit(main())
