"""A deadline for a whole task: `enqueue(..., cancel_after=seconds)`.

A report nobody reads after five minutes should stop at five minutes, however
its time went (waiting, retrying, sleeping). Add a `cancel_after` parameter to
enqueue (seconds, None by default): a task not finished that long after it was
enqueued is cancelled, as `cancel` would, by `cancelled_by` 'deadline', through
the sweeper (a bounded batch statement, like the timeouts'). The check enqueues
three tasks with a deadline of 2 s on a worker of its own: a plain task that runs
on past it is cancelled (its function sees its cancellation flag, and the result
it returns afterwards is rejected); a durable task asleep for an hour meets
`Cancelled`, and its compensation step is recorded after its cancellation event,
once; and a task that finished in time stays completed, its cancellation never
requested, although the sweep that cancelled the others came after its deadline.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from typing import Any

import pytest

from exercises import expect
from lessons.lesson13_cancellation_and_schedules.db.models import EventKind, Task, TaskStatus
from lessons.lesson13_cancellation_and_schedules.db.queries import Querier
from lessons.lesson13_cancellation_and_schedules.engine import client
from lessons.lesson13_cancellation_and_schedules.engine.attempts import current_task
from lessons.lesson13_cancellation_and_schedules.engine.client import wait_for_task
from lessons.lesson13_cancellation_and_schedules.engine.durable import Cancelled, DurableContext
from lessons.lesson13_cancellation_and_schedules.engine.shared import FINISHED_STATUSES
from lessons.lesson13_cancellation_and_schedules.engine.worker import Worker
from tests.conftest import LessonDatabase
from tests.waiting import wait_until

LESSON = "lesson13_cancellation_and_schedules"
# Long enough for the durable task to have started (and run a step) before it:
# cancelled before it ever ran, it would have nothing to compensate.
DEADLINE = 2.0
AN_HOUR = 3600.0

# What the functions below did, by task id (the worker runs in this process).
flag_seen_by: list[int] = []
returned_by: list[int] = []
booked_by: list[int] = []
unbooked_by: list[int] = []
# Set when the check ends: an overrunning function that was never cancelled
# returns then, so that the worker can stop.
RELEASE = threading.Event()


def finish_at_once(input: Any) -> dict[str, bool]:
    return {"done": True}


def overrun(input: Any) -> dict[str, bool]:
    """Run until cancelled, then return a result all the same (a late one)."""
    task = current_task()
    while not (task.cancelled.is_set() or RELEASE.is_set()):
        task.cancelled.wait(0.05)
    if task.cancelled.is_set():
        flag_seen_by.append(task.id)
    returned_by.append(task.id)
    return {"late": True}


def book(input: Any) -> dict[str, bool]:
    booked_by.append(current_task().id)
    return {"booked": True}


def unbook(input: Any) -> dict[str, bool]:
    unbooked_by.append(current_task().id)
    return {"booked": False}


def book_then_sleep(ctx: DurableContext, input: Any) -> Any:
    """Book, then sleep for an hour; cancelled, undo the booking."""
    try:
        ctx.run_step("book", book, input)
        ctx.sleep(AN_HOUR)
    except Cancelled:
        ctx.run_step("cancel booking", unbook, input)
        raise
    return {"slept": True}


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    for recorded in (flag_seen_by, returned_by, booked_by, unbooked_by):
        recorded.clear()
    RELEASE.clear()
    return lesson_database(LESSON)


def get_task(database: LessonDatabase, task_id: int) -> Task:
    with database.pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    assert task is not None, f"task {task_id} vanished"
    return task


def finished(database: LessonDatabase, task_id: int) -> Task | None:
    task = get_task(database, task_id)
    return task if task.status in FINISHED_STATUSES else None


def error_type(task: Task) -> Any:
    return (task.output or {}).get("error", {}).get("type")


def test_tasks_past_their_deadline_are_cancelled_and_the_others_left_alone(
    database: LessonDatabase,
) -> None:
    expect(
        "cancel_after" in inspect.signature(client.enqueue).parameters,
        "lesson 13's enqueue() has no `cancel_after` parameter yet: see exercise 1 in its README",
    )
    # Called through a plain callable: the parameter is the exercise's.
    enqueue: Callable[..., int] = client.enqueue
    worker = Worker(
        database.pool,
        {"finish_at_once": finish_at_once, "overrun": overrun, "book": book, "unbook": unbook},
        durable_functions={"book_then_sleep": book_then_sleep},
        slots=3,
        poll_interval=0.05,
        # The sweeper sweeps once per heartbeat interval.
        heartbeat_interval=0.1,
        inactivity_threshold=1.0,
        run_schedules=False,
    )
    with worker:
        try:
            with database.pool.connection() as conn:
                # First, so that its deadline is the earliest of the three.
                in_time = enqueue(conn, "finish_at_once", {}, cancel_after=DEADLINE)
                running_late = enqueue(conn, "overrun", {}, cancel_after=DEADLINE)
                asleep = enqueue(conn, "book_then_sleep", {}, durable=True, cancel_after=DEADLINE)
                wait_until(
                    lambda: booked_by and get_task(database, asleep).status != TaskStatus.RUNNING,
                    message="the durable task never booked and went to sleep",
                )
                expect(
                    get_task(database, asleep).status == TaskStatus.SUSPENDED,
                    f"the durable task, enqueued with cancel_after={DEADLINE}, did not stay asleep "
                    f"until its deadline: {get_task(database, asleep)}",
                )

                late = wait_until(
                    lambda: finished(database, running_late),
                    timeout=20,
                    message=lambda: (
                        f"the plain task is still {get_task(database, running_late).status} "
                        f"long after its deadline of {DEADLINE} s: nothing cancelled it"
                    ),
                )
                wait_until(
                    lambda: running_late in returned_by and worker.results_rejected >= 1,
                    message=lambda: (
                        f"the cancelled plain task's function returned: "
                        f"{running_late in returned_by}; results rejected: "
                        f"{worker.results_rejected}"
                    ),
                )
                asleep_task = wait_for_task(database.pool, asleep, timeout=20)
                in_time_task = wait_for_task(database.pool, in_time, timeout=20)
                events = Querier(conn).list_task_events(task_id=asleep)
        finally:
            # Before the worker stops: it waits for its task threads.
            RELEASE.set()

    expect(
        late.status == TaskStatus.CANCELLED and late.cancelled_by == "deadline",
        f"the plain task past its deadline should end cancelled by 'deadline'; it is "
        f"{late.status}, cancelled by {late.cancelled_by}: {late.output}",
    )
    expect(
        running_late in flag_seen_by,
        "the plain task's function never saw its cancellation flag: was it cancelled "
        "through cancel_task, which tells the worker running it?",
    )
    late_now = get_task(database, running_late)
    expect(
        late_now.status == TaskStatus.CANCELLED
        and error_type(late_now) == "Cancelled"
        and late_now.attempt == 1,
        f"the late result of the cancelled task was not rejected: it is {late_now.status} "
        f"after {late_now.attempt} attempt(s), with output {late_now.output}",
    )

    expect(
        asleep_task.status == TaskStatus.CANCELLED and asleep_task.cancelled_by == "deadline",
        f"the durable task past its deadline should end cancelled by 'deadline'; it is "
        f"{asleep_task.status}, cancelled by {asleep_task.cancelled_by}: {asleep_task.output}",
    )
    kinds = [(event.kind, event.name) for event in events]
    cancellations = [n for n, (kind, _) in enumerate(kinds) if kind == EventKind.CANCELLATION]
    expect(
        len(cancellations) == 1 and (EventKind.STEP, "cancel booking") in kinds[cancellations[0] :],
        f"the durable task's history should record its cancellation, then its "
        f"compensation step: it records {kinds}",
    )
    assert booked_by == [asleep] and unbooked_by == [asleep], (
        f"booked by {booked_by}, unbooked by {unbooked_by}: each once, by task {asleep}"
    )

    expect(
        in_time_task.status == TaskStatus.COMPLETED
        and in_time_task.cancel_requested_at is None
        and in_time_task.cancelled_by is None,
        f"the task that finished within its deadline should stay completed and never "
        f"cancelled: it is {in_time_task.status}, cancelled by {in_time_task.cancelled_by}",
    )
