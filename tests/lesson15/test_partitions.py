"""Lesson 15's partitions (engine/partitions.py): ranges of task ids added ahead, dropped whole.

What it proves, with the real server (and real worker processes where tasks must run):

- Retention adds ranges so that `partitions_ahead` ranges' worth of ids is always
  ready; an enqueue into an id no range holds fails and writes nothing;
  `set_partitioning` refuses nonsense and replaces only the ranges not in use.
- A range goes whole only when all it holds may go: not while one of its tasks
  is unfinished (its finished trees are then removed row by row, once the range
  is old), nor while a task outside it needs one of its tasks (an unfinished
  child, a history that shares its child, a fork's copied events, a fork). Once
  free it is dropped: its partitions gone from the catalog, its row, keys and
  ticks gone, no row DELETEd, and each of its tasks archived with its history.
- Ranges dropped under a steady flow of orders do not disturb the claim: claims
  complete between a range's choice and its drop, none is lost or run twice.
- A worker killed after choosing a range, or after detaching one of its
  partitions, leaves it chosen, and the next pass finishes it; a detach left
  pending (its second phase waited too long) is finished with FINALIZE.
- A replay or a fork of a task in a chosen range is refused; a replay under
  way makes the choice wait, and the range stays.
- Idempotency keys: eight enqueues of one key make one task; an expired key
  makes a new one; a durable repeat holding its key makes a choice wait, and
  keeps the range its history now needs.
- Only one worker maintains the ranges at a time, and two retentions at once
  break nothing.

Ranges are made small (a few ids), and "old" by moving times back, so that the
tests wait on conditions, not on the policy's period.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from lessons.common.database import connect
from lessons.lesson15_operating_at_scale.db.models import TaskPartition, TaskStatus
from lessons.lesson15_operating_at_scale.db.queries import Querier
from lessons.lesson15_operating_at_scale.engine.client import (
    NoRangeForTask,
    cancel,
    enqueue,
    push_event,
    set_partitioning,
    set_retention,
    set_schedule,
)
from lessons.lesson15_operating_at_scale.engine.crash_points import CRASH_AT, FREEZE_AT
from lessons.lesson15_operating_at_scale.engine.partitions import (
    choose_for_removal,
)
from lessons.lesson15_operating_at_scale.engine.reruns import RerunRefused, fork, replay
from lessons.lesson15_operating_at_scale.engine.retention import Retention, RetentionPass
from lessons.lesson15_operating_at_scale.engine.transactions import TransactionLimits
from lessons.lesson15_operating_at_scale.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.lesson15.functions_retention import UNSERVED_QUEUE, go_key
from tests.lesson15.test_retention import (
    ARCHIVED_EVENT_FIELDS,
    LESSON,
    REMOVALS,
    Kept,
    archived,
    count,
    event_as_archived,
    executed,
    get_task,
    history_of,
    is_stopped,
    order,
    snapshot,
    status_of,
    submit,
    wait_for_status,
    waiting_at,
)
from tests.lesson15.test_retention import worker_process as retention_worker_process
from tests.recording import create_executions_table
from tests.waiting import wait_until

# The policy of the tests that make tasks old by moving their times back an hour.
POLICY = 600.0
# The policy of the tests where real time passes (the flows of orders).
KEEP = 0.3

# When each range was forgotten (its partitions all dropped), by the server's clock,
# with the time it was chosen: the window in which a removal was under way.
FORGOTTEN_RANGES = """
CREATE TABLE forgotten_ranges (
    first_id bigint NOT NULL,
    end_id bigint NOT NULL,
    removing_since timestamptz,
    forgotten_at timestamptz NOT NULL
);
CREATE FUNCTION record_forgotten_range() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO forgotten_ranges
    VALUES (OLD.first_id, OLD.end_id, OLD.removing_since, clock_timestamp());
    RETURN OLD;
END;
$$;
CREATE TRIGGER task_partitions_forgotten AFTER DELETE ON task_partitions
    FOR EACH ROW EXECUTE FUNCTION record_forgotten_range();
"""

PARTITIONED_TABLES = ("tasks", "task_events", "event_waits")


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    """The lesson's tables, `executions`, the record of deleted rows (REMOVALS, on the
    partitioned tables: each partition attached later takes the triggers), and the
    record of forgotten ranges."""
    created = lesson_database(LESSON, max_size=12)
    with created.pool.connection() as conn:
        create_executions_table(conn)
        conn.execute(REMOVALS)
        conn.execute(FORGOTTEN_RANGES)
    return created


def limits(seconds: float = 10.0) -> TransactionLimits:
    """In-process retention's limits: generous, so that a wait the test arranged lasts."""
    return TransactionLimits(idle_seconds=seconds, lock_seconds=seconds)


def retention_here(pool: ConnectionPool, seconds: float = 10.0) -> Retention:
    """A retention in this process, on the real server, run a pass at a time."""
    return Retention(pool, worker_id=0, interval=60, limits=limits(seconds))


# A worker process of the retention tests' functions, its own retention off unless
# asked: these tests run retention passes themselves.
worker_process = partial(retention_worker_process, retention_interval=0.0)


# ---------------------------------------------------------------------------
# Ranges, ids and the catalog
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    first_id: int
    end_id: int
    removing_since: datetime | None


def ranges(pool: ConnectionPool) -> list[Range]:
    """The ranges task_partitions lists, oldest first."""
    with pool.connection() as conn:
        return [
            Range(row.first_id, row.end_id, row.removing_since)
            for row in Querier(conn).list_partitions()
        ]


def range_starts(pool: ConnectionPool) -> list[int]:
    return [task_range.first_id for task_range in ranges(pool)]


def range_of(pool: ConnectionPool, task_id: int) -> Range:
    (found,) = [r for r in ranges(pool) if r.first_id <= task_id < r.end_id]
    return found


def next_task_id(pool: ConnectionPool) -> int:
    return count(pool, "SELECT next_task_id()")


def skip_ids(pool: ConnectionPool, how_many: int) -> None:
    """Move the id sequence on by `how_many`, as enqueues that rolled back would: so
    that the next task is where the test wants it in its range. Then add the ranges
    that are needed ahead, as retention does at the start of each pass."""
    if how_many > 0:
        count(pool, "SELECT setval('tasks_id_seq', next_task_id() + %s - 1)", how_many)
        count(pool, "SELECT add_task_partitions()")


def skip_to_next_range(pool: ConnectionPool) -> int:
    """Skip the ids left in the range of the next id (it is then full); return the next id."""
    skip_ids(pool, range_of(pool, next_task_id(pool)).end_id - next_task_id(pool))
    return next_task_id(pool)


def age(pool: ConnectionPool, first_id: int, end_id: int) -> None:
    """Make the tasks of ids [first_id, end_id) an hour old: inserted, and (those that
    have) finished an hour ago, far older than POLICY."""
    with pool.connection() as conn:
        conn.execute(
            "UPDATE tasks SET inserted_at = now() - interval '1 hour', "
            "finished_at = CASE WHEN finished_at IS NOT NULL "
            "THEN now() - interval '1 hour' END "
            "WHERE id >= %s AND id < %s",
            (first_id, end_id),
        )


def age_range(pool: ConnectionPool, task_range: Range) -> None:
    age(pool, task_range.first_id, task_range.end_id)


@dataclass(frozen=True)
class Partition:
    """A table named after a range (tasks_from_<first id>...), as the catalog has it."""

    parent: str | None  # the partitioned table it is attached to (None: detached)
    bounds: tuple[int, int] | None
    detach_pending: bool


def partitions_in_catalog(pool: ConnectionPool) -> dict[str, Partition]:
    """Every table of the schema named <table>_from_<id>, attached or not, with its bounds."""
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT child.relname, parent.relname, "
            "pg_get_expr(child.relpartbound, child.oid), coalesce(inh.inhdetachpending, false) "
            "FROM pg_class AS child "
            "LEFT JOIN pg_inherits AS inh ON inh.inhrelid = child.oid "
            "LEFT JOIN pg_class AS parent ON parent.oid = inh.inhparent "
            "WHERE child.relnamespace = current_schema()::regnamespace "
            "AND child.relkind = 'r' AND child.relname ~ '^(tasks|task_events|event_waits)_from_'"
        ).fetchall()
    found: dict[str, Partition] = {}
    for name, parent, bound, pending in rows:
        numbers = re.findall(r"'(\d+)'", bound or "")
        bounds = (int(numbers[0]), int(numbers[1])) if len(numbers) == 2 else None
        found[str(name)] = Partition(parent, bounds, bool(pending))
    return found


def expected_catalog(listed: list[Range]) -> dict[str, Partition]:
    """What the catalog must hold for these ranges: three partitions each, attached."""
    return {
        f"{table}_from_{r.first_id}": Partition(table, (r.first_id, r.end_id), False)
        for r in listed
        for table in PARTITIONED_TABLES
    }


def partitions_of(pool: ConnectionPool, first_id: int) -> dict[str, Partition]:
    return {
        name: partition
        for name, partition in partitions_in_catalog(pool).items()
        if name.endswith(f"_from_{first_id}")
    }


def deleted_task_ids(pool: ConnectionPool) -> set[int]:
    """The tasks some statement DELETEd (the REMOVALS trigger's record)."""
    with pool.connection() as conn:
        return {int(row[0]) for row in conn.execute("SELECT task_id FROM removed_tasks")}


def deleted_rows(pool: ConnectionPool) -> int:
    return count(
        pool,
        "SELECT (SELECT count(*) FROM removed_tasks) + (SELECT count(*) FROM removed_events) "
        "+ (SELECT count(*) FROM removed_waits)",
    )


def rows_naming_range(pool: ConnectionPool, task_range: Range) -> dict[str, int]:
    """What still names a task of the range: its keys and ticks."""
    return {
        table: count(
            pool,
            f"SELECT count(*) FROM {table} WHERE task_id >= %s AND task_id < %s",
            task_range.first_id,
            task_range.end_id,
        )
        for table in ("idempotency_keys", "schedule_ticks")
    }


def assert_dropped_whole(pool: ConnectionPool, task_range: Range) -> None:
    """The range is gone as a range goes: its partitions, its row, its keys and ticks,
    and not one of its tasks was DELETEd."""
    assert partitions_of(pool, task_range.first_id) == {}, task_range
    assert task_range.first_id not in range_starts(pool), task_range
    assert rows_naming_range(pool, task_range) == {"idempotency_keys": 0, "schedule_ticks": 0}
    deleted = {i for i in deleted_task_ids(pool) if task_range.first_id <= i < task_range.end_id}
    assert deleted == set(), (task_range, deleted)


# ---------------------------------------------------------------------------
# 1. Ranges are added ahead; an id with no range; set_partitioning
# ---------------------------------------------------------------------------

SIZE = 5
AHEAD = 2


def ready_ids(pool: ConnectionPool) -> int:
    """How many ids past the next one have a range ready."""
    return max(r.end_id for r in ranges(pool)) - next_task_id(pool)


def test_retention_adds_ranges_ahead_and_an_enqueue_past_them_fails_writing_nothing(
    database: LessonDatabase,
) -> None:
    """set_partitioning(5, 2) on a new schema replaces the two unused default ranges
    with [1, 6) and [6, 11), each with its three partitions attached, bounds matching.
    Ten enqueues use them up: the eleventh, with an idempotency key, fails with
    NoRangeForTask (which quotes the server's "no partition of relation "tasks" found
    for row" and asks whether a worker runs retention) and writes nothing, neither
    task nor key. A retention pass then adds ranges until at least 2 ranges' worth
    of ids (and less than 3) is ready past the next id, and the enqueue goes
    through. set_partitioning refuses non-positive values (ValueError), and replaces
    only the ranges no task uses: the range in use keeps its size, the new ones
    have the new size, from its end."""
    pool = database.pool
    assert [(r.first_id, r.end_id) for r in ranges(pool)] == [(1, 100001), (100001, 200001)]
    with pool.connection() as conn:
        assert set_partitioning(conn, partition_size=SIZE, partitions_ahead=AHEAD) == 2
    assert [(r.first_id, r.end_id) for r in ranges(pool)] == [(1, 6), (6, 11)]
    assert partitions_in_catalog(pool) == expected_catalog(ranges(pool))

    with pool.connection() as conn:
        ids = [enqueue(conn, "charge", {"n": n}, queue=UNSERVED_QUEUE) for n in range(10)]
        assert ids == list(range(1, 11))
        with pytest.raises(NoRangeForTask, match="is a worker with retention running") as raised:
            enqueue(conn, "charge", {"n": 10}, queue=UNSERVED_QUEUE, idempotency_key="past")
    assert 'no partition of relation "tasks" found for row' in str(raised.value)
    assert count(pool, "SELECT count(*) FROM tasks") == 10
    assert count(pool, "SELECT count(*) FROM idempotency_keys") == 0
    assert ready_ids(pool) <= 0

    passed = retention_here(pool).run_pass()
    assert passed.ranges_added >= 1
    assert AHEAD * SIZE <= ready_ids(pool) < (AHEAD + 1) * SIZE
    assert partitions_in_catalog(pool) == expected_catalog(ranges(pool))
    with pool.connection() as conn:
        late = enqueue(conn, "charge", {"n": 10}, queue=UNSERVED_QUEUE, idempotency_key="past")
    assert key_names(pool, "past") == late
    assert retention_here(pool).run_pass().ranges_added == 0  # enough ready already

    before_refusals = ranges(pool)
    with pool.connection() as conn:
        for size, ahead in ((0, 2), (-1, 2), (5, 0), (5, -3)):
            with pytest.raises(ValueError, match="must be positive"):
                set_partitioning(conn, partition_size=size, partitions_ahead=ahead)
    assert ranges(pool) == before_refusals
    in_use = range_of(pool, late)
    with pool.connection() as conn:
        made = set_partitioning(conn, partition_size=7, partitions_ahead=1)
    after = ranges(pool)
    used = [r for r in after if r.first_id <= in_use.first_id]
    assert used[-1] == in_use  # same bounds, not chosen
    new = [r for r in after if r.first_id > in_use.first_id]
    assert len(new) == made >= 1
    assert new[0].first_id == in_use.end_id
    assert all(r.end_id - r.first_id == 7 for r in new)
    assert [r.end_id for r in after[:-1]] == [r.first_id for r in after[1:]]  # no gap
    assert partitions_in_catalog(pool) == expected_catalog(after)
    with pool.connection() as conn:
        assert enqueue(conn, "charge", {"n": 11}, queue=UNSERVED_QUEUE) == late + 1


# ---------------------------------------------------------------------------
# 2. A range goes whole only when it may
# ---------------------------------------------------------------------------

SMALL = 4


def small_ranges(pool: ConnectionPool, *, archive: bool = False) -> None:
    """The policy that nothing made old by `age` outlives, and ranges of four ids."""
    with pool.connection() as conn:
        set_retention(conn, keep_finished_for=POLICY, archive=archive)
        set_partitioning(conn, partition_size=SMALL, partitions_ahead=AHEAD)


def push(pool: ConnectionPool, key: str) -> None:
    with pool.connection() as conn:
        push_event(conn, key, {"pushed": key})


def wait_for_wait(pool: ConnectionPool, task_id: int, events: int = 3) -> None:
    wait_until(
        lambda: waiting_at(pool, task_id, events),
        timeout=30,
        message=f"task {task_id} never waited",
    )


def child_of(pool: ConnectionPool, task_id: int, event: int) -> int:
    child = history_of(pool, task_id)[event - 1].child_task_id
    assert child is not None, (task_id, event)
    return child


def record_fired_tick(pool: ConnectionPool, task_id: int) -> None:
    """A schedule's tick that enqueued `task_id` (its row names the task)."""
    with pool.connection() as conn:
        set_schedule(conn, "nightly", "charge", {"order": "N"}, every=86400)
        queries = Querier(conn)
        now = queries.database_now()
        assert now is not None
        tick = queries.record_tick(
            schedule="nightly", tick_at=now, outcome="fired", task_id=task_id, worker_id=0
        )
        assert tick is not None


def assert_archived_as_they_were(
    pool: ConnectionPool, task_range: Range, before: dict[int, Kept]
) -> None:
    """Every task the range held (as `before` saw it) is in archived_tasks, its row's
    status and output and its history, event by event, as they were."""
    archive = archived(pool)
    held = [task_id for task_id in before if task_range.first_id <= task_id < task_range.end_id]
    assert held, task_range
    for task_id in held:
        assert task_id in archive, (task_range, task_id)
        _, row, history = archive[task_id]
        kept = before[task_id]
        assert (row["status"], row["output"]) == (str(kept.task.status), kept.task.output)
        assert [{name: entry[name] for name in ARCHIVED_EVENT_FIELDS} for entry in history] == [
            event_as_archived(event) for event in kept.events
        ], task_id


@dataclass
class Layout:
    """The tasks of test 2, each scenario in ranges of its own."""

    plain: int = 0
    unfinished: int = 0
    pinned_order: int = 0
    forgetful: int = 0
    forgotten: int = 0
    sharing: int = 0
    sharer: int = 0
    source: int = 0
    forked: int = 0
    original: int = 0
    refork: int = 0
    ranges: dict[str, Range] = field(default_factory=dict)


def lay_out_scenarios(pool: ConnectionPool) -> Layout:
    """With a worker running: each scenario's tasks, placed in ranges of their own."""
    laid = Layout()
    with pool.connection() as conn:
        laid.plain = enqueue(conn, "shop", {"name": "E"}, durable=True, idempotency_key="order:E")
    wait_for_status(pool, laid.plain, TaskStatus.COMPLETED)
    record_fired_tick(pool, laid.plain)
    laid.ranges["plain"] = range_of(pool, laid.plain)
    skip_to_next_range(pool)

    laid.unfinished = submit(pool, "charge", {"order": "U"}, queue=UNSERVED_QUEUE)
    laid.pinned_order = order(pool, "O")
    wait_for_status(pool, laid.pinned_order, TaskStatus.COMPLETED)
    laid.ranges["pinned"] = range_of(pool, laid.unfinished)
    assert next_task_id(pool) == laid.ranges["pinned"].end_id  # U and O's tree fill it

    skip_ids(pool, 1)  # R and its two children end the range: its third child starts the next
    laid.forgetful = order(pool, "R", forget_on=UNSERVED_QUEUE)
    completed = wait_for_status(pool, laid.forgetful, TaskStatus.COMPLETED)
    assert isinstance(completed.output, dict)
    laid.forgotten = int(completed.output["forgotten"])
    laid.ranges["parent"] = range_of(pool, laid.forgetful)
    laid.ranges["child"] = range_of(pool, laid.forgotten)
    assert laid.ranges["child"].first_id == laid.ranges["parent"].end_id == laid.forgotten
    skip_to_next_range(pool)

    laid.sharing = order(pool, "A", charge_key="charge:shared")
    wait_for_status(pool, laid.sharing, TaskStatus.COMPLETED)
    laid.ranges["shared"] = range_of(pool, laid.sharing)
    skip_to_next_range(pool)
    laid.sharer = order(pool, "B", charge_key="charge:shared", wait=True)
    wait_for_wait(pool, laid.sharer)
    assert child_of(pool, laid.sharer, 1) == child_of(pool, laid.sharing, 1)
    skip_to_next_range(pool)

    laid.source = order(pool, "S", wait=True)
    wait_for_wait(pool, laid.source)
    push(pool, go_key("S"))
    wait_for_status(pool, laid.source, TaskStatus.COMPLETED)
    laid.ranges["copied"] = range_of(pool, laid.source)
    skip_to_next_range(pool)
    with pool.connection() as conn:
        laid.forked = fork(conn, laid.source, at_event=3).id
    wait_for_wait(pool, laid.forked)  # its copies of S's two events, then a wait of its own
    skip_to_next_range(pool)

    laid.original = order(pool, "G")
    wait_for_status(pool, laid.original, TaskStatus.COMPLETED)
    laid.ranges["forked"] = range_of(pool, laid.original)
    skip_to_next_range(pool)
    with pool.connection() as conn:
        laid.refork = fork(conn, laid.original, at_event=1).id  # a fork that copies nothing
    wait_for_status(pool, laid.refork, TaskStatus.COMPLETED)
    skip_to_next_range(pool)
    return laid


def test_a_range_is_dropped_whole_only_once_all_it_holds_may_go(database: LessonDatabase) -> None:
    """Ranges of four ids, archive on, each scenario in ranges of its own, made old:
    E, an order with an idempotency key and a schedule's tick; P, a task queued on
    a queue nobody serves and a finished order; R, an order whose fire-and-forget
    child (the first id of the next range) is unfinished; A, an order whose charge
    B (next range, waiting) shares through its key; S, an order that a fork (next
    range, waiting) copied two events from; G, an order forked at event 1 (next
    range, finished, not old). A pass drops E only, and keeps P, R, A, S, G;
    P's finished order, in a range older than the policy, goes row by row
    (pinned cleaning). Once P's task and R's child have finished (long ago), a
    pass drops P's, R's and the child's ranges; A's, S's and G's are kept while
    what needs them is there. Each range dropped: its partitions gone from the
    catalog, its row, keys and ticks gone, no row of it DELETEd but the pinned
    order's, and every task it held archived with its history."""
    pool = database.pool
    small_ranges(pool, archive=True)
    with worker_process(database) as process:
        process.start()
        laid = lay_out_scenarios(pool)
        old = ["plain", "pinned", "parent", "shared", "copied", "forked"]
        for name in old:
            age_range(pool, laid.ranges[name])
        before = snapshot(pool)

        retention = retention_here(pool)
        first = retention.run_pass()
        assert first.ranges_removed == [laid.ranges["plain"].first_id], first
        assert first.ranges_kept == len(old) - 1, first
        assert_dropped_whole(pool, laid.ranges["plain"])
        assert_archived_as_they_were(pool, laid.ranges["plain"], before)
        assert count(pool, "SELECT count(*) FROM idempotency_keys WHERE key = 'order:E'") == 0

        pinned_tree = {
            laid.pinned_order,
            *(e.child_task_id for e in before[laid.pinned_order].events if e.child_task_id),
        }
        assert deleted_task_ids(pool) == pinned_tree  # row by row: the pinned range's old tree
        assert status_of(pool, laid.unfinished) == TaskStatus.QUEUED
        # A range kept keeps its keys: the choice that removed them rolled back.
        assert key_names(pool, "charge:shared") == child_of(pool, laid.sharing, 1)
        for name in old[1:]:
            assert laid.ranges[name] in ranges(pool), name
            assert partitions_of(pool, laid.ranges[name].first_id) == expected_catalog(
                [laid.ranges[name]]
            ), name

        with pool.connection() as conn:
            for task_id in (laid.unfinished, laid.forgotten):
                cancel(conn, task_id, cancelled_by="test", reason="what pinned its range")
        for name in ("pinned", "parent", "child"):
            age_range(pool, laid.ranges[name])
        released = snapshot(pool)
        second = retention.run_pass()
        freed = ["pinned", "parent", "child"]
        assert second.ranges_removed == [laid.ranges[name].first_id for name in freed], second
        assert second.ranges_kept == 3, second  # A's, S's and G's: their younger needers stay
        for name in freed:
            task_range = laid.ranges[name]
            assert partitions_of(pool, task_range.first_id) == {}, name
            assert task_range.first_id not in range_starts(pool), name
            assert rows_naming_range(pool, task_range) == {
                "idempotency_keys": 0,
                "schedule_ticks": 0,
            }
            assert_archived_as_they_were(
                pool, task_range, {i: k for i, k in released.items() if i not in pinned_tree}
            )
        assert deleted_task_ids(pool) == pinned_tree
        for name in ("shared", "copied", "forked"):
            assert laid.ranges[name] in ranges(pool), name
        assert_archived_as_they_were(
            pool, laid.ranges["pinned"], {i: before[i] for i in pinned_tree}
        )


def test_a_range_kept_for_a_younger_range_is_dropped_whole_once_that_one_has_gone(
    database: LessonDatabase,
) -> None:
    """Ranges of four ids: A, an order whose charge B, an order in the next range,
    shares through its key; G, an order, and its fork at event 1 in the next range.
    All finished, all made old. Passes run until no range is left with a task in
    it: every range must go by its partitions, not one row DELETEd."""
    pool = database.pool
    small_ranges(pool)
    with worker_process(database) as process:
        process.start()
        sharing = order(pool, "A", charge_key="charge:shared")
        wait_for_status(pool, sharing, TaskStatus.COMPLETED)
        skip_to_next_range(pool)
        sharer = order(pool, "B", charge_key="charge:shared")
        wait_for_status(pool, sharer, TaskStatus.COMPLETED)
        assert child_of(pool, sharer, 1) == child_of(pool, sharing, 1)
        skip_to_next_range(pool)
        original = order(pool, "G")
        wait_for_status(pool, original, TaskStatus.COMPLETED)
        skip_to_next_range(pool)
        with pool.connection() as conn:
            refork = fork(conn, original, at_event=1).id
        wait_for_status(pool, refork, TaskStatus.COMPLETED)
        skip_to_next_range(pool)
    used = [r for r in ranges(pool) if r.end_id <= next_task_id(pool)]
    assert len(used) == 4
    age(pool, 1, next_task_id(pool))
    retention = retention_here(pool)
    for _ in range(3):
        retention.run_pass()
    assert count(pool, "SELECT count(*) FROM tasks") == 0
    assert [r for r in used if r in ranges(pool)] == []
    assert deleted_rows(pool) == 0


# ---------------------------------------------------------------------------
# 3. Ranges dropped under a steady flow of orders
# ---------------------------------------------------------------------------

# A range of fifteen ids holds five orders (an order is three tasks).
FLOW_RANGE = 15
# An order every 50 ms: a range fills in a quarter of a second.
FLOW_INTERVAL = 0.05
# Ranges ready ahead: 50 orders, two and a half seconds of the flow.
FLOW_AHEAD = 10


class OrderFlow:
    """Orders enqueued at a steady rate from a thread of this process, until stopped."""

    def __init__(self, pool: ConnectionPool, prefix: str) -> None:
        self.pool = pool
        self.prefix = prefix
        self.names: list[str] = []
        # What made an enqueue fail, if one did (the flow then stops).
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._enqueue, name=f"orders-{prefix}")

    def __enter__(self) -> OrderFlow:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _enqueue(self) -> None:
        try:
            with self.pool.connection() as conn:
                while not self._stop.wait(FLOW_INTERVAL):
                    name = f"{self.prefix}-{len(self.names)}"
                    enqueue(conn, "shop", {"name": name}, durable=True)
                    self.names.append(name)
        except BaseException as error:  # re-raised by the test
            self.failure = error


def flow_settings(pool: ConnectionPool) -> None:
    """Real time passes: a short policy, archive on, ranges of fifteen ids."""
    with pool.connection() as conn:
        set_retention(conn, keep_finished_for=KEEP, archive=True)
        # Ranges are added at the start of each pass: enough for the orders of a
        # pass that removes several ranges, frozen meanwhile.
        set_partitioning(conn, partition_size=FLOW_RANGE, partitions_ahead=FLOW_AHEAD)


def ranges_forgotten(pool: ConnectionPool) -> list[tuple[int, datetime, datetime]]:
    """(first id, chosen at, forgotten at) of each range retention removed so far (not
    the unused ranges set_partitioning replaced, which were never chosen)."""
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT first_id, removing_since, forgotten_at FROM forgotten_ranges "
            "WHERE removing_since IS NOT NULL ORDER BY first_id"
        ).fetchall()
    return [(int(first_id), chosen, gone) for first_id, chosen, gone in rows]


def every_task(pool: ConnectionPool) -> dict[int, dict[str, Any]]:
    """Every task there has been, as JSON: those in the tasks table, and those retention
    archived (read second: one removed in between is in the archive)."""
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT id, to_jsonb(tasks) FROM tasks "
            "UNION ALL SELECT task_id, task FROM archived_tasks"
        ).fetchall()
    found: dict[int, dict[str, Any]] = {}
    for task_id, task in rows:
        found[int(task_id)] = task
    return found


def completed_between(pool: ConnectionPool, start: datetime, end: datetime) -> int:
    """How many tasks (present or archived) completed within (start, end)."""
    return count(
        pool,
        "SELECT count(*) FROM ("
        "SELECT finished_at FROM tasks UNION ALL "
        "SELECT (task->>'finished_at')::timestamptz FROM archived_tasks) AS done "
        "WHERE finished_at > %s AND finished_at < %s",
        start,
        end,
    )


def assert_every_order_ran_once(pool: ConnectionPool, names: list[str]) -> None:
    """Each order's effects happened once (the functions' own record), and every task
    there has been completed at its first attempt."""
    assert sorted(executed(pool, "charged")) == sorted(names)
    assert sorted(executed(pool, "emailed")) == sorted(names)
    tasks = every_task(pool)
    assert len(tasks) == 3 * len(names)
    assert sorted(t["input"]["name"] for t in tasks.values() if t["task_name"] == "shop") == sorted(
        names
    )
    unlike = {i: (t["status"], t["attempt"]) for i, t in tasks.items()}
    assert {i: s for i, s in unlike.items() if s != ("completed", 1)} == {}


def assert_logged_no_error(*processes: WorkerProcess) -> None:
    """No worker logged an error (a pass that failed, an attempt that raised)."""
    for process in processes:
        log = process.log()
        at = log.find("ERROR")
        assert at < 0 and "Traceback" not in log, log[max(at, 0) : max(at, 0) + 3000]


def executions_so_far(pool: ConnectionPool) -> int:
    return count(pool, "SELECT count(*) FROM executions")


class ResumeAfterClaims:
    """Resumes a worker frozen at partitions:chosen, once other workers' claims have run
    meanwhile (`claims` more task functions recorded), or at once when draining. Keeps
    the first id of the range it was frozen on, each time claims ran meanwhile."""

    def __init__(self, pool: ConnectionPool, process: WorkerProcess, claims: int) -> None:
        self.pool = pool
        self.process = process
        self.claims = claims
        self.frozen_on: list[int] = []
        self.draining = threading.Event()
        self.failure: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="resumer")

    def __enter__(self) -> ResumeAfterClaims:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        try:
            while not self._done.is_set():
                if is_stopped(self.process.pid):
                    self._release()
                time.sleep(0.005)  # a poll of /proc, not a wait for work
        except BaseException as error:  # re-raised by the test
            self.failure = error
            self.process.resume()

    def _release(self) -> None:
        chosen = [r.first_id for r in ranges(self.pool) if r.removing_since is not None]
        assert len(chosen) == 1, chosen  # one range at a time, frozen just after its choice
        mark = executions_so_far(self.pool)
        ran = wait_until(
            lambda: (
                ("claims" if executions_so_far(self.pool) >= mark + self.claims else None)
                or ("draining" if self.draining.is_set() else None)
            ),
            timeout=30,
            message="no claim ran while a range was chosen",
        )
        if ran == "claims":
            self.frozen_on.extend(chosen)
        self.process.resume()


def test_ranges_dropped_under_a_flow_of_orders_disturb_no_claim(database: LessonDatabase) -> None:
    """A worker process runs orders (no retention), and another, which serves an empty
    queue, runs retention every 50 ms, with COURSE_FREEZE_AT=partitions:chosen: it
    freezes each time it has chosen a range, and is resumed once three task functions
    have run since. Policy 0.3 s, ranges of fifteen ids, archive on; an order every
    50 ms. Once four ranges were removed under the flow, it stops: every order was
    charged and emailed once, every task ever made (in the table or the archive)
    completed at its first attempt, no worker logged an error; and for each range
    frozen on, tasks completed between its choice and its drop (the server's clock:
    removing_since, and a trigger's clock_timestamp when its row went)."""
    pool = database.pool
    flow_settings(pool)
    with ExitStack() as stack:
        claiming = stack.enter_context(worker_process(database))
        dropping = stack.enter_context(
            worker_process(
                database,
                queues=("maintenance",),
                retention_interval=0.05,
                inactivity_threshold=10.0,
                environment={FREEZE_AT: "partitions:chosen"},
            )
        )
        claiming.start()
        dropping.start()
        resumer = stack.enter_context(ResumeAfterClaims(pool, dropping, claims=3))
        with OrderFlow(pool, "F") as flow:
            wait_until(
                lambda: len(resumer.frozen_on) >= 4 or resumer.failure or flow.failure,
                timeout=40,
                message=lambda: f"ranges removed under the flow: {resumer.frozen_on}",
            )
        resumer.draining.set()
        assert (resumer.failure, flow.failure) == (None, None)
        names = list(flow.names)
        wait_until(
            lambda: set(executed(pool, "emailed")) >= set(names),
            timeout=30,
            message="the last orders never ran",
        )
        wait_until(
            lambda: {t["status"] for t in every_task(pool).values()} == {"completed"},
            timeout=30,
            message="the last orders never completed",
        )
        assert claiming.stop() == 0
        assert dropping.stop() == 0
        assert resumer.failure is None, resumer.failure
        assert_logged_no_error(claiming, dropping)
    assert_every_order_ran_once(pool, names)
    windows = {first_id: (chosen, gone) for first_id, chosen, gone in ranges_forgotten(pool)}
    for first_id in resumer.frozen_on:
        chosen, gone = windows[first_id]
        assert completed_between(pool, chosen, gone) > 0, first_id
    assert partitions_in_catalog(pool) == expected_catalog(ranges(pool))


def test_a_range_nothing_unfinished_pins_is_not_deleted_row_by_row(
    database: LessonDatabase,
) -> None:
    """A full range of four tasks, all finished, all inserted an hour ago; three finished
    an hour ago, the last one just now (it ran for a while). Nothing unfinished pins
    the range: a pass must keep it whole, not one row DELETEd, and once its last task
    has been finished for the policy's period, a pass drops it whole."""
    pool = database.pool
    small_ranges(pool)
    with pool.connection() as conn:
        ids = [enqueue(conn, "charge", {"order": n}, queue=UNSERVED_QUEUE) for n in range(SMALL)]
        for task_id in ids:
            cancel(conn, task_id, cancelled_by="test", reason="finished without running")
    whole = range_of(pool, ids[0])
    assert next_task_id(pool) == whole.end_id
    age_range(pool, whole)
    with pool.connection() as conn:
        conn.execute("UPDATE tasks SET finished_at = now() WHERE id = %s", (ids[-1],))
    retention = retention_here(pool)
    kept = retention.run_pass()
    assert (kept.ranges_removed, kept.ranges_kept) == ([], 1)
    assert deleted_rows(pool) == 0
    age_range(pool, whole)
    assert retention.run_pass().ranges_removed == [whole.first_id]
    assert_dropped_whole(pool, whole)


# ---------------------------------------------------------------------------
# 4. Crash and resume
# ---------------------------------------------------------------------------


def finished_full_range(pool: ConnectionPool, *, keyed: bool = False) -> tuple[Range, list[int]]:
    """A full range of four tasks that finished without running (cancelled), made old;
    with `keyed`, each enqueued with an idempotency key."""
    with pool.connection() as conn:
        ids = [
            enqueue(
                conn,
                "charge",
                {"order": f"K-{n}"},
                queue=UNSERVED_QUEUE,
                idempotency_key=f"key-{n}" if keyed else None,
            )
            for n in range(SMALL)
        ]
        for task_id in ids:
            cancel(conn, task_id, cancelled_by="test", reason="finished without running")
    task_range = range_of(pool, ids[0])
    assert next_task_id(pool) == task_range.end_id
    age_range(pool, task_range)
    return task_range, ids


def test_a_worker_killed_in_a_removal_leaves_the_range_chosen_and_the_next_pass_finishes_it(
    database: LessonDatabase,
) -> None:
    """A full range of four finished tasks with idempotency keys, old; archive on. A
    worker with retention and COURSE_CRASH_AT=partitions:chosen dies (SIGKILL) once
    it has chosen the range: the range is marked, its keys are gone, its three
    partitions still attached. A second worker, COURSE_CRASH_AT=partitions:detached,
    goes on with it and dies after its first detach: event_waits' partition is
    detached (not dropped), the two others still attached. A pass in this process
    then finishes: the partition left detached is dropped, the others detached and
    dropped, the range forgotten, no row DELETEd, and each task archived once."""
    pool = database.pool
    small_ranges(pool, archive=True)
    doomed, ids = finished_full_range(pool, keyed=True)
    first = doomed.first_id
    attached = expected_catalog([doomed])
    left_after = {
        "partitions:chosen": attached,
        "partitions:detached": {
            **attached,
            f"event_waits_from_{first}": Partition(None, None, False),
        },
    }
    for point, left in left_after.items():
        with worker_process(
            database,
            queues=("maintenance",),
            retention_interval=0.05,
            environment={CRASH_AT: point},
        ) as crashing:
            crashing.start()
            assert crashing.wait(timeout=30) == -signal.SIGKILL
            assert f"crash point {point}: SIGKILL" in crashing.log()
        assert range_of(pool, ids[0]).removing_since is not None, point
        assert count(pool, "SELECT count(*) FROM idempotency_keys") == 0, point
        assert partitions_of(pool, first) == left, point

    passed = retention_here(pool).run_pass()
    assert passed.ranges_removed == [first], passed
    assert_dropped_whole(pool, doomed)
    assert deleted_rows(pool) == 0
    assert sorted(archived(pool)) == ids


def test_a_detach_left_pending_is_finished_by_the_next_pass(database: LessonDatabase) -> None:
    """A full range of four finished tasks, old. A session holds a transaction open that
    has read `tasks`; a pass whose lock timeout is half a second chooses the range,
    detaches its event_waits and task_events partitions, and its detach of the tasks
    partition stops in its second phase (which waits for that transaction): the
    partition is left attached, detach pending, the range chosen. Once that
    transaction has ended, the next pass finishes the detach (FINALIZE), drops the
    partition and forgets the range, no row DELETEd."""
    pool = database.pool
    small_ranges(pool)
    doomed, _ = finished_full_range(pool)
    first = doomed.first_id
    with connect(database.url, schema=database.schema) as reader, reader.transaction():
        assert reader.execute("SELECT count(*) FROM tasks").fetchone() == (SMALL,)
        pending = {f"tasks_from_{first}": Partition("tasks", (first, doomed.end_id), True)}

        def detach_left_pending() -> bool:
            # The pass stops at the detach that waited too long (or, should it go on
            # with the rest, returns). Another pass is tried if an earlier detach
            # timed out instead (an autovacuum of that partition, say).
            with suppress(psycopg.errors.LockNotAvailable):
                retention_here(pool, seconds=0.5).run_pass()
            return partitions_of(pool, first) == pending

        wait_until(
            detach_left_pending,
            timeout=20,
            message=lambda: f"the partitions left: {partitions_of(pool, first)}",
        )
        assert range_of(pool, first).removing_since is not None
    passed = retention_here(pool).run_pass()
    assert passed.ranges_removed == [first], passed
    assert_dropped_whole(pool, doomed)
    assert deleted_rows(pool) == 0


# ---------------------------------------------------------------------------
# 5. Replays and forks
# ---------------------------------------------------------------------------


def sessions_waiting_in(pool: ConnectionPool, query_name: str) -> int:
    """How many sessions wait for a lock in the generated query `query_name`."""
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE %s",
            (f"-- name: {query_name}%",),
        ).fetchone()
    assert row is not None
    return int(row[0])


def as_range_row(task_range: Range, pool: ConnectionPool) -> TaskPartition:
    """The range's row, as the engine's functions take it."""
    with pool.connection() as conn:
        (row,) = [
            r
            for r in Querier(conn).list_partitions_to_look_at()
            if r.first_id == task_range.first_id
        ]
    return row


def test_a_task_of_a_chosen_range_cannot_rerun_and_a_replay_under_way_keeps_its_range(
    database: LessonDatabase,
) -> None:
    """Two finished orders, each in a full range of its own. The first's range, made
    old, is chosen (the first step of a pass): a replay and a fork of the order are
    refused, RerunRefused, in one line that says retention is removing its range;
    a pass then removes the range. The second's range, made old: an operator's
    replay of the order, not committed yet, holds the range's row; a pass's choice
    waits for it (LockPartition). The replay commits: the choice, seeing the order
    queued again, keeps the range, and the order runs again and completes."""
    pool = database.pool
    small_ranges(pool)
    with worker_process(database) as process:
        process.start()
        first = order(pool, "S1")
        wait_for_status(pool, first, TaskStatus.COMPLETED)
        chosen = range_of(pool, first)
        skip_to_next_range(pool)
        second = order(pool, "S2")
        wait_for_status(pool, second, TaskStatus.COMPLETED)
        replayed = range_of(pool, second)
        skip_to_next_range(pool)

        age_range(pool, chosen)
        assert choose_for_removal(pool, limits(), as_range_row(chosen, pool))
        with pool.connection() as conn:
            for rerun in (partial(replay, conn, first), partial(fork, conn, first, at_event=1)):
                with pytest.raises(RerunRefused, match="which retention is removing") as refused:
                    rerun()
                assert "\n" not in str(refused.value)
        assert status_of(pool, first) == TaskStatus.COMPLETED
        assert retention_here(pool).run_pass().ranges_removed == [chosen.first_id]

        age_range(pool, replayed)
        with (
            connect(database.url, schema=database.schema) as operator,
            ThreadPoolExecutor(max_workers=1) as thread,
        ):
            with operator.transaction():
                replay(operator, second)
                passing = thread.submit(retention_here(pool).run_pass)
                wait_until(
                    lambda: sessions_waiting_in(pool, "LockPartition :one") == 1,
                    timeout=10,
                    message="the choice never waited for the replay",
                )
            passed = passing.result(timeout=20)
        assert (passed.ranges_removed, passed.ranges_kept) == ([], 1), passed
        assert range_of(pool, second) == replayed  # not chosen
        wait_until(
            lambda: (
                (task := get_task(pool, second)) is not None
                and task.status == TaskStatus.COMPLETED
                and task.attempt == 2
            ),
            timeout=30,
            message="the replay never ran",
        )


# ---------------------------------------------------------------------------
# 6. Idempotency keys
# ---------------------------------------------------------------------------

PRODUCERS = 8


def key_names(pool: ConnectionPool, key: str) -> int | None:
    with pool.connection() as conn:
        row = conn.execute("SELECT task_id FROM idempotency_keys WHERE key = %s", (key,)).fetchone()
    return None if row is None else int(row[0])


def test_eight_enqueues_of_one_key_at_once_make_one_task_and_each_gets_its_id(
    database: LessonDatabase,
) -> None:
    """Eight producers, each with a connection of its own, enqueue with the key
    buy:cart-7. The first one's transaction holds the key, uncommitted, while the
    seven others are sent: each waits on the key (CreateTask). The first commits:
    each of the eight got the same id, there is one task, which counts eight
    enqueues, and the key names it."""
    pool = database.pool
    key = "buy:cart-7"

    def producer(n: int) -> int:
        with connect(database.url, schema=database.schema) as conn:
            return enqueue(
                conn, "charge", {"order": f"cart-7/{n}"}, queue=UNSERVED_QUEUE, idempotency_key=key
            )

    with (
        connect(database.url, schema=database.schema) as first,
        ThreadPoolExecutor(max_workers=PRODUCERS - 1) as threads,
    ):
        with first.transaction():
            first_id = enqueue(
                first, "charge", {"order": "cart-7/0"}, queue=UNSERVED_QUEUE, idempotency_key=key
            )
            others = [threads.submit(producer, n) for n in range(1, PRODUCERS)]
            wait_until(
                lambda: sessions_waiting_in(pool, "CreateTask :one") == PRODUCERS - 1,
                timeout=20,
                message="the producers never waited for the first one's key",
            )
        ids = [first_id, *(other.result(timeout=20) for other in others)]
    assert ids == [first_id] * PRODUCERS
    assert count(pool, "SELECT count(*) FROM tasks") == 1
    task = get_task(pool, first_id)
    assert task is not None and task.enqueues == PRODUCERS
    assert key_names(pool, key) == first_id


def test_a_repeat_counts_its_enqueue_and_an_expired_key_makes_a_new_task(
    database: LessonDatabase,
) -> None:
    """An enqueue with key k, then a repeat: one task, enqueues 2. The key is made to
    expire (its time moved back): the next enqueue with k makes a new task, which
    the key names now; the old task is still there, as it was."""
    pool = database.pool
    with pool.connection() as conn:
        old = enqueue(conn, "charge", {"order": "k/1"}, queue=UNSERVED_QUEUE, idempotency_key="k")
        assert (
            enqueue(conn, "charge", {"order": "k/2"}, queue=UNSERVED_QUEUE, idempotency_key="k")
            == old
        )
        conn.execute("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")
        new = enqueue(conn, "charge", {"order": "k/3"}, queue=UNSERVED_QUEUE, idempotency_key="k")
    assert new != old
    assert key_names(pool, "k") == new
    old_task, new_task = get_task(pool, old), get_task(pool, new)
    assert old_task is not None and new_task is not None
    assert (old_task.enqueues, old_task.input) == (2, {"order": "k/1"})
    assert (new_task.enqueues, new_task.input) == (1, {"order": "k/3"})


def resume_when_frozen(process: WorkerProcess) -> bool:
    """Resume the process if it is frozen; whether it was."""
    frozen = is_stopped(process.pid)
    if frozen:
        process.resume()
    return frozen


def test_a_durable_repeat_holding_its_key_makes_the_choice_wait_and_keeps_the_range(
    database: LessonDatabase,
) -> None:
    """A charge enqueued with the key charge:shared completes, alone in a full range,
    made old. An order B, whose charge child has the same key, runs on a worker with
    COURSE_FREEZE_AT=spawn_child:before_commit: it freezes with its transaction open,
    its repeat holding the key's row (RepeatEnqueue) and its child event naming the
    charge written. A pass's choice of the charge's range waits for that key
    (RemovePartitionKeys). The worker is resumed and commits: the choice sees B's
    event, from outside the range, and keeps the range, key included. B completes
    with the shared charge as its child, which ran once, and counts two enqueues."""
    pool = database.pool
    small_ranges(pool)
    with worker_process(
        database,
        inactivity_threshold=10.0,
        environment={FREEZE_AT: "spawn_child:before_commit"},
    ) as process:
        process.start()
        shared = submit(pool, "charge", {"order": "C"}, idempotency_key="charge:shared")
        wait_for_status(pool, shared, TaskStatus.COMPLETED)  # a plain task: no spawn, no freeze
        keyed = range_of(pool, shared)
        skip_to_next_range(pool)
        age_range(pool, keyed)

        buyer = order(pool, "B", charge_key="charge:shared")
        wait_until(lambda: is_stopped(process.pid), timeout=30, message="it never froze")
        with ThreadPoolExecutor(max_workers=1) as thread:
            passing = thread.submit(retention_here(pool).run_pass)
            wait_until(
                lambda: sessions_waiting_in(pool, "RemovePartitionKeys :execrows") == 1,
                timeout=10,
                message="the choice never waited for the repeat's key",
            )
            process.resume()
            passed = passing.result(timeout=20)
        assert (passed.ranges_removed, passed.ranges_kept) == ([], 1), passed
        assert range_of(pool, shared) == keyed
        assert key_names(pool, "charge:shared") == shared
        wait_until(
            lambda: (
                not resume_when_frozen(process) and status_of(pool, buyer) == TaskStatus.COMPLETED
            ),
            timeout=30,
            message="B never completed",
        )
    assert child_of(pool, buyer, 1) == shared
    assert executed(pool, "charged") == ["C"]
    task = get_task(pool, shared)
    assert task is not None and task.enqueues == 2


# ---------------------------------------------------------------------------
# 7. Two retentions at once
# ---------------------------------------------------------------------------


def maintenance_lock_holders(pool: ConnectionPool) -> int:
    """How many sessions hold an advisory lock as retention's partitions connection."""
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks AS lock "
            "JOIN pg_stat_activity AS activity ON activity.pid = lock.pid "
            "WHERE lock.locktype = 'advisory' AND lock.granted "
            "AND activity.application_name = 'retention-partitions'"
        ).fetchone()
    assert row is not None
    return int(row[0])


@dataclass(frozen=True)
class TwoPasses:
    doomed: Range
    first: RetentionPass
    second: RetentionPass
    # Sessions holding the partitions' lock while the second pass had returned.
    holders: int


def second_pass_while_the_first_waits_in_its_choice(database: LessonDatabase) -> TwoPasses:
    """A full range of four finished tasks, old. An operator's transaction holds its
    row, as a replay does (LockPartitionOfTask); a first pass, in a thread, takes the
    partitions' lock and waits in its choice. The ids ready ahead are used up, and a
    second pass runs. The operator commits, and the first pass goes on."""
    pool = database.pool
    small_ranges(pool)
    doomed, ids = finished_full_range(pool)
    with (
        connect(database.url, schema=database.schema) as operator,
        ThreadPoolExecutor(max_workers=1) as thread,
    ):
        with operator.transaction():
            assert Querier(operator).lock_partition_of_task(task_id=ids[0]) is not None
            passing = thread.submit(retention_here(pool).run_pass)
            wait_until(
                lambda: sessions_waiting_in(pool, "LockPartition :one") == 1,
                timeout=10,
                message="the first pass never waited for the operator",
            )
            with pool.connection() as conn:
                for n in range(ready_ids(pool)):
                    enqueue(conn, "charge", {"order": f"R-{n}"}, queue=UNSERVED_QUEUE)
            assert ready_ids(pool) == 0
            second = retention_here(pool).run_pass()
            holders = maintenance_lock_holders(pool)
        first = passing.result(timeout=20)
    return TwoPasses(doomed, first, second, holders)


def test_only_one_retention_maintains_the_ranges_at_a_time(database: LessonDatabase) -> None:
    """While a first pass holds the partitions' lock, waiting in its choice of a range,
    a second pass adds the ranges needed ahead (none was ready: adding takes turns on
    the partitioning row, not the lock, so that a stuck remover never lets the ids
    run out), chooses and keeps none, and returns at once; one session holds the
    lock. Once the first pass can go on, it removes the range (partitions and row),
    and lets the lock go: a third pass has nothing to add."""
    pool = database.pool
    passes = second_pass_while_the_first_waits_in_its_choice(database)
    second = passes.second
    assert (second.ranges_added, second.ranges_removed, second.ranges_kept) == (AHEAD, [], 0)
    assert passes.holders == 1
    assert passes.first.ranges_removed == [passes.doomed.first_id], passes.first
    assert partitions_of(pool, passes.doomed.first_id) == {}
    assert passes.doomed.first_id not in range_starts(pool)
    assert maintenance_lock_holders(pool) == 0
    assert retention_here(pool).run_pass().ranges_added == 0


def test_a_pass_without_the_partitions_lock_deletes_no_row_of_a_range_about_to_be_dropped(
    database: LessonDatabase,
) -> None:
    """As above: the range the first pass is choosing is old and all it holds may go;
    the second pass, which does not hold the partitions' lock, must leave it to be
    dropped whole: no row DELETEd."""
    pool = database.pool
    passes = second_pass_while_the_first_waits_in_its_choice(database)
    assert passes.first.ranges_removed == [passes.doomed.first_id], passes.first
    assert deleted_rows(pool) == 0


def test_two_workers_retaining_at_once_under_a_flow_of_orders_break_nothing(
    database: LessonDatabase,
) -> None:
    """Two worker processes, both running orders and both with retention every 50 ms;
    policy 0.3 s, ranges of fifteen ids, archive on, an order every 50 ms. Once four
    ranges have been removed, the flow stops: every order was charged and emailed
    once, every task ever made completed at its first attempt, no worker logged an
    error, and the catalog holds exactly the three attached partitions of each
    range task_partitions lists, nothing else."""
    pool = database.pool
    flow_settings(pool)
    with ExitStack() as stack:
        workers = [
            stack.enter_context(worker_process(database, retention_interval=0.05)) for _ in range(2)
        ]
        for process in workers:
            process.start()
        with OrderFlow(pool, "T") as flow:
            wait_until(
                lambda: len(ranges_forgotten(pool)) >= 4 or flow.failure,
                timeout=40,
                message=lambda: f"ranges removed: {ranges_forgotten(pool)}",
            )
        assert flow.failure is None, flow.failure
        wait_until(
            lambda: (
                {t["status"] for t in every_task(pool).values()} == {"completed"}
                and len(every_task(pool)) == 3 * len(flow.names)
            ),
            timeout=30,
            message="the last orders never completed",
        )
        for process in workers:
            assert process.stop() == 0
        assert_logged_no_error(*workers)
    assert_every_order_ran_once(pool, flow.names)
    assert partitions_in_catalog(pool) == expected_catalog(ranges(pool))
