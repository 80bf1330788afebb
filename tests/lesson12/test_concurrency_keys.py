"""Lesson 12: concurrency keys. At most N tasks of a key run at once, across all
workers, through crashes and freezes; the trigger's backstop refuses an
over-admission; no way a task ends leaks its key's slot; priority holds within a
key; keyless tasks still run; a key nobody can serve blocks no other key.

Real worker processes and the real server. What a test asserts about the slots
comes from the test's own audit (tests/lesson12/audit.py), which recounts a
key's rows at every commit that changes them, never from the engine's counter
alone.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from lessons.common.database import connect
from lessons.lesson12_flow_control.db.models import Task, TaskStatus
from lessons.lesson12_flow_control.db.queries import CREATE_TASK, Querier
from lessons.lesson12_flow_control.engine.client import (
    enqueue,
    push_event,
    set_concurrency_limit,
    wait_for_task,
)
from lessons.lesson12_flow_control.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.lesson12.audit import (
    audit_rows,
    counter_mismatches,
    counters,
    install_audit,
    max_held_per_key,
    recounts,
)
from tests.lesson12.functions import UNSERVED_TASK, arrival_file
from tests.recording import open_gate
from tests.takeovers import record_takeovers
from tests.waiting import wait_until

LESSON = "lesson12_flow_control"
FUNCTIONS_MODULE = "tests.lesson12.functions"
QUEUE = "keyed"


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    """A lesson-12 schema with the audit installed."""
    created = lesson_database(LESSON)
    install_audit(created)
    return created


def worker(
    database: LessonDatabase,
    *,
    slots: int,
    heartbeat_interval: float = 0.1,
    inactivity_threshold: float = 1.0,
    verbose: bool = False,
) -> WorkerProcess:
    return WorkerProcess(
        schema=database.schema,
        queues=[QUEUE],
        functions=FUNCTIONS_MODULE,
        slots=slots,
        poll_interval=0.05,
        heartbeat_interval=heartbeat_interval,
        inactivity_threshold=inactivity_threshold,
        verbose=verbose,
    )


@dataclass(frozen=True)
class NewTask:
    """A task for `enqueue_many`."""

    task_name: str
    input: Any
    concurrency_key: str | None
    priority: int = 0
    max_retries: int = 3


def enqueue_many(conn: psycopg.Connection[Any], queue: str, tasks: Sequence[NewTask]) -> None:
    """Enqueue `tasks` through the engine's own CreateTask, in one transaction and
    one pipelined executemany: thousands a second, where `enqueue` in a loop
    makes a round trip (and a transaction) per task."""
    # A raw cursor, as the generated Querier uses: it takes sqlc's $1..$n placeholders.
    with conn.transaction(), psycopg.RawCursor(conn) as cursor:
        cursor.executemany(
            CREATE_TASK,
            [
                (
                    queue,
                    task.task_name,
                    task.task_name,
                    Jsonb(task.input),
                    task.priority,
                    task.max_retries,
                    None,
                    None,
                    False,
                    None,
                    task.concurrency_key,
                    None,
                    None,
                )
                for task in tasks
            ],
        )


def count_by_status(pool: ConnectionPool) -> dict[str, int]:
    with pool.connection() as conn:
        rows = conn.execute("SELECT status::text, count(*) FROM tasks GROUP BY 1").fetchall()
    return {status: count for status, count in rows}


def get_task(pool: ConnectionPool, task_id: int) -> Task:
    with pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    assert task is not None, f"there is no task {task_id}"
    return task


def running_on(pool: ConnectionPool, worker_ids: list[int]) -> int:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM tasks WHERE status = 'running' AND worker_id = ANY(%s)",
            (worker_ids,),
        ).fetchone()
    return int(row[0]) if row else 0


def taken_from(pool: ConnectionPool, worker_ids: list[int]) -> int:
    """How many attempts were taken from these workers (tests/takeovers.py's record)."""
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM takeovers WHERE from_worker = ANY(%s)", (worker_ids,)
        ).fetchone()
    return int(row[0]) if row else 0


# ---------------------------------------------------------------------------
# N per key, across four workers, through a SIGKILL and a SIGSTOP
# ---------------------------------------------------------------------------

KEYS = 50
TASKS = 5_000
MAX_PER_KEY = 2
SLOTS_PER_WORKER = 16


def test_never_more_than_n_per_key_across_four_workers_through_a_kill_and_a_freeze(
    database: LessonDatabase,
) -> None:
    """5,000 tasks on 50 keys, limit 2 per key, four worker processes of 16 slots
    (64 slots: more than one per key, so the limit binds). Once 1,000 tasks have
    completed, one worker is SIGKILLed and a replacement started; once 2,000
    have, another is SIGSTOPped until its tasks are taken from it (its lease is
    1 s), then SIGCONTed, and the results it then reports are fenced out.

    At every commit that changed a key's slots, the audit's recount of the key
    was at most 2 and equal to the engine's counter; every task completed; every
    counter ends at 0. And the test tested something: keys did reach 2, and
    attempts were taken from both the killed and the frozen worker."""
    pool = database.pool
    record_takeovers(pool, database.schema)
    with pool.connection() as conn:
        set_concurrency_limit(conn, QUEUE, MAX_PER_KEY)
        enqueue_many(
            conn,
            QUEUE,
            [
                NewTask("work", {"seconds": 0.005}, f"tenant-{n % KEYS:02d}", max_retries=10)
                for n in range(TASKS)
            ],
        )
    started_at = time.monotonic()
    processes = [worker(database, slots=SLOTS_PER_WORKER) for _ in range(3)]
    frozen = worker(database, slots=SLOTS_PER_WORKER, verbose=True)
    killed, replacement = processes[0], worker(database, slots=SLOTS_PER_WORKER)
    with ExitStack() as stack:
        for process in [*processes, frozen]:
            stack.enter_context(process).start()
        stack.enter_context(replacement)

        def completed() -> int:
            return count_by_status(pool).get("completed", 0)

        wait_until(lambda: completed() >= 1_000, timeout=60, message="1,000 never completed")
        killed.kill()
        replacement.start()

        wait_until(lambda: completed() >= 2_000, timeout=60, message="2,000 never completed")

        def paused_holding_tasks() -> bool:
            # Between two claims a worker may hold no running attempt at all: then
            # there would be nothing to take from it, and no late result to fence.
            frozen.pause()
            if running_on(pool, frozen.ids) > 0:
                return True
            frozen.resume()
            return False

        wait_until(paused_holding_tasks, timeout=60, message="the worker never held a task")
        # Its lease runs out, and the others take back every attempt it held.
        wait_until(
            lambda: running_on(pool, frozen.ids) == 0,
            timeout=60,
            message="the frozen worker's tasks were never taken back",
        )
        frozen.resume()
        # Thawed, it finishes the attempts it was running and reports them: each
        # result must be refused. (Waited for, not read at the end: the others may
        # complete every task before the thawed worker is even scheduled again.)
        wait_until(
            lambda: "result rejected" in frozen.log(),
            timeout=60,
            message=lambda: f"no late result of the frozen worker was fenced: {frozen.log()}",
        )

        wait_until(
            lambda: completed() == TASKS,
            timeout=120,
            message=lambda: f"tasks by status: {count_by_status(pool)}",
        )
        elapsed = time.monotonic() - started_at
        for process in [*processes[1:], frozen, replacement]:
            assert process.stop() == 0, process.log()
        frozen_log = frozen.log()

    most = max_held_per_key(pool)
    print(
        f"\n{TASKS} tasks on {KEYS} keys in {elapsed:.1f} s; {len(audit_rows(pool))} audited "
        f"commits; keys by the most they held: {Counter(most.values())}; "
        f"late results fenced: {frozen_log.count('result rejected')}"
    )
    assert set(most) == {f"tenant-{n:02d}" for n in range(KEYS)}
    assert max(most.values()) <= MAX_PER_KEY, most
    assert list(most.values()).count(MAX_PER_KEY) >= KEYS // 2, "the limit was seldom reached"
    assert counter_mismatches(pool) == []
    assert set(counters(pool).values()) == {0}
    assert set(recounts(pool).values()) == {0}
    assert count_by_status(pool) == {"completed": TASKS}
    assert taken_from(pool, killed.ids) > 0, "the killed worker held no task"
    assert taken_from(pool, frozen.ids) > 0, "the frozen worker held no task"


# ---------------------------------------------------------------------------
# The over-admission bug, refused by the backstop and caught by the audit
# ---------------------------------------------------------------------------


def enqueue_keyed(pool: ConnectionPool, key: str, count: int, task_name: str = "work") -> list[int]:
    with pool.connection() as conn:
        return [
            enqueue(conn, task_name, {"n": n}, queue=QUEUE, concurrency_key=key)
            for n in range(count)
        ]


def statuses(pool: ConnectionPool, ids: list[int]) -> list[TaskStatus]:
    return [get_task(pool, task_id).status for task_id in ids]


def stale_count_claim(conn: psycopg.Connection[Any], key: str) -> int:
    """The first half of the buggy claim: count the key's running rows, in a
    transaction of its own (READ COMMITTED), to compute the room left."""
    row = conn.execute(
        "SELECT count(*) FROM tasks WHERE concurrency_key = %s AND status = 'running'", (key,)
    ).fetchone()
    return MAX_PER_KEY - (int(row[0]) if row else 0)


def admit(conn: psycopg.Connection[Any], key: str, room: int) -> None:
    """The second half: start as many of the key's queued tasks as the room said."""
    conn.execute(
        "UPDATE tasks SET status = 'running', attempt = attempt + 1, started_at = now() "
        "WHERE id IN (SELECT id FROM tasks WHERE concurrency_key = %s AND status = 'queued' "
        "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)",
        (key, room),
    )


@contextmanager
def two_claimers(database: LessonDatabase) -> Iterator[tuple[Any, Any]]:
    """Two connections, each in a transaction of its own (not autocommit)."""
    with (
        connect(database.url, schema=database.schema) as first,
        connect(database.url, schema=database.schema) as second,
    ):
        first.autocommit = second.autocommit = False
        yield first, second


def test_the_backstop_refuses_three_running_tasks_of_a_limit_2_key_in_one_statement(
    database: LessonDatabase,
) -> None:
    """Three queued tasks of a key whose limit is 2, forced to running by one
    UPDATE (what a claim with a wrong count would do): the engine's trigger raises
    check_violation, and the statement changes nothing: the three are queued, the
    counter is 0, and no commit reached the audit."""
    pool = database.pool
    with pool.connection() as conn:
        set_concurrency_limit(conn, QUEUE, MAX_PER_KEY)
    ids = enqueue_keyed(pool, "k", 3)
    with pool.connection() as conn, pytest.raises(psycopg.errors.CheckViolation) as refused:
        conn.execute(
            "UPDATE tasks SET status = 'running', attempt = 1, started_at = now() "
            "WHERE id = ANY(%s)",
            (ids,),
        )
    assert "over-admission" in str(refused.value)
    assert statuses(pool, ids) == [TaskStatus.QUEUED] * 3
    assert counters(pool) == {"k": 0}
    assert max_held_per_key(pool) == {}


def test_two_claims_that_count_running_rows_from_a_stale_snapshot_are_refused(
    database: LessonDatabase,
) -> None:
    """The bug real engines shipped (Hatchet, Kestra: the room left computed from a
    count of running rows that a concurrent claim had already made stale, and 3-4
    runs admitted against a limit of 2), played out step by step: two claims each
    count 0 running rows of the key; the first admits 2 and commits; the second,
    from its stale count, admits 2 more. The engine's trigger counts under the
    key's lock, sees 4 > 2, and refuses the second claim: 2 run, as the limit says."""
    pool = database.pool
    with pool.connection() as conn:
        set_concurrency_limit(conn, QUEUE, MAX_PER_KEY)
    ids = enqueue_keyed(pool, "k", 4)
    with two_claimers(database) as (first, second):
        first_room, second_room = stale_count_claim(first, "k"), stale_count_claim(second, "k")
        assert (first_room, second_room) == (2, 2)
        admit(first, "k", first_room)
        first.commit()
        with pytest.raises(psycopg.errors.CheckViolation):
            admit(second, "k", second_room)
        second.rollback()
    assert statuses(pool, ids).count(TaskStatus.RUNNING) == MAX_PER_KEY
    assert max_held_per_key(pool) == {"k": MAX_PER_KEY}
    assert counter_mismatches(pool) == []


def test_with_the_engine_trigger_disabled_the_audit_catches_the_over_admission(
    database: LessonDatabase,
) -> None:
    """The same two stale claims with the engine's counting trigger disabled
    (ALTER TABLE tasks DISABLE TRIGGER tasks_updated_count_key_slots): nothing
    refuses the second, 4 tasks of the key run against a limit of 2, and the
    audit says so, by its own recount (most held 4) and by the counter it finds
    wrong (still 0). This is the proof that the audit can fail a test."""
    pool = database.pool
    with pool.connection() as conn:
        set_concurrency_limit(conn, QUEUE, MAX_PER_KEY)
        conn.execute("ALTER TABLE tasks DISABLE TRIGGER tasks_updated_count_key_slots")
    ids = enqueue_keyed(pool, "k", 4)
    with two_claimers(database) as (first, second):
        first_room, second_room = stale_count_claim(first, "k"), stale_count_claim(second, "k")
        admit(first, "k", first_room)
        first.commit()
        admit(second, "k", second_room)
        second.commit()
    assert statuses(pool, ids) == [TaskStatus.RUNNING] * 4
    assert max_held_per_key(pool) == {"k": 4}
    assert max_held_per_key(pool)["k"] > MAX_PER_KEY
    assert [(row.held, row.counter) for row in counter_mismatches(pool)] == [(2, 0), (4, 0)]


# ---------------------------------------------------------------------------
# No way a keyed task ends leaks its slot
# ---------------------------------------------------------------------------

ENDINGS = [
    "completed",
    "failed",
    "retried",
    "execution_timeout",
    "worker_lost",
    "suspended",
    "deleted_running",
    "deleted_queued",
]


def enqueue_one(pool: ConnectionPool, task_name: str, input: Any, **options: Any) -> int:
    with pool.connection() as conn:
        return enqueue(conn, task_name, input, queue=QUEUE, concurrency_key="k", **options)


def delete_task(pool: ConnectionPool, task_id: int) -> None:
    with pool.connection() as conn:
        conn.execute("DELETE FROM tasks WHERE id = %s", (task_id,))


def status_of(pool: ConnectionPool, task_id: int) -> TaskStatus | None:
    with pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    return task.status if task else None


@pytest.mark.parametrize("ending", ENDINGS)
def test_every_way_a_keyed_task_ends_gives_its_slot_back(
    database: LessonDatabase, tmp_path: Path, ending: str
) -> None:
    """Hatchet #4494: slots leaked when a row was deleted before its assignment,
    and the key ran nothing more. Here the key's limit is 1, and its task A ends
    one way (completed; failed for good; failed then retried; timed out; its
    worker SIGKILLed, no retries left; suspended, a durable wait; deleted while
    running; or, for "deleted_queued", a queued task deleted behind A). After
    it, at every commit the audit saw, the counter equalled the recount, and the
    key's next task B runs: for the endings that leave A's function running on
    its worker (timeout, kill, suspension, deletion), while it still does."""
    pool = database.pool
    gate = str(tmp_path / "gate")
    with pool.connection() as conn:
        set_concurrency_limit(conn, QUEUE, 1)
    first, second = worker(database, slots=2), worker(database, slots=2)
    with first, second:
        first.start()
        held = {"gate": gate}
        if ending == "completed":
            a = enqueue_one(pool, "work", {})
            expected = TaskStatus.COMPLETED
        elif ending == "failed":
            a = enqueue_one(pool, "fail_for_good", {})
            expected = TaskStatus.FAILED
        elif ending == "retried":
            a = enqueue_one(pool, "fail_on_attempt_1", {})
            expected = TaskStatus.COMPLETED
        elif ending == "execution_timeout":
            a = enqueue_one(pool, "wait_at_gate", held, execution_timeout=0.5, max_retries=0)
            expected = TaskStatus.FAILED
        elif ending == "worker_lost":
            a = enqueue_one(pool, "wait_at_gate", held, max_retries=0)
            wait_until(lambda: arrival_file(gate, a).exists())
            second.start()  # its sweeper takes A back from the dead one
            first.kill()
            expected = TaskStatus.FAILED
        elif ending == "suspended":
            a = enqueue_one(pool, "wait_for_go", {"event": "go"}, durable=True)
            expected = TaskStatus.SUSPENDED
        elif ending == "deleted_running":
            a = enqueue_one(pool, "wait_at_gate", held)
            wait_until(lambda: arrival_file(gate, a).exists())
            delete_task(pool, a)
            expected = None
        else:  # deleted_queued: A holds the slot, the queued task behind it goes
            a = enqueue_one(pool, "wait_at_gate", held)
            wait_until(lambda: arrival_file(gate, a).exists())
            doomed = enqueue_one(pool, "work", {})
            assert counters(pool) == {"k": 1}
            delete_task(pool, doomed)
            assert counters(pool) == recounts(pool) == {"k": 1}
            open_gate(gate)
            expected = TaskStatus.COMPLETED
        wait_until(
            lambda: status_of(pool, a) == expected,
            timeout=30,
            message=lambda: f"task A is {status_of(pool, a)}, not {expected}",
        )
        assert counters(pool) == recounts(pool) == {"k": 0}

        b = enqueue_one(pool, "work", {})
        assert wait_for_task(pool, b, timeout=30).status == TaskStatus.COMPLETED
        if ending == "suspended":
            assert status_of(pool, a) == TaskStatus.SUSPENDED, "B ran while A was suspended"
            with pool.connection() as conn:
                push_event(conn, "go", {"went": True})
            assert wait_for_task(pool, a, timeout=30).status == TaskStatus.COMPLETED
        open_gate(gate)
        alive = [second] if ending == "worker_lost" else [first]
        for process in alive:
            assert process.stop() == 0, process.log()
    assert counters(pool) == recounts(pool) == {"k": 0}
    assert counter_mismatches(pool) == []
    assert max_held_per_key(pool) == {"k": 1}
    if ending in ("execution_timeout", "worker_lost"):
        output = get_task(pool, a).output or {}
        assert (
            output["error"]["type"]
            == {
                "execution_timeout": "ExecutionTimeout",
                "worker_lost": "WorkerLost",
            }[ending]
        )
    if ending == "retried":
        assert get_task(pool, a).attempt == 2


# ---------------------------------------------------------------------------
# Order within a key, keyless tasks beside keyed ones, and a rolling deploy
# ---------------------------------------------------------------------------


def start_order(pool: ConnectionPool) -> list[str]:
    """The tasks' `input["name"]`, in the order they started."""
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT input->>'name' FROM tasks WHERE started_at IS NOT NULL ORDER BY started_at, id"
        ).fetchall()
    return [name for (name,) in rows]


def test_priority_holds_within_a_key_and_keyless_tasks_keep_lesson_11s_order(
    database: LessonDatabase,
) -> None:
    """Limit 1 per key, one worker with one slot, so that tasks start one at a
    time. Two keys and the keyless lane, each with two low-priority tasks then
    one high, all enqueued before the worker starts: within each key, and among
    the keyless tasks, the high one starts first, then the others in the order
    they were enqueued. Every task runs."""
    pool = database.pool
    with pool.connection() as conn:
        set_concurrency_limit(conn, QUEUE, 1)
        enqueue_many(
            conn,
            QUEUE,
            [
                NewTask("work", {"name": f"{lane}-{name}"}, key, priority=priority)
                for lane, key in (("a", "a"), ("b", "b"), ("none", None))
                for name, priority in (("low-1", 0), ("low-2", 0), ("high", 5))
            ],
        )
    with worker(database, slots=1) as process:
        process.start()
        wait_until(
            lambda: count_by_status(pool) == {"completed": 9},
            timeout=30,
            message=lambda: f"tasks by status: {count_by_status(pool)}",
        )
        assert process.stop() == 0, process.log()
    order = start_order(pool)
    for lane in ("a", "b", "none"):
        assert [name for name in order if name.startswith(f"{lane}-")] == [
            f"{lane}-high",
            f"{lane}-low-1",
            f"{lane}-low-2",
        ], order
    assert max_held_per_key(pool) == {"a": 1, "b": 1}


def test_keys_whose_tasks_no_worker_serves_do_not_block_the_other_keys(
    database: LessonDatabase,
) -> None:
    """A rolling deploy: five keys (a-0 .. a-4, first in the walk's order) hold
    only tasks of a new kind that these workers have no function for; key b holds
    three tasks they do serve. A worker with two slots runs b's three tasks; the
    new kind waits, queued, never started."""
    pool = database.pool
    with pool.connection() as conn:
        set_concurrency_limit(conn, QUEUE, 1)
        enqueue_many(
            conn,
            QUEUE,
            [NewTask(UNSERVED_TASK, {"name": f"a-{n}"}, f"a-{n}") for n in range(5)]
            + [NewTask("work", {"name": f"b-{n}"}, "b") for n in range(3)],
        )
    with worker(database, slots=2) as process:
        process.start()
        wait_until(
            lambda: count_by_status(pool) == {"completed": 3, "queued": 5},
            timeout=20,
            message=lambda: f"tasks by status: {count_by_status(pool)}",
        )
        assert process.stop() == 0, process.log()
