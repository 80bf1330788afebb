"""Lesson 11, with workers in this process: a fork reuses exactly the events
before N (steps, children, sleeps and waits) and runs the rest; the original is
untouched; forks of forks keep their lineage; a fork at the event a deploy
changed runs the new code; a replay clears the history, runs from scratch with
a fresh retry budget, and never reuses an attempt number; forks and replays
wake the workers at once; what cannot be replayed or forked is refused with one
line, and changes nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from lessons.lesson11_retries_replays_forks.db.models import EventKind, TaskStatus
from lessons.lesson11_retries_replays_forks.db.queries import Querier
from lessons.lesson11_retries_replays_forks.demo.tasks import EMAIL_FIX, ORDERS_QUEUE
from lessons.lesson11_retries_replays_forks.engine.client import wait_for_task
from lessons.lesson11_retries_replays_forks.engine.reruns import RerunRefused, fork, replay
from tests.conftest import LessonDatabase
from tests.lesson11.functions import DEPLOYED, STEP_RUNS
from tests.lesson11.helpers import (
    LESSON,
    PARENTS_QUEUE,
    all_tasks,
    enqueue_durable,
    get_task,
    history,
    push_once_waiting,
    run_until_finished,
    workers,
)
from tests.waiting import wait_until


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON, max_size=24)


def finished_task(database: LessonDatabase, label: str) -> int:
    """A completed step_then_three_children: event 1 a step, events 2 to 4 children."""
    task_id = enqueue_durable(database, "step_then_three_children", {"label": label})
    task = run_until_finished(database, task_id)
    assert task.status == TaskStatus.COMPLETED, task
    return task_id


def echo_children(database: LessonDatabase) -> list[int]:
    return [task.id for task in all_tasks(database.pool) if task.task_name == "echo"]


@pytest.mark.parametrize("at_event", [1, 2, 3, 4])
def test_a_fork_reuses_exactly_the_events_before_n_and_runs_the_rest(
    database: LessonDatabase, at_event: int
) -> None:
    label = f"fork-at-{at_event}"
    original_id = finished_task(database, label)
    original = history(database.pool, original_id)
    children_before = echo_children(database)

    with database.pool.connection() as conn:
        forked = fork(conn, original_id, at_event=at_event)
    copied = history(database.pool, forked.id)
    assert (forked.forked_from_task_id, forked.forked_at_event) == (original_id, at_event)
    assert (forked.status, forked.attempt, forked.input) == (TaskStatus.QUEUED, 0, {"label": label})
    assert [(e.event_number, e.key, e.output, e.child_task_id) for e in copied] == [
        (e.event_number, e.key, e.output, e.child_task_id) for e in original[: at_event - 1]
    ]
    assert all(e.copied_from_task_id == original_id for e in copied)

    done = run_until_finished(database, forked.id)
    assert done.status == TaskStatus.COMPLETED and done.attempt == 1, done
    events = history(database.pool, forked.id)
    assert [e.name for e in events] == [e.name for e in original]
    reused, rerun = events[: at_event - 1], events[at_event - 1 :]
    assert [e.child_task_id for e in reused] == [e.child_task_id for e in original[: at_event - 1]]
    assert all(e.copied_from_task_id is None and e.attempt == 1 for e in rerun)
    # No child before N was spawned again; one new child for each child event from N on.
    new_children = sorted(set(echo_children(database)) - set(children_before))
    assert new_children == [e.child_task_id for e in rerun if e.kind == EventKind.CHILD]
    # The step (event 1) ran again only when the fork starts at it.
    assert STEP_RUNS[label] == (2 if at_event == 1 else 1)


def test_the_original_and_its_children_are_unchanged_after_a_fork(
    database: LessonDatabase,
) -> None:
    original_id = finished_task(database, "untouched")
    before = {task.id: task for task in all_tasks(database.pool)}
    events_before = history(database.pool, original_id)

    with database.pool.connection() as conn:
        forked = fork(conn, original_id, at_event=3)
    assert run_until_finished(database, forked.id).status == TaskStatus.COMPLETED

    after = {task.id: task for task in all_tasks(database.pool)}
    assert {task_id: after[task_id] for task_id in before} == before
    assert history(database.pool, original_id) == events_before


def test_forks_of_forks_keep_their_lineage(database: LessonDatabase) -> None:
    original_id = finished_task(database, "lineage")
    with database.pool.connection() as conn:
        first = fork(conn, original_id, at_event=3)
    run_until_finished(database, first.id)
    with database.pool.connection() as conn:
        second = fork(conn, first.id, at_event=4)
        sibling = fork(conn, original_id, at_event=2)
    run_until_finished(database, second.id)
    run_until_finished(database, sibling.id)

    original, of_first = history(database.pool, original_id), history(database.pool, first.id)
    events = history(database.pool, second.id)
    assert (second.forked_from_task_id, second.forked_at_event) == (first.id, 4)
    assert (sibling.forked_from_task_id, sibling.forked_at_event) == (original_id, 2)
    # Each copy names the task that first recorded it: events 1 and 2 come from
    # the original (through the first fork), event 3 from the first fork.
    assert [e.copied_from_task_id for e in events] == [original_id, original_id, first.id, None]
    assert [e.child_task_id for e in events[:3]] == [
        original[1 - 1].child_task_id,
        original[2 - 1].child_task_id,
        of_first[3 - 1].child_task_id,
    ]
    with database.pool.connection() as conn:
        queries = Querier(conn)
        assert [t.id for t in queries.list_forks(task_id=original_id)] == [first.id, sibling.id]
        assert [t.id for t in queries.list_forks(task_id=first.id)] == [second.id]


def test_a_fork_at_the_event_a_deploy_changed_runs_the_new_code_from_there(
    database: LessonDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 2 renamed the step at event 2. A fork that copies event 2 fails on
    non-determinism; a fork at event 2 replays event 1 and runs version 2 on."""
    monkeypatch.setitem(DEPLOYED, "version", 1)
    original_id = enqueue_durable(database, "versioned_labels", {"label": "deploy"})
    assert run_until_finished(database, original_id).status == TaskStatus.COMPLETED

    monkeypatch.setitem(DEPLOYED, "version", 2)
    with database.pool.connection() as conn:
        too_late = fork(conn, original_id, at_event=3)
    failed = run_until_finished(database, too_late.id)
    assert failed.status == TaskStatus.FAILED
    assert (failed.output or {})["error"] == {
        "type": "NonDeterminismError",
        "message": 'event 2 does not match the history: recorded step print_label({"order":'
        '"deploy"}), new call step print_shipping_label({"order":"deploy"})',
    }

    with database.pool.connection() as conn:
        at_the_change = fork(conn, too_late.id, at_event=2)
    done = run_until_finished(database, at_the_change.id)
    assert done.status == TaskStatus.COMPLETED and done.output == {"version": 2}, done
    events = history(database.pool, done.id)
    assert [(e.name, e.copied_from_task_id) for e in events] == [
        ("count_run", original_id),
        ("print_shipping_label", None),
        ("notify", None),
    ]
    assert STEP_RUNS["deploy"] == 1


def test_a_replay_clears_the_history_and_runs_everything_again(
    database: LessonDatabase,
) -> None:
    task_id = finished_task(database, "replayed")
    first_run = history(database.pool, task_id)
    children_before = {task.id: task for task in all_tasks(database.pool) if task.id != task_id}

    with database.pool.connection() as conn:
        done = replay(conn, task_id)
    assert [e.event_number for e in done.cleared] == [1, 2, 3, 4]
    queued = get_task(database.pool, task_id)
    assert (queued.status, queued.output, queued.attempt) == (TaskStatus.QUEUED, None, 1)
    assert queued.attempts_before_replay == 1
    assert history(database.pool, task_id) == []

    task = run_until_finished(database, task_id)
    assert task.status == TaskStatus.COMPLETED and task.attempt == 2, task
    events = history(database.pool, task_id)
    assert [e.name for e in events] == [e.name for e in first_run]
    assert all(e.attempt == 2 for e in events)
    children = {e.child_task_id for e in events if e.kind == EventKind.CHILD}
    assert len(children) == 3
    assert not children & {e.child_task_id for e in first_run}
    assert STEP_RUNS["replayed"] == 2
    # The first run's children are left as they were.
    after = {task.id: task for task in all_tasks(database.pool)}
    assert {task_id: after[task_id] for task_id in children_before} == children_before


def test_a_replay_gives_a_fresh_retry_budget_and_attempt_numbers_keep_counting(
    database: LessonDatabase,
) -> None:
    task_id = enqueue_durable(database, "always_fail", None, max_retries=1)
    task = run_until_finished(database, task_id)
    assert task.status == TaskStatus.FAILED and task.attempt == 2, task

    with database.pool.connection() as conn:
        replay(conn, task_id)
    task = run_until_finished(database, task_id)
    assert task.status == TaskStatus.FAILED and task.attempt == 4, task
    assert (task.output or {})["error"]["message"] == "attempt 4 fails, like every attempt"


def test_an_attempt_from_before_a_replay_stays_fenced_out(database: LessonDatabase) -> None:
    """The attempt number is not reset by a replay, so no two attempts share one,
    and a write fenced on an old attempt is refused even from the same worker."""
    with database.pool.connection() as conn:
        queries = Querier(conn)
        worker = queries.register_worker(
            name="test", queue=PARENTS_QUEUE, slots=1, lease_seconds=10
        )
        assert worker is not None
        task_id = enqueue_durable(database, "always_fail", None, max_retries=0)
        [first] = queries.claim_tasks(
            worker_id=worker.id,
            queue=PARENTS_QUEUE,
            task_names=[],
            durable_task_names=["always_fail"],
            max_tasks=1,
        )
        queries.finish_attempts(
            worker_id=worker.id,
            ids=[task_id],
            attempts=[first.attempt],
            succeeded=[False],
            retryable=[False],
            infrastructure=[False],
            outputs=['{"error": {"type": "Test", "message": "failed"}}'],
        )
        replay(conn, task_id)
        [second] = queries.claim_tasks(
            worker_id=worker.id,
            queue=PARENTS_QUEUE,
            task_names=[],
            durable_task_names=["always_fail"],
            max_tasks=1,
        )
        assert (first.attempt, second.attempt) == (1, 2)

        def append(attempt: int) -> bool:
            event = queries.append_event(
                task_id=task_id,
                event_number=1,
                kind=EventKind.STEP,
                name="late",
                input_=None,
                key="k",
                output=None,
                child_task_id=None,
                wake_after_seconds=None,
                attempt=attempt,
                worker_id=worker.id,
            )
            return event is not None

        assert not append(first.attempt)
        assert append(second.attempt)


def test_an_order_forked_at_its_email_reuses_approval_and_charge_and_a_replay_charges_again(
    database: LessonDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(EMAIL_FIX, raising=False)
    order = {"order_id": "A-1", "card": "4242", "amount_cents": 4200, "email": "ada@x.org"}
    order_id = enqueue_durable(database, "process_order", order, queue=ORDERS_QUEUE)
    with workers(database):
        push_once_waiting(database, order_id, "approval:A-1", {"approved": True})
        wait_for_task(database.pool, order_id)

    monkeypatch.setenv(EMAIL_FIX, "deployed")
    with database.pool.connection() as conn:
        forked = fork(conn, order_id, at_event=3)
    # No second approval: the fork replays the copied wait, and its event.
    done = run_until_finished(database, forked.id)
    assert done.status == TaskStatus.COMPLETED, done
    with database.pool.connection() as conn:
        queries = Querier(conn)
        charges, emails = queries.list_charges(), queries.list_emails()
        waits = {wait.task_id: wait for wait in queries.list_event_waits()}
    assert len(charges) == 1
    assert [email.subject for email in emails] == [
        "Order A-1: your payment failed",
        f"Order A-1: paid, charge {charges[0].id}",
    ]
    assert waits[forked.id].external_event_id == waits[order_id].external_event_id

    with database.pool.connection() as conn:
        replay(conn, order_id)
    with workers(database):
        # The replay waits for an approval again: the first one was spent.
        push_once_waiting(database, order_id, "approval:A-1", {"approved": True})
        assert wait_for_task(database.pool, order_id).status == TaskStatus.COMPLETED
    with database.pool.connection() as conn:
        charges, emails = Querier(conn).list_charges(), Querier(conn).list_emails()
    assert len(charges) == 2 and len(emails) == 3


def test_a_fork_replays_the_copied_sleep_and_wait_and_does_not_wait_again(
    database: LessonDatabase,
) -> None:
    """The copied sleep is long over, and the copied wait ended with its event:
    the fork runs straight to its new child, with no push and no new sleep."""
    input = {"sleep": 0.2, "key": "go:1", "timeout": 30}
    original_id = enqueue_durable(database, "sleep_wait_then_call", input)
    with workers(database):
        push_once_waiting(database, original_id, "go:1", {"go": True})
        original = wait_for_task(database.pool, original_id)
    assert original.status == TaskStatus.COMPLETED, original

    with database.pool.connection() as conn:
        forked = fork(conn, original_id, at_event=3)
    started = time.monotonic()
    done = run_until_finished(database, forked.id)
    assert time.monotonic() - started < 3  # no new sleep, no new wait, no poll
    assert done.status == TaskStatus.COMPLETED and done.attempt == 1, done
    assert (done.output or {})["payload"] == {"go": True}
    events, copied = history(database.pool, forked.id), history(database.pool, original_id)
    assert [(e.kind, e.wake_at) for e in events[:2]] == [(e.kind, e.wake_at) for e in copied[:2]]
    assert events[2].child_task_id != copied[2].child_task_id


def test_forks_and_replays_wake_the_workers_without_waiting_for_a_poll(
    database: LessonDatabase,
) -> None:
    """The workers poll every 5 s; the fork's insert and the replay's return to
    the queue notify them (lesson 08's triggers), so both run at once."""
    original_id = finished_task(database, "notified")
    with workers(database):
        with database.pool.connection() as conn:
            forked = fork(conn, original_id, at_event=2)
            started = time.monotonic()
        wait_for_task(database.pool, forked.id, timeout=3)
        with database.pool.connection() as conn:
            replay(conn, original_id)
        wait_for_task(database.pool, original_id, timeout=3)
    assert time.monotonic() - started < 3


def test_a_fork_and_a_replay_of_the_same_task_at_once_take_turns(
    database: LessonDatabase,
) -> None:
    """Both lock the task's row first. Either the fork goes first and copies the
    whole history before event 4, or the replay does and the fork is refused
    (the task is queued): never a fork with part of a history."""
    task_id = finished_task(database, "race")
    start = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def fork_it() -> str:
        with database.pool.connection() as conn:
            forked = fork(conn, task_id, at_event=4)
        return f"copied {[e.event_number for e in history(database.pool, forked.id)]}"

    def replay_it() -> str:
        with database.pool.connection() as conn:
            return f"cleared {len(replay(conn, task_id).cleared)}"

    def run(name: str, operation: Callable[[], str]) -> None:
        start.wait()
        try:
            outcomes[name] = operation()
        except RerunRefused as refusal:
            outcomes[name] = str(refusal)

    threads = [
        threading.Thread(target=run, args=("fork", fork_it)),
        threading.Thread(target=run, args=("replay", replay_it)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes["replay"] == "cleared 4"
    assert outcomes["fork"] in (
        "copied [1, 2, 3]",
        f"task {task_id} (step_then_three_children) is queued: only a completed or failed "
        "task can be forked; wait until it has finished",
    )


def test_what_cannot_be_replayed_or_forked_is_refused_and_changes_nothing(
    database: LessonDatabase,
) -> None:
    finished_id = finished_task(database, "refused")
    queued_id = enqueue_durable(database, "record_nothing", None, queue="none")
    child_id = history(database.pool, finished_id)[1].child_task_id
    suspended_id = enqueue_durable(database, "wait_for_ever", None)
    with workers(database):
        wait_until(lambda: get_task(database.pool, suspended_id).status == TaskStatus.SUSPENDED)
    # Completed, with a child it never waited for, on a queue nobody serves.
    left_behind_id = enqueue_durable(database, "spawn_and_return", None)
    left_behind = run_until_finished(database, left_behind_id)
    assert child_id is not None and left_behind.status == TaskStatus.COMPLETED
    tasks_before = all_tasks(database.pool)
    events_before = {task.id: history(database.pool, task.id) for task in tasks_before}

    refusals: dict[str, Callable[[psycopg.Connection[Any]], object]] = {
        "there is no task 999": lambda conn: replay(conn, 999),
        f"task {queued_id} (record_nothing) is queued: only a completed or failed "
        "task can be forked; wait until it has finished": lambda conn: fork(
            conn, queued_id, at_event=1
        ),
        f"task {suspended_id} (wait_for_ever) is suspended: only a completed or failed "
        "task can be replayed; wait until it has finished": lambda conn: replay(conn, suspended_id),
        f"task {child_id} (echo) is not durable: it has no history to be replayed": lambda conn: (
            replay(conn, child_id)
        ),
        f"task {finished_id} has events 1 to 4: there is no event 5 to fork at": lambda conn: fork(
            conn, finished_id, at_event=5
        ),
        f"child task {left_behind.output} of event 2 is queued: task {left_behind_id} cannot "
        "be forked until its children have finished (they cannot be cancelled yet)": lambda conn: (
            fork(conn, left_behind_id, at_event=3)
        ),
    }
    for message, operation in refusals.items():
        with database.pool.connection() as conn, pytest.raises(RerunRefused) as refused:
            operation(conn)
        assert str(refused.value) == message
    tasks_after = all_tasks(database.pool)
    assert tasks_after == tasks_before
    assert {task.id: history(database.pool, task.id) for task in tasks_after} == events_before
