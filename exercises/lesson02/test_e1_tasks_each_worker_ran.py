"""Each worker says how many tasks it ran.

Three worker processes share one queue. When one stops (SIGTERM, or Ctrl-C in its
terminal) its last line on standard output must be `worker stopped: ran N tasks`. The
check runs three worker processes on 30 tasks, stops them, and compares each one's N
with the tasks the database shows it completed (every task's output names the process
that ran it): they must agree, and add up to 30.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

from exercises import expect
from lessons.lesson02_simple_task_queue.engine.client import enqueue
from tests.conftest import LessonDatabase
from tests.recording import create_executions_table
from tests.waiting import wait_until
from tests.worker_processes import LessonWorkerProcess, wait_ready

LESSON = "lesson02_simple_task_queue"
TASKS = 30
RAN = re.compile(r"worker stopped: ran (?P<tasks>[0-9]+) tasks?$")


def test_each_worker_process_reports_the_tasks_it_ran(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    database = lesson_database(LESSON)
    with database.pool.connection() as conn:
        create_executions_table(conn)
    workers = [
        LessonWorkerProcess(
            LESSON,
            schema=database.schema,
            functions="tests.lesson02.functions",
            arguments=["--poll-interval=0.02"],
        )
        for _ in range(3)
    ]
    with workers[0], workers[1], workers[2]:
        for worker in workers:
            worker.launch()
        wait_ready(workers)
        with database.pool.connection() as conn, conn.transaction():
            for n in range(TASKS):
                enqueue(conn, "record_execution", {"schema": database.schema, "n": n})

        def completed_by_pid() -> Counter[int] | None:
            with database.pool.connection() as conn:
                rows = conn.execute(
                    "SELECT (output->>'pid')::int FROM tasks WHERE status = 'completed'"
                ).fetchall()
            return Counter(pid for (pid,) in rows) if len(rows) == TASKS else None

        completed = wait_until(completed_by_pid, message=f"the {TASKS} tasks did not complete")
        reported: dict[int, int] = {}
        for worker in workers:
            expect(worker.terminate() == 0, f"a worker did not stop cleanly:\n{worker.log()}")
            stdout = worker.process.stdout
            lines = stdout.read().splitlines() if stdout is not None else []
            match = RAN.match(lines[-1].strip()) if lines else None
            last = repr(lines[-1]) if lines else "nothing"
            expect(
                match is not None,
                f"worker process {worker.pid} stopped, and its last line was {last}, not "
                "'worker stopped: ran N tasks': see exercise 1 in lesson 02's README",
            )
            assert match is not None
            reported[worker.pid] = int(match["tasks"])
    for pid, tasks in reported.items():
        expect(
            tasks == completed[pid],
            f"worker process {pid} said it ran {tasks} tasks; the database shows it "
            f"completed {completed[pid]}",
        )
    expect(sum(reported.values()) == TASKS, f"the workers ran {reported}, not {TASKS} in all")
