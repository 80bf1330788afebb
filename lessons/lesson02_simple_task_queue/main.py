"""Lesson 02: put a task on a queue, let a worker run it, and check its output.

python lessons/lesson02_simple_task_queue/main.py [-v]
"""

from __future__ import annotations

import json
import sys

# A Python without the course installed (`make install` puts it in .venv) would stop at
# the imports below with "No module named 'lessons'": say what to run instead.
try:
    import lessons.common.cli  # noqa: F401
except ModuleNotFoundError:
    print(
        f"error: this Python ({sys.executable}) does not have the course installed: run "
        "`make install`, then `.venv/bin/python lessons/lesson02_simple_task_queue/main.py`.",
        file=sys.stderr,
    )
    sys.exit(2)

from lessons.common.cli import Checks, Lesson, argument_parser, configure_logging, run_lesson
from lessons.lesson02_simple_task_queue.db.models import TaskStatus
from lessons.lesson02_simple_task_queue.demo.tasks import FUNCTIONS
from lessons.lesson02_simple_task_queue.engine.client import enqueue, wait_for_task
from lessons.lesson02_simple_task_queue.engine.worker import Worker

LESSON = Lesson.of(__file__)


def demonstrate() -> bool:
    checks = Checks()
    LESSON.reset()
    with LESSON.pool() as pool:
        with pool.connection() as conn:
            hello = enqueue(conn, "example_task", {"message": "Hello, world!"})
            # A task whose function is not registered: it must fail, readably.
            unknown = enqueue(conn, "no_such_task", {})
        print(f"Enqueued task {hello}: example_task({{'message': 'Hello, world!'}})")
        print(f"Enqueued task {unknown}: no_such_task({{}}), which no worker knows")

        print("Starting a worker on the 'default' queue ...")
        with Worker(pool, FUNCTIONS, poll_interval=0.1):
            hello_task = wait_for_task(pool, hello)
            unknown_task = wait_for_task(pool, unknown)
        print("The worker stopped.\n")

        print(f"Task {hello_task.id} is {hello_task.status}: {json.dumps(hello_task.output)}")
        print(f"Task {unknown_task.id} is {unknown_task.status}: {json.dumps(unknown_task.output)}")
        print()

        checks.check(hello_task.status == TaskStatus.COMPLETED, "example_task completed")
        checks.check(
            hello_task.output == {"reply": "Processed: Hello, world!"},
            "its output is what example_task returned",
            f"got {hello_task.output!r}",
        )
        checks.check(
            unknown_task.status == TaskStatus.FAILED
            and unknown_task.output
            == {
                "error": {
                    "type": "UnknownTask",
                    "message": "no function registered for no_such_task",
                }
            },
            "a task with no registered function failed with a readable reason",
            f"got {unknown_task.status} {unknown_task.output!r}",
        )
    return checks.passed


if __name__ == "__main__":
    configure_logging(argument_parser(__doc__ or "").parse_args().verbose)
    run_lesson(demonstrate)
