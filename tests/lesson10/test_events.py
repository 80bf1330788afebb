"""Lesson 10, durable events: an event ends the waits for its key that are open
when it is pushed (recorded before it, not past their deadline, not ended yet);
the first one wins, is recorded, and every replay sees it; a wait whose deadline
passes ends with a recorded timeout; and a worker dying around a wait changes
none of that.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from lessons.common.database import connect
from lessons.lesson10_durable_events.db.models import EventKind, EventWait, Task, TaskStatus
from lessons.lesson10_durable_events.db.queries import Querier
from lessons.lesson10_durable_events.demo.tasks import ORDERS_QUEUE
from lessons.lesson10_durable_events.engine.client import (
    PushedEvent,
    enqueue,
    push_event,
    wait_for_task,
)
from lessons.lesson10_durable_events.engine.crash_points import CRASH_AT
from lessons.lesson10_durable_events.engine.durable import (
    DurableContext,
    LostOwnership,
    TaskSuspended,
)
from lessons.lesson10_durable_events.engine.statement_retries import StatementRetries
from lessons.lesson10_durable_events.engine.transactions import TransactionLimits
from lessons.lesson10_durable_events.engine.worker import Worker
from lessons.lesson10_durable_events.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.lesson10.functions import DURABLE_FUNCTIONS, FUNCTIONS
from tests.waiting import wait_until

LESSON = "lesson10_durable_events"
QUEUE = "waits"
# The limits of a worker whose inactivity threshold is 10 s, for contexts made by hand.
LIMITS = TransactionLimits.for_worker(10)
RETRIES = StatementRetries.for_worker(10)
# Lesson 08's fallback: waits must end by notifications and timers, not polls.
POLL_INTERVAL = 5.0
HEARTBEAT_INTERVAL = 0.1
INACTIVITY_THRESHOLD = 0.6
# How late a timeout may be noticed, on a slow machine, before the test calls it a bug.
LATENESS_MARGIN = timedelta(seconds=1.5)


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON, max_size=16)


@contextmanager
def worker(database: LessonDatabase, queue: str = QUEUE) -> Iterator[Worker]:
    with Worker(
        database.pool,
        FUNCTIONS,
        durable_functions=DURABLE_FUNCTIONS,
        queue=queue,
        slots=2,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
    ) as running:
        yield running


def worker_process(database: LessonDatabase, *, crash_at: str | None = None) -> WorkerProcess:
    return WorkerProcess(
        schema=database.schema,
        queues=[ORDERS_QUEUE],
        functions="tests.lesson10.functions",
        slots=2,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
        verbose=True,
        environment={CRASH_AT: crash_at} if crash_at else None,
    )


def enqueue_wait(
    pool: ConnectionPool, key: str, timeout: float, task_name: str = "wait_for_key"
) -> int:
    with pool.connection() as conn:
        return enqueue(conn, task_name, {"key": key, "timeout": timeout}, queue=QUEUE, durable=True)


def push(pool: ConnectionPool, key: str, payload: Any) -> PushedEvent:
    with pool.connection() as conn:
        return push_event(conn, key, payload)


def get_task(pool: ConnectionPool, task_id: int) -> Task:
    with pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    assert task is not None
    return task


def is_waiting(pool: ConnectionPool, task_id: int) -> bool:
    """Suspended, with its wait recorded and open."""
    return get_task(pool, task_id).status == TaskStatus.SUSPENDED and any(
        wait.ended_at is None for wait in waits_of(pool, task_id)
    )


def waits_of(pool: ConnectionPool, task_id: int) -> list[EventWait]:
    with pool.connection() as conn:
        return [w for w in Querier(conn).list_event_waits() if w.task_id == task_id]


def test_of_two_events_pushed_at_the_same_moment_exactly_one_wins_and_the_replay_sees_it(
    database: LessonDatabase,
) -> None:
    """Two threads push an event for the same key at once, five times over (five
    tasks, five keys). Each wait is ended by exactly one of its two events. Attempt 1
    of each task fails after its wait ended; attempt 2 replays the wait, and
    gets the very same payload."""
    pool = database.pool
    keys = [f"race:{n}" for n in range(5)]
    task_ids = [enqueue_wait(pool, key, 30, "wait_then_fail_on_attempt_1") for key in keys]
    with worker(database):
        wait_until(lambda: all(is_waiting(pool, task_id) for task_id in task_ids))
        pushed = {key: push_at_the_same_moment(database, key) for key in keys}
        tasks = [wait_for_task(pool, task_id, timeout=10) for task_id in task_ids]

    for key, task in zip(keys, tasks, strict=True):
        first, second = pushed[key]
        winners = [event for event in (first, second) if event.woke_task_ids]
        assert len(winners) == 1, f"{key}: {first}, {second}"
        [winner] = winners
        [wait] = waits_of(pool, task.id)
        assert wait.external_event_id == winner.id
        assert task.status == TaskStatus.COMPLETED and task.attempt == 2
        assert task.output == {"payload": {"from": "first" if winner is first else "second"}}


def push_at_the_same_moment(database: LessonDatabase, key: str) -> tuple[PushedEvent, PushedEvent]:
    """Push two events for `key` from two connections, released together."""
    barrier = threading.Barrier(2)
    results: dict[str, PushedEvent] = {}

    def push_from(name: str) -> None:
        with connect(database.url, schema=database.schema) as conn:
            barrier.wait()
            results[name] = push_event(conn, key, {"from": name})

    threads = [threading.Thread(target=push_from, args=(name,)) for name in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    return results["first"], results["second"]


def test_a_second_push_that_waits_for_the_first_finds_the_wait_ended(
    database: LessonDatabase,
) -> None:
    """The moment itself, made certain: the first push's transaction stays open
    while the second push runs. The second waits on the wait's row lock; when the
    first commits, it finds the wait ended, and ends nothing."""
    pool = database.pool
    task_id = enqueue_wait(pool, "k", 30)
    with worker(database):
        wait_until(lambda: is_waiting(pool, task_id))
        with connect(database.url, schema=database.schema) as first:
            first.execute("BEGIN")
            first_event = push_event(first, "k", "first")
            second_result: list[PushedEvent] = []
            with connect(database.url, schema=database.schema) as second:
                pid = second.info.backend_pid
                pusher = threading.Thread(
                    target=lambda: second_result.append(push_event(second, "k", "second"))
                )
                pusher.start()
                wait_until(lambda: waiting_for_a_lock(pool, pid), message="no push is blocked")
                first.execute("COMMIT")
                pusher.join(timeout=10)
        task = wait_for_task(pool, task_id, timeout=10)

    assert first_event.woke_task_ids == [task_id]
    assert second_result[0].woke_task_ids == []
    assert task.output == {"payload": "first"}


def waiting_for_a_lock(pool: ConnectionPool, backend_pid: int) -> bool:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (backend_pid,)
        ).fetchone()
    return row is not None and row[0] == "Lock"


def test_a_push_while_the_task_looks_at_its_open_wait_waits_for_it_then_wakes_it(
    database: LessonDatabase,
) -> None:
    """The lost wake-up of lesson 09, for events, one step at a time. A task that
    runs again (woken for some other reason) looks at its wait, locking its row:
    still open. A push for its key must wait for that lock. The task suspends and
    commits; only then does the push end the wait, find the task suspended, and
    wake it. Had the push not waited, it would have ended the wait of a running
    task, woken nobody, and the task would sleep until its deadline."""
    pool = database.pool
    with pool.connection() as conn:
        queries = Querier(conn)
        registered = queries.register_worker(name="test", queue=QUEUE, slots=1, lease_seconds=10)
        assert registered is not None
        task_id = enqueue(conn, "wait_for_key", {}, queue=QUEUE, durable=True)
        [task] = queries.claim_tasks(
            worker_id=registered.id,
            queue=QUEUE,
            task_names=[],
            durable_task_names=["wait_for_key"],
            max_tasks=1,
        )
        with pytest.raises(TaskSuspended):
            context = DurableContext.load(
                pool, worker_id=registered.id, task=task, limits=LIMITS, retries=RETRIES
            )
            context.wait_for_event("k", timeout=60)
        queries.wake_tasks(ids=[task_id])  # woken for another reason: runs again
        [task] = queries.claim_tasks(
            worker_id=registered.id,
            queue=QUEUE,
            task_names=[],
            durable_task_names=["wait_for_key"],
            max_tasks=1,
        )

    with connect(database.url, schema=database.schema) as task_conn:
        task_conn.execute("BEGIN")
        wait = Querier(task_conn).get_wait_for_share(task_id=task_id, event_number=1)
        assert wait is not None and wait.ended_at is None
        pushed: list[PushedEvent] = []
        with connect(database.url, schema=database.schema) as push_conn:
            pusher = threading.Thread(target=lambda: pushed.append(push_event(push_conn, "k", 1)))
            pusher.start()
            wait_until(
                lambda: waiting_for_a_lock(pool, push_conn.info.backend_pid),
                message="the push did not wait for the task looking at its wait",
            )
            suspended = Querier(task_conn).suspend_task(
                id=task_id, attempt=task.attempt, worker_id=registered.id, wake_at=wait.timeout_at
            )
            assert suspended is not None
            task_conn.execute("COMMIT")
            pusher.join(timeout=10)

    assert pushed[0].woke_task_ids == [task_id]
    woken = get_task(pool, task_id)
    assert woken.status == TaskStatus.SUSPENDED
    assert woken.wake_at is not None and woken.wake_at < wait.timeout_at


def test_an_event_pushed_before_the_wait_was_recorded_does_not_end_it(
    database: LessonDatabase,
) -> None:
    """Only events pushed while the wait is open count: the early one is kept in
    external_events, but woke nobody, and the task gets the one pushed after."""
    pool = database.pool
    early = push(pool, "k", "early")
    task_id = enqueue_wait(pool, "k", 30)
    with worker(database):
        wait_until(lambda: is_waiting(pool, task_id))
        late = push(pool, "k", "late")
        task = wait_for_task(pool, task_id, timeout=10)
    assert early.woke_task_ids == [] and late.woke_task_ids == [task_id]
    assert task.output == {"payload": "late"}


def test_an_event_pushed_after_the_deadline_does_not_end_the_wait(
    database: LessonDatabase,
) -> None:
    """No worker runs while the deadline passes, so the timeout is not recorded
    yet; an event pushed then is still too late: the wait times out."""
    pool = database.pool
    task_id = enqueue_wait(pool, "k", 0.5)
    with worker(database):
        wait_until(lambda: is_waiting(pool, task_id))
    [wait] = waits_of(pool, task_id)
    wait_until(lambda: database_now(pool) > wait.timeout_at)
    too_late = push(pool, "k", "too late")
    with worker(database):
        task = wait_for_task(pool, task_id, timeout=10)
    assert too_late.woke_task_ids == []
    assert task.output == {"timed_out": True}


def database_now(pool: ConnectionPool) -> Any:
    with pool.connection() as conn:
        row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]


def test_a_timeout_fires_on_time_and_is_recorded(database: LessonDatabase) -> None:
    pool = database.pool
    task_id = enqueue_wait(pool, "k", 1.0)
    with worker(database):
        task = wait_for_task(pool, task_id, timeout=10)
        after = push(pool, "k", "after the timeout")
    assert task.status == TaskStatus.COMPLETED and task.attempt == 1
    assert task.output == {"timed_out": True}
    [wait] = waits_of(pool, task_id)
    assert wait.external_event_id is None and wait.ended_at is not None
    assert wait.timeout_at <= wait.ended_at <= wait.timeout_at + LATENESS_MARGIN
    with pool.connection() as conn:
        [event] = Querier(conn).list_task_events(task_id=task_id)
    assert (event.kind, event.name, event.wake_at) == (EventKind.WAIT, "k", wait.timeout_at)
    assert event.wake_at == event.recorded_at + timedelta(seconds=1.0)
    assert after.woke_task_ids == []


def test_a_replayed_timeout_stays_a_timeout(database: LessonDatabase) -> None:
    pool = database.pool
    task_id = enqueue_wait(pool, "k", 0.5, "wait_then_fail_on_attempt_1")
    with worker(database):
        task = wait_for_task(pool, task_id, timeout=10)
    assert task.status == TaskStatus.COMPLETED and task.attempt == 2
    assert task.output == {"timed_out": True}


# Where the first worker dies: while the order is suspended, before the event is
# pushed (the event arrives with no worker alive); or once the event has ended the
# wait and the order has read it, before it charged anything.
@pytest.mark.parametrize("point", ["wait_for_event:suspended", "wait_for_event:received"])
def test_a_worker_killed_around_an_approval_the_order_sees_it_once(
    database: LessonDatabase, point: str
) -> None:
    """The approval arrives; the worker dies before the order acts on it; a
    rejection is pushed too, later. The second worker resumes the order: it
    sees the approval, the first event, and is charged and emailed once."""
    pool = database.pool
    order = {
        "order_id": "A-1",
        "card": "4242",
        "amount_cents": 4200,
        "email": "ada@example.com",
        "approval_timeout": 30,
    }
    with pool.connection() as conn:
        order_task_id = enqueue(conn, "process_order", order, queue=ORDERS_QUEUE, durable=True)
    with worker_process(database, crash_at=point) as doomed, worker_process(database) as rescuer:
        doomed.start()
        wait_until(lambda: is_waiting(pool, order_task_id))
        approval = push(pool, "approval:A-1", {"approved": True, "by": "ada"})
        assert doomed.wait(timeout=20) == -signal.SIGKILL, doomed.log()
        rejection = push(pool, "approval:A-1", {"approved": False, "by": "bob"})
        rescuer.start()
        completed = wait_for_task(pool, order_task_id, timeout=30)

    assert approval.woke_task_ids == [order_task_id] and rejection.woke_task_ids == []
    assert completed.status == TaskStatus.COMPLETED and completed.worker_id in rescuer.ids
    assert (completed.output or {}).get("status") == "confirmed", completed.output
    [wait] = waits_of(pool, order_task_id)
    assert wait.external_event_id == approval.id
    with pool.connection() as conn:
        queries = Querier(conn)
        assert len(queries.list_charges()) == 1 and len(queries.list_emails()) == 1


def test_waiting_is_fenced_a_refused_wait_writes_nothing(database: LessonDatabase) -> None:
    """The wait's event, its row in event_waits and the suspension are one fenced
    transaction: a worker that does not own the attempt writes none of them."""
    pool = database.pool
    with pool.connection() as conn:
        queries = Querier(conn)
        registered = queries.register_worker(name="test", queue=QUEUE, slots=1, lease_seconds=10)
        assert registered is not None
        task_id = enqueue(conn, "wait_for_key", {}, queue=QUEUE, durable=True)
        [task] = queries.claim_tasks(
            worker_id=registered.id,
            queue=QUEUE,
            task_names=[],
            durable_task_names=["wait_for_key"],
            max_tasks=1,
        )
    context = DurableContext.load(
        pool, worker_id=registered.id + 1, task=task, limits=LIMITS, retries=RETRIES
    )
    with pytest.raises(LostOwnership, match="no longer owns that attempt"):
        context.wait_for_event("k", timeout=60)
    with pool.connection() as conn:
        assert Querier(conn).list_task_events(task_id=task_id) == []
    assert waits_of(pool, task_id) == []
    assert get_task(pool, task_id).status == TaskStatus.RUNNING


def run_push_command(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"lessons.{LESSON}.tools.push_event", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_push_event_command_ends_a_wait_and_says_which_task_it_woke(
    database: LessonDatabase,
) -> None:
    pool = database.pool
    task_id = enqueue_wait(pool, "approval:A-9", 30)
    with worker(database):
        wait_until(lambda: is_waiting(pool, task_id))
        pushed = run_push_command(
            "approval:A-9", '{"approved": true}', f"--schema={database.schema}"
        )
        task = wait_for_task(pool, task_id, timeout=10)
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.strip() == f"event 1 pushed: approval:A-9; it woke task {task_id}"
    assert task.output == {"payload": {"approved": True}}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["k", "{not json"], "error: the payload is not JSON: "),
        (["k", "1", "--schema=no_such_schema"], "error: schema no_such_schema has no lesson 10"),
        (["k", '"a\\u0000b"'], "error: the payload of event k cannot be stored: "),
    ],
)
def test_the_push_event_command_refuses_bad_input_with_one_clear_line(
    database: LessonDatabase, arguments: list[str], message: str
) -> None:
    if "--schema" not in " ".join(arguments):
        arguments = [*arguments, f"--schema={database.schema}"]
    pushed = run_push_command(*arguments)
    assert pushed.returncode == 2
    assert pushed.stderr.startswith(message), pushed.stderr
    assert "Traceback" not in pushed.stderr


def test_push_event_refuses_a_payload_it_cannot_store_and_stores_nothing(
    database: LessonDatabase,
) -> None:
    pool = database.pool
    with pytest.raises(ValueError, match="the payload of event k is not JSON"):
        push(pool, "k", {1, 2})
    with pytest.raises(ValueError, match="the payload of event k cannot be stored"):
        push(pool, "k", "a\x00b")
    with pool.connection() as conn:
        assert Querier(conn).list_external_events() == []


def running_again_with_its_wait_open(pool: ConnectionPool, key: str) -> tuple[int, Task]:
    """A task that waits for `key`, claimed again (woken for another reason, a
    child, a deadline) while its wait is still open: the worker's id, and the task."""
    with pool.connection() as conn:
        queries = Querier(conn)
        registered = queries.register_worker(name="test", queue=QUEUE, slots=1, lease_seconds=10)
        assert registered is not None
        task_id = enqueue(conn, "wait_for_key", {}, queue=QUEUE, durable=True)

        def claim() -> list[Task]:
            return queries.claim_tasks(
                worker_id=registered.id,
                queue=QUEUE,
                task_names=[],
                durable_task_names=["wait_for_key"],
                max_tasks=1,
            )

        [task] = claim()
        with pytest.raises(TaskSuspended):
            context = DurableContext.load(
                pool, worker_id=registered.id, task=task, limits=LIMITS, retries=RETRIES
            )
            context.wait_for_event(key, timeout=60)
        queries.wake_tasks(ids=[task_id])
        [task] = claim()
    return registered.id, task


def blocked_by(pool: ConnectionPool, backend_pid: int) -> bool:
    """Whether some session waits for a lock that the session `backend_pid` holds."""
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
            (backend_pid,),
        ).fetchone()
    return row is not None and row[0] > 0


def read_the_outcome_in_a_thread(
    pool: ConnectionPool, worker_id: int, task: Task, key: str
) -> tuple[threading.Thread, list[Any]]:
    """The task's run reaching its wait, on a thread: what wait_for_event returned."""
    returned: list[Any] = []
    context = DurableContext.load(
        pool, worker_id=worker_id, task=task, limits=LIMITS, retries=RETRIES
    )
    reader = threading.Thread(
        target=lambda: returned.append(context.wait_for_event(key, timeout=60))
    )
    reader.start()
    return reader, returned


def replayed_outcome(pool: ConnectionPool, worker_id: int, task: Task, key: str) -> Any:
    context = DurableContext.load(
        pool, worker_id=worker_id, task=task, limits=LIMITS, retries=RETRIES
    )
    return context.wait_for_event(key, timeout=60)


def test_a_task_that_reaches_its_wait_while_a_push_in_a_long_transaction_ends_it_gets_the_payload(
    database: LessonDatabase,
) -> None:
    """The caller pushes inside a transaction of its own, and has not committed.
    The task runs again and looks at its wait: the push holds the wait's row, so
    the look waits for it. The caller commits; the look then reads the wait the
    push ended, and must return the event's payload. Under READ COMMITTED, a look
    that joined external_events got the newest version of the locked wait, but the
    event as its own snapshot saw it, that is, not yet pushed: it returned None,
    and a replay returned the real payload."""
    pool = database.pool
    worker_id, task = running_again_with_its_wait_open(pool, "k")
    with connect(database.url, schema=database.schema) as caller:
        caller.execute("BEGIN")
        pushed = push_event(caller, "k", {"approved": True})
        reader, returned = read_the_outcome_in_a_thread(pool, worker_id, task, "k")
        wait_until(
            lambda: blocked_by(pool, caller.info.backend_pid),
            message="the task's look at its wait did not wait for the push",
        )
        caller.execute("COMMIT")
        reader.join(timeout=10)
    assert pushed.woke_task_ids == [task.id]
    assert returned == [{"approved": True}]
    assert replayed_outcome(pool, worker_id, task, "k") == {"approved": True}


def test_a_task_that_reaches_its_wait_while_an_autocommit_push_ends_it_gets_the_payload(
    database: LessonDatabase,
) -> None:
    """The same moment with a push in its own short transaction, held open for the
    test between ending the wait and committing: its WakeTasks waits for a lock the
    test holds on the task's row, as a push would behind the task's own worker or
    a sweep. The task looks at its wait and waits for the push; the test lets the
    push go, it commits, and the look must return the payload, not None."""
    pool = database.pool
    worker_id, task = running_again_with_its_wait_open(pool, "k")
    with (
        connect(database.url, schema=database.schema) as holder,
        connect(database.url, schema=database.schema) as push_conn,
    ):
        holder.execute("BEGIN")
        holder.execute("SELECT 1 FROM tasks WHERE id = %s FOR SHARE", (task.id,))
        pushed: list[PushedEvent] = []
        pusher = threading.Thread(
            target=lambda: pushed.append(push_event(push_conn, "k", {"approved": True}))
        )
        pusher.start()
        wait_until(
            lambda: blocked_by(pool, holder.info.backend_pid),
            message="the push did not wait for the task's row",
        )
        reader, returned = read_the_outcome_in_a_thread(pool, worker_id, task, "k")
        wait_until(
            lambda: blocked_by(pool, push_conn.info.backend_pid),
            message="the task's look at its wait did not wait for the push",
        )
        holder.execute("COMMIT")
        pusher.join(timeout=10)
        reader.join(timeout=10)
    assert pushed[0].woke_task_ids == [task.id]
    assert returned == [{"approved": True}]
    assert replayed_outcome(pool, worker_id, task, "k") == {"approved": True}


def test_a_push_retried_with_its_idempotency_key_is_one_event_and_ends_no_second_wait(
    database: LessonDatabase,
) -> None:
    """A webhook pushes an approval; the reply is lost, and it pushes it again,
    with the same idempotency key, once another task waits for the same key.
    Without the key the retry was a second event, and ended that second wait."""
    pool = database.pool
    first_task_id = enqueue_wait(pool, "k", 30)
    with worker(database):
        wait_until(lambda: is_waiting(pool, first_task_id))
        pushed = push_idempotent(pool, "k", "approved", "delivery-1")
        first_task = wait_for_task(pool, first_task_id, timeout=10)
        second_task_id = enqueue_wait(pool, "k", 30)
        wait_until(lambda: is_waiting(pool, second_task_id))
        retried = push_idempotent(pool, "k", "approved", "delivery-1")
        assert is_waiting(pool, second_task_id), "the retried push ended the second wait"
        another = push_idempotent(pool, "k", "approved again", "delivery-2")
        second_task = wait_for_task(pool, second_task_id, timeout=10)

    assert pushed == PushedEvent(id=pushed.id, woke_task_ids=[first_task_id], repeated=False)
    assert retried == PushedEvent(id=pushed.id, woke_task_ids=[], repeated=True)
    assert another.woke_task_ids == [second_task_id] and not another.repeated
    assert first_task.output == {"payload": "approved"}
    assert second_task.output == {"payload": "approved again"}
    with pool.connection() as conn:
        events = Querier(conn).list_external_events()
    assert [(e.id, e.idempotency_key, e.pushes) for e in events] == [
        (pushed.id, "delivery-1", 2),
        (another.id, "delivery-2", 1),
    ]


def push_idempotent(pool: ConnectionPool, key: str, payload: Any, name: str) -> PushedEvent:
    with pool.connection() as conn:
        return push_event(conn, key, payload, idempotency_key=name)


@pytest.mark.parametrize("first_ends", ["COMMIT", "ROLLBACK"])
def test_a_push_with_the_idempotency_key_of_a_push_not_yet_committed_waits_for_it(
    database: LessonDatabase, first_ends: str
) -> None:
    """Two pushes with one idempotency key, one step at a time: the first has
    not committed when the second comes. The second waits for it, then, in the
    same statement, finds its event (it committed) or makes its own (it rolled
    back): one event either way, never two."""
    pool = database.pool
    with (
        connect(database.url, schema=database.schema) as first,
        connect(database.url, schema=database.schema) as second,
    ):
        first.execute("BEGIN")
        first_event = push_event(first, "k", 1, idempotency_key="delivery-1")
        second_result: list[PushedEvent] = []
        pusher = threading.Thread(
            target=lambda: second_result.append(
                push_event(second, "k", 1, idempotency_key="delivery-1")
            )
        )
        pusher.start()
        wait_until(
            lambda: blocked_by(pool, first.info.backend_pid),
            message="the second push did not wait for the first",
        )
        first.execute(first_ends)
        pusher.join(timeout=10)

    with pool.connection() as conn:
        [event] = Querier(conn).list_external_events()
    [second_event] = second_result
    if first_ends == "COMMIT":
        assert second_event == PushedEvent(id=first_event.id, woke_task_ids=[], repeated=True)
        assert (event.id, event.pushes) == (first_event.id, 2)
    else:
        assert not second_event.repeated and second_event.id != first_event.id
        assert (event.id, event.pushes) == (second_event.id, 1)


def test_an_idempotency_key_pushed_again_with_another_event_is_refused(
    database: LessonDatabase,
) -> None:
    pool = database.pool
    pushed = push_idempotent(pool, "k", {"approved": True, "by": "ada"}, "delivery-1")
    for key, payload in (("k", {"approved": False}), ("other", {"approved": True, "by": "ada"})):
        with pytest.raises(ValueError, match="idempotency key delivery-1 was pushed before"):
            push_idempotent(pool, key, payload, "delivery-1")
    # The same JSON in another order is the same payload (jsonb compares values).
    assert push_idempotent(pool, "k", {"by": "ada", "approved": True}, "delivery-1").repeated
    with pool.connection() as conn:
        [event] = Querier(conn).list_external_events()
    assert (event.id, event.pushes) == (pushed.id, 2)


def test_the_push_event_command_pushed_again_with_its_idempotency_key_wakes_nobody(
    database: LessonDatabase,
) -> None:
    pool = database.pool
    task_id = enqueue_wait(pool, "approval:A-9", 30)
    arguments = ["approval:A-9", "true", "--idempotency-key=delivery-1"]
    with worker(database):
        wait_until(lambda: is_waiting(pool, task_id))
        pushed = run_push_command(*arguments, f"--schema={database.schema}")
        task = wait_for_task(pool, task_id, timeout=10)
        retried = run_push_command(*arguments, f"--schema={database.schema}")
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.strip() == f"event 1 pushed: approval:A-9; it woke task {task_id}"
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.strip() == (
        "event 1 was pushed before with idempotency key delivery-1: approval:A-9; it woke no task"
    )
    assert task.output == {"payload": True}
