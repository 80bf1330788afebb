"""Lesson 07, with workers in this process: a child is spawned once and reused on
replay; spawning and recording are one fenced transaction; a failed child raises
in its parent; changing the children a function calls between attempts is caught;
a step that changes its input in place replays as it was called.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from lessons.lesson07_durable_tasks.db.models import EventKind, Task, TaskEvent, TaskStatus
from lessons.lesson07_durable_tasks.db.queries import Querier
from lessons.lesson07_durable_tasks.demo.tasks import ORDER_STEPS_QUEUE, ORDERS_QUEUE
from lessons.lesson07_durable_tasks.engine import durable
from lessons.lesson07_durable_tasks.engine.client import enqueue, wait_for_task
from lessons.lesson07_durable_tasks.engine.durable import DurableContext, LostOwnership
from lessons.lesson07_durable_tasks.engine.statement_retries import StatementRetries
from lessons.lesson07_durable_tasks.engine.transactions import (
    TransactionLimits,
    bounded_transaction,
)
from lessons.lesson07_durable_tasks.engine.worker import Worker
from tests.conftest import LessonDatabase
from tests.lesson07.functions import (
    CHILDREN_QUEUE,
    DURABLE_FUNCTIONS,
    FUNCTIONS,
    STEP_RUNS,
    UNSERVED_QUEUE,
)

LESSON = "lesson07_durable_tasks"
PARENTS_QUEUE = "parents"
POLL_INTERVAL = 0.02


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON, max_size=16)


@contextmanager
def workers(database: LessonDatabase, *queues: str) -> Iterator[None]:
    """A worker in this process for each queue, two slots each."""
    with ExitStack() as stack:
        for queue in queues:
            stack.enter_context(
                Worker(
                    database.pool,
                    FUNCTIONS,
                    durable_functions=DURABLE_FUNCTIONS,
                    queue=queue,
                    slots=2,
                    poll_interval=POLL_INTERVAL,
                    heartbeat_interval=0.1,
                    inactivity_threshold=1.0,
                )
            )
        yield


def run(database: LessonDatabase, task_name: str, input: Any, *, max_retries: int = 3) -> Task:
    """Enqueue a durable task on the parents' queue and run it to the end."""
    with database.pool.connection() as conn:
        task_id = enqueue(
            conn, task_name, input, queue=PARENTS_QUEUE, durable=True, max_retries=max_retries
        )
    with workers(database, PARENTS_QUEUE, CHILDREN_QUEUE):
        return wait_for_task(database.pool, task_id)


def history(pool: ConnectionPool, task_id: int) -> list[TaskEvent]:
    with pool.connection() as conn:
        return Querier(conn).list_task_events(task_id=task_id)


def all_tasks(pool: ConnectionPool) -> list[Task]:
    with pool.connection() as conn:
        return Querier(conn).list_tasks()


def error_of(task: Task) -> tuple[str, str]:
    error = (task.output or {}).get("error") or {}
    return error.get("type", ""), error.get("message", "")


def test_an_order_completes_charged_once_and_emailed_once(database: LessonDatabase) -> None:
    pool = database.pool
    with pool.connection() as conn:
        order_id = enqueue(
            conn,
            "process_order",
            {"order_id": "A-1", "card": "4242", "amount_cents": 4200, "email": "ada@example.com"},
            queue=ORDERS_QUEUE,
            durable=True,
        )
    with workers(database, ORDERS_QUEUE, ORDER_STEPS_QUEUE):
        order = wait_for_task(pool, order_id)
    with pool.connection() as conn:
        [charge] = Querier(conn).list_charges()
        [email] = Querier(conn).list_emails()
    events = history(pool, order_id)
    assert order.status == TaskStatus.COMPLETED
    assert order.output == {
        "order_id": "A-1",
        "status": "confirmed",
        "charge_id": charge.id,
        "email_id": email.id,
    }
    assert [(e.kind, e.name, e.child_task_id) for e in events] == [
        (EventKind.CHILD, "charge_payment", charge.task_id),
        (EventKind.CHILD, "send_confirmation_email", email.task_id),
    ]
    assert (charge.order_id, charge.amount_cents) == ("A-1", 4200)
    assert (email.order_id, email.recipient) == ("A-1", "ada@example.com")


def test_a_retried_parent_reuses_its_recorded_child_and_spawns_no_other(
    database: LessonDatabase,
) -> None:
    task = run(database, "call_then_fail_on_attempt_1", None)
    assert task.status == TaskStatus.COMPLETED and task.attempt == 2, task
    assert task.output == {"n": 1}
    children = [t for t in all_tasks(database.pool) if t.task_name == "echo"]
    assert len(children) == 1 and children[0].attempt == 1
    [event] = history(database.pool, task.id)
    assert (event.child_task_id, event.attempt) == (children[0].id, 1)


def test_a_child_that_fails_for_good_fails_its_parent_at_once_with_a_clear_error(
    database: LessonDatabase,
) -> None:
    task = run(database, "call_a_declining_child", None, max_retries=3)
    [child] = [t for t in all_tasks(database.pool) if t.task_name == "decline"]
    assert child.status == TaskStatus.FAILED
    assert task.status == TaskStatus.FAILED and task.attempt == 1, task
    assert error_of(task) == (
        "ChildTaskFailed",
        f"child task {child.id} (decline) failed: Declined: no",
    )


def test_a_child_that_process_order_catches_ends_the_order_without_charge_or_email(
    database: LessonDatabase,
) -> None:
    pool = database.pool
    with pool.connection() as conn:
        order_id = enqueue(
            conn,
            "process_order",
            {"order_id": "A-2", "card": "4000-0000-0000-0002", "amount_cents": 1, "email": "x@y"},
            queue=ORDERS_QUEUE,
            durable=True,
        )
    with workers(database, ORDERS_QUEUE, ORDER_STEPS_QUEUE):
        order = wait_for_task(pool, order_id)
    assert order.status == TaskStatus.COMPLETED
    output = order.output or {}
    assert output["status"] == "payment failed"
    assert "CardDeclined: card 4000-0000-0000-0002 was declined" in output["reason"]
    with pool.connection() as conn:
        assert Querier(conn).list_charges() == [] and Querier(conn).list_emails() == []
    assert [t.task_name for t in all_tasks(pool)] == ["process_order", "charge_payment"]


def test_a_child_gets_its_own_retries(database: LessonDatabase) -> None:
    task = run(database, "call_a_flaky_child", None)
    assert task.status == TaskStatus.COMPLETED and task.attempt == 1, task
    assert task.output == {"attempt": 3}


def test_a_child_input_the_database_cannot_hold_fails_the_parent_and_creates_nothing(
    database: LessonDatabase,
) -> None:
    task = run(database, "spawn_a_child_with_a_nul", None, max_retries=3)
    assert task.status == TaskStatus.FAILED and task.attempt == 1, task
    kind, message = error_of(task)
    assert kind == "InvalidStepData"
    assert message.startswith("the input of child task echo cannot be stored: "), message
    assert [t.id for t in all_tasks(database.pool)] == [task.id]
    assert history(database.pool, task.id) == []


def test_spawning_is_fenced_and_a_refused_spawn_creates_no_child(
    database: LessonDatabase,
) -> None:
    """The child's row and its event are one transaction: when the append is
    refused (this worker does not own the attempt), the child is rolled back too."""
    pool = database.pool
    with pool.connection() as conn:
        queries = Querier(conn)
        worker = queries.register_worker(
            name="test", queue=PARENTS_QUEUE, slots=1, lease_seconds=10
        )
        assert worker is not None
        parent_id = enqueue(conn, "scripted_children", {}, queue=PARENTS_QUEUE, durable=True)
        [parent] = queries.claim_tasks(
            worker_id=worker.id,
            queue=PARENTS_QUEUE,
            task_names=[],
            durable_task_names=["scripted_children"],
            max_tasks=1,
        )

    def context(worker_id: int) -> DurableContext:
        return DurableContext.load(
            pool,
            worker_id=worker_id,
            task=parent,
            cancelled=threading.Event(),
            poll_interval=POLL_INTERVAL,
            limits=TransactionLimits.for_worker(1.0),
            retries=StatementRetries.for_worker(1.0),
        )

    with pytest.raises(LostOwnership, match="no longer owns that attempt"):
        context(worker.id + 1).spawn_child("echo", {"n": 1}, queue=UNSERVED_QUEUE)
    assert [t.id for t in all_tasks(pool)] == [parent_id]
    assert history(pool, parent_id) == []

    child = context(worker.id).spawn_child("echo", {"n": 1}, queue=UNSERVED_QUEUE)
    assert [t.id for t in all_tasks(pool)] == [parent_id, child.id]
    assert [e.child_task_id for e in history(pool, parent_id)] == [child.id]


CHARGE = ["charge_payment", {"order_id": "A-1", "amount_cents": 4200}]
EMAIL = ["send_confirmation_email", {"order_id": "A-1"}]
RECORDED_CHARGE = 'child charge_payment({"amount_cents":4200,"order_id":"A-1"})'


@pytest.mark.parametrize(
    ("what_changed", "new_calls", "message"),
    [
        (
            "the child's name",
            [["charge_card", CHARGE[1]], EMAIL],
            f"event 1 does not match the history: recorded {RECORDED_CHARGE}, "
            'new call child charge_card({"amount_cents":4200,"order_id":"A-1"})',
        ),
        (
            "the child's input",
            [["charge_payment", {"order_id": "A-1", "amount_cents": 4300}], EMAIL],
            f"event 1 does not match the history: recorded {RECORDED_CHARGE}, "
            'new call child charge_payment({"amount_cents":4300,"order_id":"A-1"})',
        ),
        (
            "the order of the calls",
            [EMAIL, CHARGE],
            f"event 1 does not match the history: recorded {RECORDED_CHARGE}, "
            'new call child send_confirmation_email({"order_id":"A-1"})',
        ),
    ],
)
def test_changing_the_children_between_attempts_is_caught(
    database: LessonDatabase, what_changed: str, new_calls: list[list[Any]], message: str
) -> None:
    """Attempt 1 spawns the charge and the email, then fails; attempt 2 spawns
    something else first. No child of attempt 2 is created."""
    task = run(database, "scripted_children", {"calls": {"1": [CHARGE, EMAIL], "2": new_calls}})
    assert task.status == TaskStatus.FAILED and task.attempt == 2, what_changed
    assert error_of(task) == ("NonDeterminismError", message)
    children = [t.task_name for t in all_tasks(database.pool) if t.id != task.id]
    assert children == ["charge_payment", "send_confirmation_email"]


def test_the_same_children_replay_without_creating_any(database: LessonDatabase) -> None:
    """Equal inputs built in another order: the same keys, the recorded children."""
    new_calls = [
        ["charge_payment", {"amount_cents": 4200, "order_id": "A-1"}],
        ["send_confirmation_email", {"order_id": "A-1"}],
    ]
    task = run(database, "scripted_children", {"calls": {"1": [CHARGE, EMAIL], "2": new_calls}})
    assert task.status == TaskStatus.COMPLETED and task.attempt == 2, task
    children = [t.id for t in all_tasks(database.pool) if t.id != task.id]
    assert task.output == children and len(children) == 2


def test_a_spawn_whose_commit_reply_is_lost_finds_its_child_through_the_event(
    database: LessonDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection dies just after spawn_child's transaction commits, before its
    reply arrives (played here: the transaction commits, then the error a dead
    connection raises). The commit is ambiguous; the retry reads the history, finds
    the event with this call's key, and returns the child it names: one child, the
    task completes on attempt 1, `max_retries=0`."""
    lost_replies: list[str] = []

    @contextmanager
    def commit_then_lose_the_reply(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with bounded_transaction(*args, **kwargs) as transaction:
            yield transaction
        if not lost_replies:
            lost_replies.append("lost")
            raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(durable, "bounded_transaction", commit_then_lose_the_reply)
    task = run(database, "call_echo", None, max_retries=0)
    assert lost_replies == ["lost"]
    assert (task.status, task.attempt, task.output) == (TaskStatus.COMPLETED, 1, {"n": 1}), task
    children = [row for row in all_tasks(database.pool) if row.id != task.id]
    assert len(children) == 1, children
    assert [event.child_task_id for event in history(database.pool, task.id)] == [children[0].id]


def test_a_step_that_changes_its_input_in_place_replays_without_a_mismatch(
    database: LessonDatabase,
) -> None:
    """The step adds to a list of its input and deletes one of its keys: its event
    holds the input (and the key) of the call as it was made, not what the step left
    of it, so attempt 2, which makes the same call, replays the step."""
    STEP_RUNS["pack_in_place"] = 0
    task = run(database, "pack_then_fail_on_attempt_1", None)
    assert task.status == TaskStatus.COMPLETED and task.attempt == 2, task
    assert task.output == 3
    assert STEP_RUNS["pack_in_place"] == 1
    [event] = history(database.pool, task.id)
    assert event.input == {"items": ["teapot", "cup"], "note": "fragile"}
