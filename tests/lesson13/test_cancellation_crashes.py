"""Lesson 13's cancellation through frozen and killed workers.

The moment is made exact by the engine's crash points (engine/crash_points.py),
armed by the order itself at the one spawn they are meant for
(tests/lesson13/functions_cancel.py): the worker freezes (SIGSTOP) inside the
transaction in which the order's call spawns its email and suspends, the child
written but not committed, when the order is cancelled; or it dies (SIGKILL) in
the middle of the compensation. Either way the order is refunded once and emails nobody.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from psycopg_pool import ConnectionPool

from lessons.lesson13_cancellation_and_schedules.db.models import TaskStatus
from lessons.lesson13_cancellation_and_schedules.engine.client import wait_for_task
from lessons.lesson13_cancellation_and_schedules.engine.crash_points import CRASH_AT
from tests.conftest import LessonDatabase
from tests.lesson13.functions_cancel import ARM_CRASH_AT, ARM_FREEZE_AT
from tests.lesson13.test_cancellation import (
    assert_compensated_once,
    calls,
    cancel_task,
    children_of,
    get_task,
    history_of,
    order_input,
    shop_database,
    shop_effects,
    submit,
    wait_for_log,
    wait_held,
    worker_process,
)
from tests.takeovers import is_frozen
from tests.waiting import wait_until


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return shop_database(lesson_database)


# The order's history once compensated, when it met its cancellation at the
# email's spawn (event 3): no hold step.
COMPENSATED_AT_THE_EMAIL = [
    ("step", "reserve_stock"),
    ("child", "charge_payment"),
    ("cancellation", "support desk"),
    ("child", "refund_payment"),
    ("step", "release_stock"),
]


def freeze_at_the_emails_spawn() -> dict[str, str]:
    """The worker freezes inside the email's call transaction (not the charge's): its
    child, event and suspension written, not committed."""
    return {ARM_FREEZE_AT: "call:before_commit"}


def lease_left(pool: ConnectionPool, worker_id: int) -> float:
    """Seconds until the worker's lease expires, on the database's clock."""
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM lease_expires_at - now())::float FROM workers WHERE id = %s",
            (worker_id,),
        ).fetchone()
    assert row is not None
    seconds: float = row[0]
    return seconds


def cancel_while_frozen(pool: ConnectionPool, order_id: int) -> float:
    """Cancel the order while its worker is frozen with its row locked; return how
    long cancel waited (until the server ended the frozen transaction)."""
    started = time.monotonic()
    status = cancel_task(pool, order_id, "support desk", "the customer changed their mind")
    waited = time.monotonic() - started
    assert status == TaskStatus.RUNNING, "a durable task that has run unwinds itself"
    return waited


@pytest.mark.parametrize(
    "max_retries",
    [
        pytest.param(3, id="retries-left"),
        pytest.param(0, id="no-retries-left"),
    ],
)
def test_a_worker_frozen_at_the_cancellation_and_resumed_in_its_lease_starts_no_email(
    database: LessonDatabase, tmp_path: Path, max_retries: int
) -> None:
    """The worker (lease 4 s) freezes inside the email's call, the email child
    written (and the suspension), not committed. The cancellation waits for the
    frozen transaction's lock until the server ends it (idle, half the lease), and
    commits; the email child is gone with it. Resumed before its lease expires, the
    worker starts nothing new: its call cannot commit, and a call tried again is
    refused (the task is cancelled). The order meets Cancelled at the email's event
    and compensates once, whatever retries it has left (a compensation is not a
    retry): no email, no email child."""
    pool = database.pool
    threshold = 4.0
    frozen = worker_process(
        database, inactivity_threshold=threshold, environment=freeze_at_the_emails_spawn()
    )
    with frozen:
        frozen.start()
        order_id = submit(
            pool,
            "order",
            order_input("F-1", tmp_path / "gate", hold=False),
            durable=True,
            max_retries=max_retries,
        )
        wait_until(lambda: is_frozen(frozen.pid), message=frozen.log)
        assert [c.task_name for c in children_of(pool, order_id)] == ["charge_payment"]
        assert len(shop_effects(pool, "F-1")["charges"]) == 1

        waited = cancel_while_frozen(pool, order_id)
        print(f"cancel waited {waited:.2f} s for the frozen transaction (idle limit 2 s)")
        assert lease_left(pool, frozen.id) > 0.5, "resumed within its lease"
        assert [c.task_name for c in children_of(pool, order_id)] == ["charge_payment"]
        frozen.resume()
        task = wait_for_task(pool, order_id, timeout=30)
        assert frozen.stop() == 0, frozen.log()
        log = frozen.log()

    assert threshold / 2 - 0.5 < waited < threshold, "cancel waited for the frozen lock"
    assert (task.status, task.cancelled_by) == (TaskStatus.CANCELLED, "support desk"), (
        task.output,
        log,
    )
    assert calls(history_of(pool, order_id)) == COMPENSATED_AT_THE_EMAIL, log
    assert_compensated_once(pool, "F-1", order_id)


def test_a_worker_frozen_past_its_lease_is_fenced_out_and_the_next_worker_compensates_once(
    database: LessonDatabase, tmp_path: Path
) -> None:
    """The worker (lease 2 s) freezes inside the email's call; the order is
    cancelled (after the server ends the frozen transaction) and the worker stays
    frozen past its lease. A healthy worker takes the order over: attempt 2 meets
    Cancelled at the email's event, refunds, releases, and the order ends
    cancelled. Resumed then, the frozen worker is fenced out: its spawn is refused
    (the attempt is not its own), it records nothing, and there is still one refund,
    no email, no email child."""
    pool = database.pool
    frozen = worker_process(
        database, inactivity_threshold=2.0, environment=freeze_at_the_emails_spawn()
    )
    healthy = worker_process(database)
    with frozen, healthy:
        frozen.start()
        order_id = submit(
            pool, "order", order_input("F-2", tmp_path / "gate", hold=False), durable=True
        )
        wait_until(lambda: is_frozen(frozen.pid), message=frozen.log)
        cancel_while_frozen(pool, order_id)
        healthy.start()
        task = wait_for_task(pool, order_id, timeout=30)
        compensated = (shop_effects(pool, "F-2"), children_of(pool, order_id))

        frozen.resume()
        # Its spawn refused, or its result: either way, not its attempt any more.
        wait_for_log(frozen, "no longer owns that attempt")
        assert frozen.stop() == 0, frozen.log()
        assert healthy.stop() == 0, healthy.log()

    assert task.status == TaskStatus.CANCELLED, task.output
    assert task.attempt == 2, "the healthy worker's attempt compensated"
    history = history_of(pool, order_id)
    assert calls(history) == COMPENSATED_AT_THE_EMAIL
    assert [event.attempt for event in history] == [1, 1, 2, 2, 2]
    assert (shop_effects(pool, "F-2"), children_of(pool, order_id)) == compensated
    assert get_task(pool, order_id) == task, "the frozen worker changed nothing"
    assert_compensated_once(pool, "F-2", order_id)


@pytest.mark.parametrize(
    ("environment", "killed_attempt_recorded", "last_attempt"),
    [
        # Killed with the cancellation event written, not committed.
        ({CRASH_AT: "cancellation:before_commit"}, [], 2),
        # Killed inside the refund's call: its child, event and suspension not committed.
        ({ARM_CRASH_AT: "call:before_commit"}, [("cancellation", "support desk")], 2),
        # Killed once the refund child, its event and the suspension are committed: the
        # order is on no worker, and goes on with its attempt when the refund wakes it.
        (
            {ARM_CRASH_AT: "call:suspended"},
            [("cancellation", "support desk"), ("child", "refund_payment")],
            1,
        ),
    ],
    ids=["cancellation-before-commit", "inside-the-refund-call", "after-the-refund-call"],
)
def test_a_worker_killed_during_the_compensation_leaves_the_next_attempt_to_finish_it_once(
    database: LessonDatabase,
    tmp_path: Path,
    environment: dict[str, str],
    killed_attempt_recorded: list[tuple[str, str]],
    last_attempt: int,
) -> None:
    """The order, held between its charge and its email, is cancelled, and its
    worker is SIGKILLed in the middle of the compensation: before the cancellation
    event commits, inside the refund's call, or just after it committed. Another
    worker takes the order over (attempt 2), or resumes it suspended (attempt 1);
    that attempt replays what attempt 1 recorded (the cancellation, the refund
    child) and records the rest. One refund child, one refund, no email."""
    pool = database.pool
    gate = tmp_path / "gate"
    killed = worker_process(database, environment=environment)
    taking_over = worker_process(database)
    with killed, taking_over:
        killed.start()
        order_id = submit(pool, "order", order_input("K-1", gate), durable=True)
        wait_held(gate, order_id)
        cancel_task(pool, order_id, "support desk", "the customer changed their mind")
        assert killed.wait() == -9, killed.log()
        recorded_by_the_killed = [
            (str(event.kind), event.name) for event in history_of(pool, order_id)[3:]
        ]
        taking_over.start()
        task = wait_for_task(pool, order_id, timeout=30)
        assert taking_over.stop() == 0, taking_over.log()
        log = taking_over.log()

    assert recorded_by_the_killed == killed_attempt_recorded
    assert task.status == TaskStatus.CANCELLED, (task.output, log)
    assert task.attempt == last_attempt
    history = history_of(pool, order_id)
    assert calls(history) == [
        ("step", "reserve_stock"),
        ("child", "charge_payment"),
        ("step", "hold"),
        ("cancellation", "support desk"),
        ("child", "refund_payment"),
        ("step", "release_stock"),
    ]
    killed_events = 3 + len(killed_attempt_recorded)
    assert [event.attempt for event in history] == (
        [1] * killed_events + [last_attempt] * (6 - killed_events)
    )
    assert_compensated_once(pool, "K-1", order_id)
