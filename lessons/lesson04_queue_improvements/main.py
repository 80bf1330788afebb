"""Lesson 04: priorities, retries, timeouts, and workers that die or freeze mid-task.

    python lessons/lesson04_queue_improvements/main.py [-v] [--scenario NAME]

Each scenario prints what happens and checks it. The intervals are shortened
for the demonstration (heartbeat every 0.1 s, a worker silent for 1 s is
presumed dead); the course defaults are 1 s and 10 s.
"""

from __future__ import annotations

import datetime
import sys
import time
from collections.abc import Callable

# A Python without the course installed (`make install` puts it in .venv) would stop at
# the imports below with "No module named 'lessons'": say what to run instead.
try:
    import lessons.common.cli  # noqa: F401
except ModuleNotFoundError:
    print(
        f"error: this Python ({sys.executable}) does not have the course installed: run "
        "`make install`, then `.venv/bin/python lessons/lesson04_queue_improvements/main.py`.",
        file=sys.stderr,
    )
    sys.exit(2)

from psycopg_pool import ConnectionPool

from lessons.common.cli import Checks, Lesson, argument_parser, configure_logging, run_lesson
from lessons.lesson04_queue_improvements.db.models import Task, TaskStatus
from lessons.lesson04_queue_improvements.db.queries import Querier
from lessons.lesson04_queue_improvements.demo.tasks import FUNCTIONS
from lessons.lesson04_queue_improvements.engine.client import enqueue, wait_for_task
from lessons.lesson04_queue_improvements.engine.worker import Worker
from lessons.lesson04_queue_improvements.tools.worker_process import WorkerProcess

LESSON = Lesson.of(__file__)

POLL_INTERVAL = 0.05
HEARTBEAT_INTERVAL = 0.1
INACTIVITY_THRESHOLD = 1.0


def local_worker(pool: ConnectionPool, queue: str, slots: int) -> Worker:
    """A worker in this process, with the demonstration's intervals."""
    return Worker(
        pool,
        FUNCTIONS,
        queue=queue,
        slots=slots,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
    )


def worker_process(queue: str) -> WorkerProcess:
    """A worker in a child process of its own, that we can kill or freeze."""
    return WorkerProcess(
        schema=LESSON.schema,
        queue=queue,
        slots=1,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
        # Its log goes to a file we read back: we want the engine's events in it.
        verbose=True,
    )


def get_task(pool: ConnectionPool, task_id: int) -> Task:
    with pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    if task is None:
        raise LookupError(f"there is no task {task_id}")
    return task


def wait_until_running_on(pool: ConnectionPool, task_id: int, worker_id: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        task = get_task(pool, task_id)
        if task.status == TaskStatus.RUNNING and task.worker_id == worker_id:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task_id} did not start on worker {worker_id}")
        time.sleep(0.02)


def error_of(task: Task) -> tuple[str, str]:
    """The (type, message) of a failed task's error document."""
    error = (task.output or {}).get("error") or {}
    return error.get("type", ""), error.get("message", "")


def describe_task(task: Task) -> str:
    """The fields of a task a FAIL line needs: its whole row runs to a kilobyte."""
    return (
        f"task {task.id} {task.status} on attempt {task.attempt} "
        f"by worker {task.worker_id}: {task.output}"
    )


def started_at(task: Task) -> datetime.datetime:
    if task.started_at is None:
        raise ValueError(f"task {task.id} never started")
    return task.started_at


def scenario_priorities(pool: ConnectionPool, checks: Checks) -> None:
    print("\n== Priorities: higher first; within a priority, first come first served ==")
    plan = [
        ("low-1", 0),
        ("low-2", 0),
        ("high-1", 10),
        ("medium-1", 5),
        ("high-2", 10),
        ("medium-2", 5),
    ]
    with pool.connection() as conn:
        ids = [
            enqueue(
                conn,
                "example_task",
                {"message": name},
                queue="priorities",
                display_name=name,
                priority=priority,
            )
            for name, priority in plan
        ]
    print(
        "  Enqueued, in this order:", ", ".join(f"{name} ({priority})" for name, priority in plan)
    )
    with local_worker(pool, "priorities", slots=1):
        tasks = [wait_for_task(pool, task_id) for task_id in ids]
    ran = [task.display_name for task in sorted(tasks, key=started_at)]
    print("  A worker with one slot started them in this order:", ", ".join(ran))
    checks.check(
        ran == ["high-1", "high-2", "medium-1", "medium-2", "low-1", "low-2"],
        "higher priorities ran first, equal priorities in the order they were enqueued",
        f"the order was {ran}",
    )


def scenario_retries(pool: ConnectionPool, checks: Checks) -> None:
    print("\n== Retries: try again, up to a maximum, unless trying again cannot help ==")
    with pool.connection() as conn:
        flaky = enqueue(
            conn, "flaky_task", {"succeed_on_attempt": 3}, queue="retries", max_retries=3
        )
        hopeless = enqueue(
            conn,
            "flaky_task",
            {"succeed_on_attempt": 99},
            queue="retries",
            max_retries=2,
            display_name="hopeless_task",
        )
        declined = enqueue(
            conn,
            "charge_card",
            {"card": "4000-0000-0000-0002", "amount": 42},
            queue="retries",
            max_retries=3,
        )
    print("  flaky_task fails twice, then works; max_retries=3")
    print("  hopeless_task always fails; max_retries=2")
    print("  charge_card raises CardDeclined, a NonRetryableError; max_retries=3")
    with local_worker(pool, "retries", slots=3):
        flaky_task, hopeless_task, declined_task = (
            wait_for_task(pool, task_id) for task_id in (flaky, hopeless, declined)
        )
    for task in (flaky_task, hopeless_task, declined_task):
        outcome = task.output if task.status == TaskStatus.COMPLETED else ": ".join(error_of(task))
        print(f"  {task.display_name}: {task.status} after {task.attempt} attempt(s): {outcome}")
    checks.check(
        flaky_task.status == TaskStatus.COMPLETED and flaky_task.attempt == 3,
        "a task that failed twice was retried, and completed on its third attempt",
        f"{flaky_task.status} after {flaky_task.attempt}",
    )
    checks.check(
        hopeless_task.status == TaskStatus.FAILED
        and hopeless_task.attempt == 3
        and error_of(hopeless_task)[0] == "ConnectionError",
        "retries stopped at the maximum: 1 attempt + 2 retries, then failed with the last error",
        f"{hopeless_task.status} after {hopeless_task.attempt}: {hopeless_task.output}",
    )
    checks.check(
        declined_task.status == TaskStatus.FAILED
        and declined_task.attempt == 1
        and error_of(declined_task)[0] == "CardDeclined",
        "a non-retryable error failed the task at once, retries left or not",
        f"{declined_task.status} after {declined_task.attempt}: {declined_task.output}",
    )


def scenario_timeouts(pool: ConnectionPool, checks: Checks) -> None:
    print("\n== Timeouts: an attempt that runs too long, a task that waits too long ==")
    wants_seconds = 5
    with pool.connection() as conn:
        polite = enqueue(
            conn,
            "cancellable_sleep_task",
            {"seconds": wants_seconds},
            queue="timeouts",
            execution_timeout=0.3,
            max_retries=1,
        )
    print(
        f"  cancellable_sleep_task wants {wants_seconds} s, with a 0.3 s execution timeout "
        "and 1 retry;"
    )
    print("  it watches its cancellation flag.")
    started = time.monotonic()
    with local_worker(pool, "timeouts", slots=1) as worker:
        polite_task = wait_for_task(pool, polite)
    elapsed = time.monotonic() - started
    print(
        f"  -> {polite_task.status} after {polite_task.attempt} attempts: "
        + ": ".join(error_of(polite_task))
    )
    print(f"  -> each attempt saw the flag and gave up; the worker was done in {elapsed:.1f} s,")
    print(f"     and rejected the {worker.results_rejected} results that came back too late.")
    checks.check(
        polite_task.status == TaskStatus.FAILED
        and polite_task.attempt == 2
        and error_of(polite_task)[0] == "ExecutionTimeout",
        "the execution timeout ended both attempts, then failed the task",
        f"{polite_task.status} after {polite_task.attempt}: {polite_task.output}",
    )
    # Had either attempt ignored its flag, it alone would have taken all it wants.
    checks.check(
        elapsed < wants_seconds and worker.results_rejected == 2,
        "the function saw its cancellation flag, and its late results were rejected",
        f"{elapsed:.1f} s, {worker.results_rejected} rejected",
    )

    with pool.connection() as conn:
        stubborn = enqueue(
            conn,
            "sleep_task",
            {"seconds": 1.0},
            queue="timeouts",
            execution_timeout=0.3,
            max_retries=0,
        )
        waiting = enqueue(
            conn, "example_task", {"message": "am I late?"}, queue="timeouts", schedule_timeout=0.5
        )
    print("\n  sleep_task sleeps 1 s and ignores the flag, with a 0.3 s execution timeout;")
    print("  example_task, queued behind it on a worker with one slot, must start within 0.5 s.")
    with local_worker(pool, "timeouts", slots=1) as worker:
        stubborn_task = wait_for_task(pool, stubborn)
        waiting_task = wait_for_task(pool, waiting)
    after_return = get_task(pool, stubborn)
    print(f"  -> sleep_task: {stubborn_task.status}: " + ": ".join(error_of(stubborn_task)))
    print("     Its thread could not be stopped, so its slot stayed busy for the full second,")
    print(f"     and its result was rejected when it came ({worker.results_rejected} rejected).")
    print(
        f"  -> example_task: {waiting_task.status} without starting: "
        + ": ".join(error_of(waiting_task))
    )
    checks.check(
        after_return.status == TaskStatus.FAILED
        and error_of(after_return)[0] == "ExecutionTimeout"
        and worker.results_rejected == 1,
        "a function that ignores the flag still times out, and its late result is rejected",
        f"{after_return.status}: {after_return.output}, {worker.results_rejected} rejected",
    )
    checks.check(
        waiting_task.status == TaskStatus.FAILED
        and waiting_task.attempt == 0
        and error_of(waiting_task)[0] == "ScheduleTimeout",
        "a task not started by its schedule deadline failed without running",
        f"{waiting_task.status} after {waiting_task.attempt}: {waiting_task.output}",
    )


def scenario_reassignment(pool: ConnectionPool, checks: Checks) -> None:
    print("\n== Reassignment: a worker process dies mid-task ==")
    with worker_process("reassignment") as first, worker_process("reassignment") as second:
        first.start()
        with pool.connection() as conn:
            task_id = enqueue(conn, "sleep_task", {"seconds": 1.0}, queue="reassignment")
        wait_until_running_on(pool, task_id, first.id)
        print(
            f"  Task {task_id} (sleep_task, 1 s) is running on worker {first.id}, pid {first.pid}."
        )
        first.kill()
        killed_at = time.monotonic()
        print(f"  SIGKILL worker {first.id}. The task is still 'running' in the table, owned by")
        print("  a worker that will never finish it, nor send another heartbeat.")
        second.start()
        print(
            f"  Started worker {second.id}. Once worker {first.id} has been silent for "
            f"{INACTIVITY_THRESHOLD} s, it puts the task back on the queue and runs it."
        )
        task = wait_for_task(pool, task_id, timeout=20)
        recovered_in = time.monotonic() - killed_at
        second.stop()
    print(
        f"  -> task {task_id}: {task.status} by worker {task.worker_id} on attempt "
        f"{task.attempt}, {recovered_in:.1f} s after the kill"
    )
    checks.check(
        task.status == TaskStatus.COMPLETED and task.worker_id == second.id and task.attempt == 2,
        "another worker finished the task of the worker that died",
        f"{task.status} by worker {task.worker_id} on attempt {task.attempt}",
    )


def scenario_fencing(pool: ConnectionPool, checks: Checks) -> None:
    print("\n== Fencing: a frozen worker wakes up after its task was given away ==")
    with worker_process("fencing") as first, worker_process("fencing") as second:
        first.start()
        with pool.connection() as conn:
            task_id = enqueue(conn, "sleep_task", {"seconds": 1.0}, queue="fencing")
        wait_until_running_on(pool, task_id, first.id)
        print(f"  Task {task_id} (sleep_task, 1 s) is running on worker {first.id}. SIGSTOP it:")
        print("  the process freezes, heartbeat and all, but is not dead.")
        first.pause()
        second.start()
        finished_by_second = wait_for_task(pool, task_id, timeout=20)
        print(
            f"  Worker {second.id} took the task over and finished it: "
            f"{finished_by_second.status} on attempt {finished_by_second.attempt}."
        )
        print(
            f"  SIGCONT worker {first.id}: it wakes up, finishes attempt 1, and tries to record it."
        )
        first.resume()
        first_exit_code = first.stop()
        first_log = first.log()
        second.stop()
    final = get_task(pool, task_id)
    rejections = [line for line in first_log.splitlines() if "result rejected" in line]
    for line in rejections:
        print(f"  worker {first.id} logged: {line.split(': ', 1)[-1]}")
    checks.check(
        finished_by_second.worker_id == second.id and finished_by_second.attempt == 2,
        "the frozen worker's task was reassigned and completed by the other worker",
        f"worker {finished_by_second.worker_id}, attempt {finished_by_second.attempt}",
    )
    checks.check(
        len(rejections) == 1 and first_exit_code == 0,
        "the frozen worker's late result was rejected",
        f"exit code {first_exit_code}, log:\n{first_log}",
    )
    checks.check(
        final == finished_by_second,
        "the recorded result is still the one of the worker that took over",
        f"now {describe_task(final)}, not {describe_task(finished_by_second)}",
    )


SCENARIOS: dict[str, Callable[[ConnectionPool, Checks], None]] = {
    "priorities": scenario_priorities,
    "retries": scenario_retries,
    "timeouts": scenario_timeouts,
    "reassignment": scenario_reassignment,
    "fencing": scenario_fencing,
}


def demonstrate(scenarios: list[str]) -> bool:
    checks = Checks()
    LESSON.reset()
    with LESSON.pool(max_size=6) as pool:
        for name in scenarios:
            SCENARIOS[name](pool, checks)
    return checks.passed


if __name__ == "__main__":
    parser = argument_parser(__doc__ or "")
    parser.add_argument("--scenario", choices=list(SCENARIOS), help="run only this scenario")
    options = parser.parse_args()
    configure_logging(options.verbose)
    run_lesson(lambda: demonstrate([options.scenario] if options.scenario else list(SCENARIOS)))
