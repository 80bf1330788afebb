"""Lesson 15's retention (engine/retention.py), with the real server and real worker processes.

What it proves:

- Two worker processes run orders while their retention (a short policy, a
  short interval) removes the finished trees, and keeps, whole, every task an
  unfinished task still needs: the children of a parent suspended on an
  event, a finished order whose fire-and-forget child is still queued, a
  finished order an unfinished fork copies events from, and a child shared
  through an idempotency key with an unfinished order. Each goes once it may:
  the parent, woken, completes by replaying its history, its children's
  outputs still there. Every row removed was finished, every tree went
  whole, in one transaction (a trigger of the test's records each deleted
  row, with its status and transaction), and with `archive` each removed
  task is in `archived_tasks` with its history, events in order, with waits.
- A worker frozen (SIGSTOP) inside a retention batch blocks no claim: another
  worker claims and completes new orders meanwhile; the frozen transaction is
  ended by its idle limit, and nothing it was removing is lost.
- External events go only when old and held by no wait; dead workers' rows
  only when old and running nothing; skipped ticks when old (the retention
  pass runs in this process, on the real server; rows are made old by
  moving their times back).
- `finished_at` is set on every path to a final status, and cleared by an
  operator's replay.
- `history_tool stats` lists the engine's tables with their row counts.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from lessons.common.database import connect
from lessons.lesson15_operating_at_scale.db.models import (
    AtLimit,
    EventKind,
    EventWait,
    Task,
    TaskEvent,
    TaskStatus,
    TickOutcome,
)
from lessons.lesson15_operating_at_scale.db.queries import Querier
from lessons.lesson15_operating_at_scale.engine.client import (
    cancel,
    enqueue,
    push_event,
    set_concurrency_limit,
    set_retention,
    set_schedule,
    wait_for_task,
)
from lessons.lesson15_operating_at_scale.engine.crash_points import FREEZE_AT
from lessons.lesson15_operating_at_scale.engine.reruns import fork, replay
from lessons.lesson15_operating_at_scale.engine.retention import Retention, RetentionPass
from lessons.lesson15_operating_at_scale.engine.transactions import TransactionLimits
from lessons.lesson15_operating_at_scale.tools import history_tool
from lessons.lesson15_operating_at_scale.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.lesson15.functions_retention import UNSERVED_QUEUE, arrival_file, go_key
from tests.recording import create_executions_table, open_gate
from tests.waiting import wait_until

LESSON = "lesson15_operating_at_scale"
FUNCTIONS_MODULE = "tests.lesson15.functions_retention"

FINAL = {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED}

# The short policy of the tests that let retention run, in seconds.
KEEP = 0.5
# Long enough that nothing is removed while a test sets its tasks up.
KEEP_FOR_NOW = 3600.0

# A record of every row retention (or anything) deletes, written by the server itself,
# in the deleting transaction: what was removed, in what state, by which transaction.
REMOVALS = """
CREATE TABLE removed_tasks (
    task_id bigint NOT NULL,
    parent_id bigint,
    status text NOT NULL,
    finished_at timestamptz,
    xid bigint NOT NULL,
    removed_at timestamptz NOT NULL
);
CREATE TABLE removed_events (task_id bigint NOT NULL, event_number integer NOT NULL,
                             xid bigint NOT NULL);
CREATE TABLE removed_waits (task_id bigint NOT NULL, event_number integer NOT NULL,
                            xid bigint NOT NULL);
CREATE FUNCTION record_removed_task() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO removed_tasks VALUES (
        OLD.id, OLD.parent_id, OLD.status::text, OLD.finished_at, txid_current(),
        clock_timestamp()
    );
    RETURN OLD;
END;
$$;
CREATE FUNCTION record_removed_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'task_events' THEN
        INSERT INTO removed_events VALUES (OLD.task_id, OLD.event_number, txid_current());
    ELSE
        INSERT INTO removed_waits VALUES (OLD.task_id, OLD.event_number, txid_current());
    END IF;
    RETURN OLD;
END;
$$;
CREATE TRIGGER tasks_removed AFTER DELETE ON tasks
    FOR EACH ROW EXECUTE FUNCTION record_removed_task();
CREATE TRIGGER task_events_removed AFTER DELETE ON task_events
    FOR EACH ROW EXECUTE FUNCTION record_removed_event();
CREATE TRIGGER event_waits_removed AFTER DELETE ON event_waits
    FOR EACH ROW EXECUTE FUNCTION record_removed_event();
"""


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    """The lesson's tables, `executions`, and the record of removed rows."""
    created = lesson_database(LESSON, max_size=6)
    with created.pool.connection() as conn:
        create_executions_table(conn)
        conn.execute(REMOVALS)
    return created


def worker_process(
    database: LessonDatabase,
    *,
    queues: tuple[str, ...] = ("default",),
    retention_interval: float = 0.1,
    inactivity_threshold: float = 1.0,
    environment: dict[str, str] | None = None,
) -> WorkerProcess:
    """A worker process of these tests' functions; retention every 0.1 s (0: none)."""
    return WorkerProcess(
        schema=database.schema,
        queues=queues,
        functions=FUNCTIONS_MODULE,
        slots=4,
        poll_interval=0.05,
        heartbeat_interval=0.1,
        inactivity_threshold=inactivity_threshold,
        retention_interval=retention_interval,
        environment=environment,
    )


def submit(pool: ConnectionPool, task_name: str, input: Any, **options: Any) -> int:
    with pool.connection() as conn:
        return enqueue(conn, task_name, input, **options)


def order(pool: ConnectionPool, name: str, **input: Any) -> int:
    return submit(pool, "shop", {"name": name, **input}, durable=True)


def push(pool: ConnectionPool, key: str) -> None:
    with pool.connection() as conn:
        push_event(conn, key, {"pushed": key})


def get_task(pool: ConnectionPool, task_id: int) -> Task | None:
    with pool.connection() as conn:
        return Querier(conn).get_task(id=task_id)


def existing_task(pool: ConnectionPool, task_id: int) -> Task:
    task = get_task(pool, task_id)
    assert task is not None, f"there is no task {task_id}"
    return task


def output_of(task: Task) -> dict[str, Any]:
    """A finished task's output: a JSON object, for every function of these tests."""
    assert isinstance(task.output, dict), task.output
    return task.output


def status_of(pool: ConnectionPool, task_id: int) -> TaskStatus | None:
    task = get_task(pool, task_id)
    return None if task is None else task.status


def history_of(pool: ConnectionPool, task_id: int) -> list[TaskEvent]:
    with pool.connection() as conn:
        return Querier(conn).list_task_events(task_id=task_id)


def waiting_at(pool: ConnectionPool, task_id: int, events: int) -> bool:
    """Whether the task is suspended with `events` events, the last one a wait."""
    history = history_of(pool, task_id)
    return (
        status_of(pool, task_id) == TaskStatus.SUSPENDED
        and len(history) == events
        and history[-1].kind == EventKind.WAIT
    )


def task_once(
    pool: ConnectionPool, task_id: int, condition: Callable[[Task], bool]
) -> Callable[[], Task | None]:
    """A predicate for `wait_until`: the task, once `condition` holds for it."""

    def found() -> Task | None:
        task = get_task(pool, task_id)
        return task if task is not None and condition(task) else None

    return found


def wait_for_status(pool: ConnectionPool, task_id: int, status: TaskStatus) -> Task:
    return wait_until(
        task_once(pool, task_id, lambda task: task.status == status),
        timeout=30,
        message=lambda: f"task {task_id} is {status_of(pool, task_id)}, not {status}",
    )


def count(pool: ConnectionPool, query: str, *parameters: Any) -> int:
    with pool.connection() as conn:
        row = conn.execute(query, parameters).fetchone()
    assert row is not None
    return int(row[0])


def all_emailed(pool: ConnectionPool, names: list[str]) -> bool:
    return set(executed(pool, "emailed")) >= set(names)


def executed(pool: ConnectionPool, event: str) -> list[str]:
    """The orders of each run the functions recorded as `event` ("charged", ...)."""
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT detail->>'order' FROM executions WHERE event = %s ORDER BY seq", (event,)
        ).fetchall()
    return [str(row[0]) for row in rows]


@dataclass(frozen=True)
class Kept:
    """A task as it was, with its history and waits."""

    task: Task
    events: list[TaskEvent]
    waits: list[EventWait]


def snapshot(pool: ConnectionPool) -> dict[int, Kept]:
    """Every task there is, with its history and waits."""
    with pool.connection() as conn:
        queries = Querier(conn)
        waits = queries.list_event_waits()
        return {
            task.id: Kept(
                task,
                queries.list_task_events(task_id=task.id),
                [wait for wait in waits if wait.task_id == task.id],
            )
            for task in queries.list_tasks()
        }


@dataclass(frozen=True)
class Removal:
    """A row of removed_tasks: a deleted task as it was, its deleting transaction, and
    when the row was deleted (clock_timestamp, not the transaction's start)."""

    task_id: int
    parent_id: int | None
    status: str
    finished_at: Any
    xid: int
    removed_at: Any


def removals(pool: ConnectionPool) -> dict[int, Removal]:
    """Every task deleted so far, by id."""
    with pool.connection() as conn:
        rows = conn.execute("SELECT * FROM removed_tasks ORDER BY removed_at").fetchall()
    removed = [Removal(*row) for row in rows]
    by_id = {removal.task_id: removal for removal in removed}
    assert len(by_id) == len(removed), "a task was removed twice"
    return by_id


def removed_rows_xids(pool: ConnectionPool, table: str) -> list[tuple[int, int, int]]:
    """(task id, event number, transaction) of each removed event, or wait."""
    with pool.connection() as conn:
        rows = conn.execute(f"SELECT task_id, event_number, xid FROM {table}").fetchall()
    return [(int(task_id), int(number), int(xid)) for task_id, number, xid in rows]


def archived(pool: ConnectionPool) -> dict[int, tuple[int, dict[str, Any], list[dict[str, Any]]]]:
    """Each archived task: its root, its row and its history, as the archive holds them."""
    with pool.connection() as conn:
        rows = Querier(conn).list_archived_tasks()
    return {row.task_id: (row.root_task_id, row.task, row.history) for row in rows}


# The fields of an event that its archived copy must hold as they were.
ARCHIVED_EVENT_FIELDS = (
    "event_number",
    "kind",
    "name",
    "key",
    "input",
    "output",
    "child_task_id",
    "attempt",
    "copied_from_task_id",
)


def event_as_archived(event: TaskEvent) -> dict[str, Any]:
    """An event's fields as JSON would hold them (the kind as text)."""
    return {
        field: str(value) if field == "kind" else value
        for field in ARCHIVED_EVENT_FIELDS
        for value in [getattr(event, field)]
    }


# ---------------------------------------------------------------------------
# Retention beside running orders
# ---------------------------------------------------------------------------

BURSTS = 4
ORDERS_PER_BURST = 10


def test_retention_beside_running_orders_keeps_what_unfinished_tasks_need_and_removes_rest_whole(
    database: LessonDatabase,
) -> None:
    """Two worker processes with retention every 0.1 s. Set up while the policy keeps
    everything: a parent P suspended on an event, its two children finished; an order
    R, finished, whose fire-and-forget child F waits on a queue no one serves; an
    order S, finished, and its fork at its wait, which copied S's two events and
    waits again; an order A, finished, whose charge child B (unfinished, waiting)
    shares through the key charge:shared. Then the policy becomes 0.5 s, with
    archive, and forty orders run in bursts while retention removes them: every
    one goes, and every task above stays as it was, history and waits included.
    Released (events pushed, a worker for F's queue), each goes too, in its time:
    P completes by replay with its children's outputs, R's tree once F has run (F
    with it), the fork before S, B before A. At the end the tables are empty, and the record of
    deletions says: only finished tasks, roots finished longer than the policy,
    each tree (children, events, waits) in its root's transaction, and every
    removed task archived with its history in order, waits included."""
    pool = database.pool
    with pool.connection() as conn:
        set_retention(conn, keep_finished_for=KEEP_FOR_NOW, archive=True)
    with ExitStack() as stack:
        for process in [stack.enter_context(worker_process(database)) for _ in range(2)]:
            process.start()

        parent = order(pool, "P", wait=True)
        forgetful = order(pool, "R", forget_on=UNSERVED_QUEUE)
        source = order(pool, "S", wait=True)
        sharing = order(pool, "A", charge_key="charge:shared")
        wait_until(lambda: waiting_at(pool, source, 3), timeout=30, message="S never waited")
        push(pool, go_key("S"))
        for task_id in (forgetful, source, sharing):
            wait_for_status(pool, task_id, TaskStatus.COMPLETED)
        with pool.connection() as conn:
            forked = fork(conn, source, at_event=3).id
        sharer = order(pool, "B", charge_key="charge:shared", wait=True)
        for task_id in (parent, forked, sharer):
            wait_until(
                partial(waiting_at, pool, task_id, 3),
                timeout=30,
                message=f"task {task_id} never waited",
            )
        before = snapshot(pool)
        forgotten = output_of(existing_task(pool, forgetful))["forgotten"]
        shared_charge = history_of(pool, sharing)[0].child_task_id
        assert shared_charge is not None
        assert history_of(pool, sharer)[0].child_task_id == shared_charge
        assert before[forgotten].task.status == TaskStatus.QUEUED
        assert {history_of(pool, forked)[n].copied_from_task_id for n in (0, 1)} == {source}

        # The short policy, and orders running while retention removes.
        with pool.connection() as conn:
            set_retention(conn, keep_finished_for=KEEP, archive=True)
        load: list[str] = []
        for burst in range(BURSTS):
            names = [f"O-{burst}-{n}" for n in range(ORDERS_PER_BURST)]
            for name in names:
                order(pool, name)
            load += names
            wait_until(
                partial(all_emailed, pool, list(load)),
                timeout=30,
                message=f"burst {burst} never ran",
            )

        def load_removed() -> bool:
            with pool.connection() as conn:
                rows = conn.execute(
                    "SELECT count(*) FROM tasks WHERE input->>'name' LIKE 'O-%%'"
                ).fetchone()
            return rows is not None and rows[0] == 0

        wait_until(load_removed, timeout=30, message="the orders were not all removed")
        after_load = snapshot(pool)
        assert after_load == before, "a task that must be kept changed or went"
        removed_roots = [removal for removal in removals(pool).values() if not removal.parent_id]
        assert len(removed_roots) == BURSTS * ORDERS_PER_BURST

        # Released: each goes once it may.
        for name in ("P", "S", "B"):
            push(pool, go_key(name))
        unserved = stack.enter_context(
            worker_process(database, queues=(UNSERVED_QUEUE,), retention_interval=0)
        )
        unserved.start()
        wait_until(
            lambda: count(pool, "SELECT count(*) FROM tasks") == 0,
            timeout=30,
            message=lambda: f"left: {sorted(snapshot(pool))}",
        )

    removed = removals(pool)
    assert set(before) <= set(removed)
    # Only finished tasks went; a root once finished for longer than the policy.
    for removal in removed.values():
        assert removal.status in FINAL, removal
        assert removal.finished_at is not None, removal
        if removal.parent_id is None:
            assert removal.removed_at - removal.finished_at >= timedelta(seconds=KEEP), removal
        else:
            # With its parent, in the parent's transaction.
            assert removed[removal.parent_id].xid == removal.xid, removal
    # Every event and wait went with its task, in its transaction; none is left.
    for table in ("removed_events", "removed_waits"):
        for task_id, number, xid in removed_rows_xids(pool, table):
            assert removed[task_id].xid == xid, (table, task_id, number)
    assert count(pool, "SELECT count(*) FROM task_events") == 0
    assert count(pool, "SELECT count(*) FROM event_waits") == 0

    # Each kept task went after what held it.
    def removed_at(task_id: int) -> Any:
        return removed[task_id].removed_at

    assert removed[forgotten].xid == removed[forgetful].xid
    assert removed_at(forked) < removed_at(source)
    assert removed_at(sharer) < removed_at(sharing)
    assert removed[shared_charge].xid == removed[sharing].xid

    # The archive: every removed task, with its history in order and its waits.
    archive = archived(pool)
    assert set(archive) == set(removed)
    for task_id, (root_id, row, history) in archive.items():
        assert row["status"] == removed[task_id].status
        assert removed[root_id].parent_id is None and removed[root_id].xid == removed[task_id].xid
        assert [entry["event_number"] for entry in history] == list(range(1, len(history) + 1))
        for entry in history:
            if entry["kind"] == EventKind.WAIT:
                assert entry["wait"]["task_id"] == task_id and entry["wait"]["ended_at"]
            else:
                assert entry["wait"] is None
    for task_id, kept in before.items():
        _, row, history = archive[task_id]
        assert [{field: entry[field] for field in ARCHIVED_EVENT_FIELDS} for entry in history] == [
            event_as_archived(event) for event in kept.events
        ], task_id
        for wait in kept.waits:
            archived_wait = history[wait.event_number - 1]["wait"]
            assert archived_wait["key"] == wait.key
            if wait.ended_at is not None:  # S's: ended by its event, and archived so
                assert archived_wait["external_event_id"] == wait.external_event_id
            else:  # P's, B's and the fork's: ended by the event pushed at the end
                assert archived_wait["payload"] == {"pushed": wait.key}

    # P completed by replaying its history: the same attempt, no new event, its
    # children's outputs from their rows.
    _, parent_row, parent_history = archive[parent]
    charge_child, email_child = (entry["child_task_id"] for entry in parent_history[:2])
    assert parent_row["status"] == TaskStatus.COMPLETED and parent_row["attempt"] == 1
    assert len(parent_history) == 3
    assert parent_row["output"] == {
        "charge": archive[charge_child][1]["output"],
        "email": archive[email_child][1]["output"],
        "payload": {"pushed": go_key("P")},
    }
    # The fork reused S's children; B reused A's charge: each effect happened once.
    assert archive[forked][1]["output"]["charge"] == archive[source][1]["output"]["charge"]
    assert archive[sharer][1]["output"]["charge"] == archive[sharing][1]["output"]["charge"]
    orders = ["P", "R", "S", "A", *load]
    assert sorted(executed(pool, "charged")) == sorted(orders)
    assert sorted(executed(pool, "emailed")) == sorted([*orders, "B"])
    assert executed(pool, "forgotten ran") == ["R"]


# ---------------------------------------------------------------------------
# What retention may not remove yet
# ---------------------------------------------------------------------------


def removable_after(pool: ConnectionPool, keep: float) -> Callable[[], bool]:
    """Whether every finished task now was finished `keep` seconds ago, on the database's clock."""

    def passed() -> bool:
        with pool.connection() as conn:
            row = conn.execute(
                "SELECT coalesce(max(finished_at), now()) < now() - %s * interval '1 second' "
                "FROM tasks",
                (keep,),
            ).fetchone()
        return bool(row and row[0])

    return passed


def backend_waiting_for_a_lock(pool: ConnectionPool, query_text: str) -> bool:
    """Whether a session waits for a lock in a statement that holds `query_text`."""
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE %s",
            (f"%{query_text}%",),
        ).fetchone()
    return bool(row and row[0])


def test_a_durable_child_replayed_while_its_tree_is_being_removed_is_not_removed(
    database: LessonDatabase,
) -> None:
    """A finished tree three deep: a root, its durable child (an order), the order's
    two children. An operator replays the durable child, in a transaction that has
    not committed yet: ChooseTreesToRemove, which reads the committed rows, finds the
    whole tree finished, and chooses it; its lock of the tree's tasks
    (LockFinishedTasks) waits for the replay's lock on the child. The replay
    commits: the lock, granted, reads the child anew, queued again, unfinished. The
    tree must stay, the child queued, and retention say it kept the tree."""
    pool = database.pool
    with pool.connection() as conn:
        set_retention(conn, keep_finished_for=KEEP_FOR_NOW, archive=True)
    with worker_process(database, retention_interval=0) as process:
        process.start()
        root = submit(pool, "parent_of_order", {"name": "D"}, durable=True)
        wait_for_status(pool, root, TaskStatus.COMPLETED)
        assert process.stop() == 0
    child = history_of(pool, root)[0].child_task_id
    assert child is not None
    with pool.connection() as conn:
        set_retention(conn, keep_finished_for=0.01, archive=True)
    wait_until(removable_after(pool, 0.01), timeout=10, message="the clock")
    retention = Retention(
        pool, worker_id=0, interval=60, limits=TransactionLimits(idle_seconds=10, lock_seconds=10)
    )
    passes: list[RetentionPass] = []
    with (
        connect(database.url, schema=database.schema) as operator,
        ThreadPoolExecutor(max_workers=1) as thread,
    ):
        with operator.transaction():
            replay(operator, child)
            running = thread.submit(lambda: passes.append(retention.run_pass()))
            wait_until(
                lambda: backend_waiting_for_a_lock(pool, "LockFinishedTasks"),
                timeout=10,
                message="retention never waited for the replay's lock",
            )
        running.result(timeout=20)
    assert status_of(pool, child) == TaskStatus.QUEUED, passes
    assert status_of(pool, root) == TaskStatus.COMPLETED, passes
    assert root in passes[0].kept_roots, passes


def test_a_durable_child_forked_while_its_tree_is_being_removed_is_not_removed(
    database: LessonDatabase,
) -> None:
    """The same tree, forked instead of replayed: an operator forks the durable child
    at its second event, in a transaction that has not committed yet. ChooseTreesToRemove
    chooses the tree; LockFinishedTasks waits for the fork's lock on the child; the
    fork commits, and the child is still finished, but the fork now needs it (its
    forked_from) and its child (a copied event names it). No foreign key would refuse
    the delete (the partitioned tables have none): the check after the locks
    (ListTasksNeededFromOutside) must keep the tree whole, and the fork must find its
    copied child's output when it runs."""
    pool = database.pool
    with pool.connection() as conn:
        set_retention(conn, keep_finished_for=KEEP_FOR_NOW)
    with worker_process(database, retention_interval=0) as process:
        process.start()
        root = submit(pool, "parent_of_order", {"name": "F"}, durable=True)
        wait_for_status(pool, root, TaskStatus.COMPLETED)
        assert process.stop() == 0
    child = history_of(pool, root)[0].child_task_id
    assert child is not None
    grandchild = history_of(pool, child)[0].child_task_id
    assert grandchild is not None
    with pool.connection() as conn:
        set_retention(conn, keep_finished_for=0.01)
    wait_until(removable_after(pool, 0.01), timeout=10, message="the clock")
    retention = Retention(
        pool, worker_id=0, interval=60, limits=TransactionLimits(idle_seconds=10, lock_seconds=10)
    )
    passes: list[RetentionPass] = []
    with (
        connect(database.url, schema=database.schema) as operator,
        ThreadPoolExecutor(max_workers=1) as thread,
    ):
        with operator.transaction():
            forked = fork(operator, child, at_event=2)
            running = thread.submit(lambda: passes.append(retention.run_pass()))
            wait_until(
                lambda: backend_waiting_for_a_lock(pool, "LockFinishedTasks"),
                timeout=10,
                message="retention never waited for the fork's lock",
            )
        running.result(timeout=20)
    assert root in passes[0].kept_roots, passes
    assert {status_of(pool, task) for task in (root, child, grandchild)} == {
        TaskStatus.COMPLETED
    }, passes
    with worker_process(database, retention_interval=0) as process:
        process.start()
        wait_for_status(pool, forked.id, TaskStatus.COMPLETED)
        assert process.stop() == 0


def test_a_child_that_finishes_after_its_root_is_kept_for_the_policys_period(
    database: LessonDatabase,
) -> None:
    """Policy 1 s. An order R finishes; its fire-and-forget child waits on an unserved
    queue, and R's tree is kept while retention runs (an order finished after R is
    removed meanwhile). Then a worker serves the queue, the child finishes, and the
    tree goes: it must have been kept at least the policy's period after the child
    finished, as any task that finished."""
    pool = database.pool
    keep = 1.0
    with pool.connection() as conn:
        set_retention(conn, keep_finished_for=keep)
    with ExitStack() as stack:
        stack.enter_context(worker_process(database)).start()
        forgetful = order(pool, "R", forget_on=UNSERVED_QUEUE)
        forgotten = output_of(wait_for_status(pool, forgetful, TaskStatus.COMPLETED))["forgotten"]
        later = order(pool, "C")
        wait_until(lambda: get_task(pool, later) is None, timeout=30, message="C was kept")
        assert status_of(pool, forgetful) == TaskStatus.COMPLETED
        unserved = worker_process(database, queues=(UNSERVED_QUEUE,), retention_interval=0)
        stack.enter_context(unserved).start()
        wait_until(lambda: get_task(pool, forgetful) is None, timeout=30, message="R was kept")
    removed = removals(pool)
    child = removed[forgotten]
    assert child.xid == removed[forgetful].xid
    assert child.removed_at - child.finished_at >= timedelta(seconds=keep), child


@pytest.mark.xfail(
    strict=True,
    reason="ChooseTreesToRemove keeps a tree while a task outside it names one of its "
    "tasks, and looks at one tree at a time: two finished trees that share each other's "
    "children (through idempotency keys) keep each other for ever",
)
def test_two_finished_trees_that_share_each_others_children_are_removed(
    database: LessonDatabase,
) -> None:
    """Order A charges with key k:A, waits, then charges with key k:B; order B
    charges with k:B (its own child), then k:A (A's child). Once A's event comes,
    A takes B's child, and both complete: each tree names a task of the other, and
    nothing else needs either. Policy 0.5 s: by the time retention has removed an
    order C that finished after both, A's tree and B's must be gone too."""
    pool = database.pool
    with pool.connection() as conn:
        set_retention(conn, keep_finished_for=KEEP)
    with worker_process(database) as process:
        process.start()
        first = submit(
            pool,
            "two_shared_charges",
            {"name": "A", "first_key": "k:A", "second_key": "k:B", "wait_between": True},
            durable=True,
        )
        wait_until(lambda: waiting_at(pool, first, 2), timeout=30, message="A never waited")
        second = submit(
            pool,
            "two_shared_charges",
            {"name": "B", "first_key": "k:B", "second_key": "k:A"},
            durable=True,
        )
        wait_for_status(pool, second, TaskStatus.COMPLETED)
        push(pool, go_key("A"))
        wait_for_status(pool, first, TaskStatus.COMPLETED)
        assert executed(pool, "charged") == ["A/1", "B/1"]  # each shared, charged once
        later = order(pool, "C")
        wait_until(lambda: get_task(pool, later) is None, timeout=30, message="C was kept")
        assert (get_task(pool, first), get_task(pool, second)) == (None, None)


# ---------------------------------------------------------------------------
# Retention never blocks a claim
# ---------------------------------------------------------------------------


def is_stopped(pid: int) -> bool:
    """Whether process `pid` is stopped (SIGSTOP): state T in /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("State:"):
            return line.split()[1] == "T"
    return False


def sessions_idle_in_a_removal(pool: ConnectionPool, schema: str) -> list[int]:
    """The sessions idle in a transaction that holds a lock on this schema's tasks
    table, and whose last statement was retention's RemoveTasks."""
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT DISTINCT activity.pid FROM pg_stat_activity AS activity "
            "JOIN pg_locks AS lock ON lock.pid = activity.pid "
            "JOIN pg_class AS class ON class.oid = lock.relation "
            "JOIN pg_namespace AS namespace ON namespace.oid = class.relnamespace "
            "WHERE namespace.nspname = %s AND class.relname = 'tasks' "
            "AND activity.state = 'idle in transaction' "
            "AND activity.query LIKE '-- name: RemoveTasks %%'",
            (schema,),
        ).fetchall()
    return [int(row[0]) for row in rows]


def unlocked_task_rows(pool: ConnectionPool) -> int:
    """How many task rows no other transaction holds a lock on (locked, then let go)."""
    with pool.connection() as conn, conn.transaction(force_rollback=True):
        row = conn.execute(
            "SELECT count(*) FROM (SELECT id FROM tasks FOR UPDATE SKIP LOCKED) AS free"
        ).fetchone()
    assert row is not None
    return int(row[0])


OLD_ORDERS = 5
NEW_ORDERS = 5


def test_a_worker_frozen_inside_a_retention_batch_blocks_no_claim_and_loses_nothing(
    database: LessonDatabase,
) -> None:
    """Five finished orders (fifteen tasks), old enough to go. A worker with retention,
    COURSE_FREEZE_AT=retention:before_commit and a 6 s lease freezes in its first
    batch: its transaction has removed the five trees and holds their fifteen rows,
    not committed. Meanwhile another worker (no retention) claims and completes five
    new orders, while the first is still frozen and its transaction still open.
    After its idle limit (3 s) the server ends that transaction: the five trees are
    all there, as they were, their rows free, and a retention pass removes them."""
    pool = database.pool
    with pool.connection() as conn:
        set_retention(conn, keep_finished_for=KEEP_FOR_NOW)
    with ExitStack() as stack:
        claiming = stack.enter_context(worker_process(database, retention_interval=0))
        claiming.start()
        old = [order(pool, f"old-{n}") for n in range(OLD_ORDERS)]
        for task_id in old:
            wait_for_status(pool, task_id, TaskStatus.COMPLETED)
        before = snapshot(pool)
        assert len(before) == 3 * OLD_ORDERS
        with pool.connection() as conn:
            set_retention(conn, keep_finished_for=KEEP)
        wait_until(removable_after(pool, KEEP), timeout=10, message="the clock")

        freezing = stack.enter_context(
            worker_process(
                database,
                inactivity_threshold=6.0,
                environment={FREEZE_AT: "retention:before_commit"},
            )
        )
        freezing.start()
        wait_until(lambda: is_stopped(freezing.pid), timeout=10, message="it never froze")
        (frozen_session,) = wait_until(
            lambda: sessions_idle_in_a_removal(pool, database.schema),
            timeout=10,
            message="no frozen transaction",
        )
        assert unlocked_task_rows(pool) == 0  # the batch holds all fifteen

        new = [order(pool, f"new-{n}") for n in range(NEW_ORDERS)]
        for task_id in new:
            assert wait_for_task(pool, task_id, timeout=30).status == TaskStatus.COMPLETED
        assert is_stopped(freezing.pid)
        assert sessions_idle_in_a_removal(pool, database.schema) == [frozen_session]

        wait_until(
            lambda: not sessions_idle_in_a_removal(pool, database.schema),
            timeout=30,
            message="the frozen transaction was never ended",
        )
        assert freezing.log().count("crash point retention:before_commit: SIGSTOP") == 1
        freezing.kill()
        after = snapshot(pool)
        assert {task_id: after[task_id] for task_id in before} == before
        assert unlocked_task_rows(pool) == len(after) == 6 * OLD_ORDERS
        assert count(pool, "SELECT count(*) FROM removed_tasks") == 0
        assert count(pool, "SELECT count(*) FROM archived_tasks") == 0  # archive is off

    wait_until(removable_after(pool, KEEP), timeout=10, message="the clock")
    passed = retention_here(pool).run_pass()
    assert (passed.trees, passed.tasks, passed.archived) == (OLD_ORDERS + NEW_ORDERS, 30, 0)
    assert count(pool, "SELECT count(*) FROM tasks") == 0


# ---------------------------------------------------------------------------
# External events, workers, skipped ticks
# ---------------------------------------------------------------------------

LONG_AGO = "now() - interval '1 hour'"
POLICY = 600.0


def retention_here(pool: ConnectionPool) -> Retention:
    """A retention in this process, on the real server, run a pass at a time."""
    return Retention(pool, worker_id=0, interval=60, limits=TransactionLimits.for_worker(10.0))


def make_old(pool: ConnectionPool, table: str, column: str, ids: list[int]) -> None:
    """Move `column` of those rows of `table` an hour back: older than the policy.

    For tasks, every task's inserted_at goes back too: these tests' tasks
    share one range, not full, and retention deletes rows in such a range only
    once it has been filling for longer than the policy keeps (a range that
    fills faster is dropped whole once full, see ListSlowOpenPartitions).
    """
    with pool.connection() as conn:
        conn.execute(
            sql.SQL("UPDATE {} SET {} = " + LONG_AGO + " WHERE id = ANY(%s)").format(
                sql.Identifier(table), sql.Identifier(column)
            ),
            (ids,),
        )
        if table == "tasks":
            conn.execute("UPDATE tasks SET inserted_at = " + LONG_AGO)


def external_event_ids(pool: ConnectionPool) -> set[int]:
    with pool.connection() as conn:
        return {event.id for event in Querier(conn).list_external_events()}


def pushed(pool: ConnectionPool, key: str) -> int:
    with pool.connection() as conn:
        return push_event(conn, key, {"pushed": key}).id


def test_retention_removes_external_events_only_when_old_and_held_by_no_wait(
    database: LessonDatabase,
) -> None:
    """Policy 10 min. A task waits twice; the event that ended its first wait is held
    by that wait. With that event and one that matched nothing an hour old, and one
    that matched nothing just pushed, a pass removes the old unmatched one only. Once
    the task has finished, long ago, a pass removes its tree, its waits with it, and
    then the event its wait held; the young ones stay."""
    pool = database.pool
    with pool.connection() as conn:
        set_retention(conn, keep_finished_for=POLICY)
    retention = retention_here(pool)
    with worker_process(database, retention_interval=0) as process:
        process.start()
        waiting = submit(pool, "waits_twice", {"name": "W"}, durable=True)
        wait_until(lambda: waiting_at(pool, waiting, 1), timeout=30, message="no first wait")
        held = pushed(pool, "first:W")
        wait_until(lambda: waiting_at(pool, waiting, 2), timeout=30, message="no second wait")
        old_unmatched = pushed(pool, "nobody:old")
        young_unmatched = pushed(pool, "nobody:young")
        make_old(pool, "external_events", "pushed_at", [held, old_unmatched])

        passed = retention.run_pass()
        assert passed.external_events == 1
        assert external_event_ids(pool) == {held, young_unmatched}

        second = pushed(pool, "second:W")
        wait_for_status(pool, waiting, TaskStatus.COMPLETED)
    assert retention.run_pass().external_events == 0  # held still, by a finished task's wait
    make_old(pool, "tasks", "finished_at", [waiting])
    passed = retention.run_pass()
    assert (passed.trees, passed.tasks, passed.external_events) == (1, 1, 1)
    assert external_event_ids(pool) == {young_unmatched, second}
    assert count(pool, "SELECT count(*) FROM event_waits") == 0


def register(pool: ConnectionPool, name: str, lease_seconds: float = 1.0) -> int:
    with pool.connection() as conn:
        worker = Querier(conn).register_worker(
            name=name, queue="elsewhere", slots=1, lease_seconds=lease_seconds, code_version="v"
        )
    assert worker is not None
    return worker.id


def worker_ids(pool: ConnectionPool) -> set[int]:
    return {int(row[0]) for row in query_rows(pool, "SELECT id FROM workers")}


def query_rows(pool: ConnectionPool, query: str, *parameters: Any) -> list[tuple[Any, ...]]:
    with pool.connection() as conn:
        return conn.execute(query, parameters).fetchall()


def test_retention_removes_a_dead_workers_row_only_when_old_and_running_nothing(
    database: LessonDatabase,
) -> None:
    """Policy 10 min, no worker process (no sweeper to take tasks back). Of five
    worker rows, a pass removes the two that stopped, or whose lease expired, an hour
    ago and run nothing; it keeps one whose lease expired an hour ago but whose task
    still runs (its row names the worker), one stopped just now, and a live one."""
    pool = database.pool
    with pool.connection() as conn:
        set_retention(conn, keep_finished_for=POLICY)
    stopped_long_ago = register(pool, "stopped long ago")
    lost_long_ago = register(pool, "lost long ago")
    lost_running = register(pool, "lost, its task running")
    stopped_now = register(pool, "stopped now")
    live = register(pool, "live", lease_seconds=POLICY)
    with pool.connection() as conn:
        queries = Querier(conn)
        for worker_id in (stopped_long_ago, stopped_now):
            queries.mark_worker_stopped(id=worker_id)
        task_id = enqueue(conn, "charge", {"order": "X"}, queue="elsewhere")
        claimed = queries.claim_tasks(
            worker_id=lost_running,
            code_version="v",
            queue="elsewhere",
            task_names=["charge"],
            durable_task_names=[],
            max_tasks=1,
            max_keys_visited=10,
        )
        assert [task.id for task in claimed] == [task_id]
    make_old(pool, "workers", "stopped_at", [stopped_long_ago])
    make_old(pool, "workers", "lease_expires_at", [stopped_long_ago, lost_long_ago, lost_running])

    passed = retention_here(pool).run_pass()
    assert passed.workers == 2
    assert worker_ids(pool) == {lost_running, stopped_now, live}
    assert status_of(pool, task_id) == TaskStatus.RUNNING


def test_retention_removes_skipped_ticks_when_old_and_fired_ticks_with_their_tasks(
    database: LessonDatabase,
) -> None:
    """Policy 10 min. A schedule's ticks: one skipped an hour ago, one skipped just
    now, and one fired an hour ago whose task (cancelled) finished just now. A pass
    removes the old skipped tick only; once the fired tick's task finished long ago,
    a pass removes its tree and the tick with it; the young skipped tick stays."""
    pool = database.pool
    with pool.connection() as conn:
        set_retention(conn, keep_finished_for=POLICY)
        set_schedule(conn, "nightly", "charge", {"order": "N"}, every=86400)
        queries = Querier(conn)
        now = queries.database_now()
        assert now is not None
        fired_task = enqueue(conn, "charge", {"order": "N"}, queue=UNSERVED_QUEUE)
        cancel(conn, fired_task, cancelled_by="test", reason="a tick's task, finished")
        for hours, outcome, task_id in (
            (3, TickOutcome.SKIPPED, None),
            (2, TickOutcome.SKIPPED, None),
            (1, TickOutcome.FIRED, fired_task),
        ):
            tick = queries.record_tick(
                schedule="nightly",
                tick_at=now - timedelta(hours=hours),
                outcome=outcome,
                task_id=task_id,
                worker_id=0,
            )
            assert tick is not None
        conn.execute(
            "UPDATE schedule_ticks SET recorded_at = " + LONG_AGO + " WHERE tick_at <> %s",
            (now - timedelta(hours=2),),
        )

    def ticks() -> list[int]:
        rows = query_rows(pool, "SELECT tick_at FROM schedule_ticks ORDER BY tick_at")
        return [round((now - row[0]).total_seconds() / 3600) for row in rows]

    retention = retention_here(pool)
    assert retention.run_pass().skipped_ticks == 1
    assert ticks() == [2, 1]
    make_old(pool, "tasks", "finished_at", [fired_task])
    passed = retention.run_pass()
    assert (passed.trees, passed.skipped_ticks) == (1, 0)
    assert ticks() == [2]


@pytest.mark.xfail(
    strict=True,
    reason="RemoveDeadWorkers removes the row of a worker frozen for longer than its lease "
    "and the policy; when it comes back its heartbeat raises 'has no row to renew' for "
    "ever, and its claims (which walk from its row) take no queued task: alive, it "
    "serves nothing",
)
def test_a_worker_whose_row_retention_removed_while_it_was_frozen_serves_its_queue_again(
    database: LessonDatabase,
) -> None:
    """Policy 0.5 s. A worker of queue `solo` freezes (SIGSTOP) for longer than its
    lease (1 s) and the policy: another worker's retention removes its row, as the
    row of a dead worker running nothing. It is resumed, and a task is put on its
    queue: it must run it."""
    pool = database.pool
    with pool.connection() as conn:
        set_retention(conn, keep_finished_for=KEEP)
    with ExitStack() as stack:
        stack.enter_context(worker_process(database)).start()
        solo = stack.enter_context(worker_process(database, queues=("solo",), retention_interval=0))
        solo.start()
        solo.pause()
        wait_until(lambda: solo.id not in worker_ids(pool), timeout=30, message="row kept")
        solo.resume()
        task_id = submit(pool, "charge", {"order": "solo"}, queue="solo")
        assert wait_for_task(pool, task_id, timeout=5).status == TaskStatus.COMPLETED


# ---------------------------------------------------------------------------
# finished_at
# ---------------------------------------------------------------------------


def error_type(task: Task) -> str | None:
    return ((task.output or {}).get("error") or {}).get("type")


def test_finished_at_is_set_on_every_path_to_a_final_status_and_cleared_by_a_replay(
    database: LessonDatabase, tmp_path: Path
) -> None:
    """With a worker process (no retention): a task that completes, one that fails,
    one cancelled before it ran, a durable one cancelled while it waits (it
    compensates, then ends cancelled), one whose attempt outlives its execution
    timeout, one never started by its schedule deadline, one whose worker was lost
    (both failed by the sweep), and a keyed one refused at its enqueue
    (cancel_newest): each ends with its finish time set, on the database's clock,
    no earlier than it was enqueued; none had one while unfinished. An operator's
    replay clears it, and the second run sets it again, later."""
    pool = database.pool
    gate = tmp_path / "gate"
    with pool.connection() as conn:
        set_concurrency_limit(conn, "limited", 1, at_limit=AtLimit.CANCEL_NEWEST)
    lost_worker = register(pool, "lost")
    with worker_process(database, retention_interval=0) as process:
        process.start()
        finished: dict[str, int] = {
            "completed": submit(pool, "charge", {"order": "C"}),
            "failed": submit(pool, "fail", {}, max_retries=0),
            "cancelled before it ran": submit(pool, "charge", {"order": "Q"}, queue="nowhere"),
            "compensated": submit(pool, "compensating", {"name": "K"}, durable=True),
            "timed out": submit(
                pool, "hold", {"gate": str(gate)}, execution_timeout=1.0, max_retries=0
            ),
            "not started in time": submit(
                pool, "charge", {"order": "L"}, queue="nowhere", schedule_timeout=0.2
            ),
            "worker lost": submit(pool, "charge", {"order": "W"}, queue="elsewhere", max_retries=0),
        }
        # Never served: it holds its key's one place, so the next of its key is refused.
        first_of_its_key = submit(
            pool, "charge", {"order": "k1"}, queue="limited", concurrency_key="k"
        )
        finished["refused at enqueue"] = submit(
            pool, "charge", {"order": "k2"}, queue="limited", concurrency_key="k"
        )
        unfinished = [
            existing_task(pool, finished["cancelled before it ran"]),
            existing_task(pool, first_of_its_key),
            wait_until(
                task_once(
                    pool,
                    finished["compensated"],
                    # The status of the row returned, not of a later read: the task
                    # may have suspended between the two.
                    lambda task: (
                        task.status == TaskStatus.SUSPENDED and waiting_at(pool, task.id, 2)
                    ),
                ),
                timeout=30,
                message="the compensating task never waited",
            ),
            wait_until(
                task_once(
                    pool,
                    finished["timed out"],
                    lambda task: arrival_file(str(gate), task.id).exists(),
                ),
                timeout=30,
                message="the hold never ran",
            ),
        ]
        assert [task.status for task in unfinished] == [
            TaskStatus.QUEUED,
            TaskStatus.QUEUED,
            TaskStatus.SUSPENDED,
            TaskStatus.RUNNING,
        ]
        assert [task.finished_at for task in unfinished] == [None] * 4
        with pool.connection() as conn:
            claimed = Querier(conn).claim_tasks(
                worker_id=lost_worker,
                code_version="v",
                queue="elsewhere",
                task_names=["charge"],
                durable_task_names=[],
                max_tasks=1,
                max_keys_visited=10,
            )
            assert [task.id for task in claimed] == [finished["worker lost"]]
            assert claimed[0].finished_at is None
            conn.execute(
                "UPDATE workers SET lease_expires_at = " + LONG_AGO + " WHERE id = %s",
                (lost_worker,),
            )
            for name in ("cancelled before it ran", "compensated"):
                cancel(conn, finished[name], cancelled_by="support desk", reason="changed mind")
        ended = {
            name: wait_for_task(pool, task_id, timeout=30) for name, task_id in finished.items()
        }
        outcomes = {name: (task.status, error_type(task)) for name, task in ended.items()}
        assert outcomes == {
            "completed": (TaskStatus.COMPLETED, None),
            "failed": (TaskStatus.FAILED, "RuntimeError"),
            "cancelled before it ran": (TaskStatus.CANCELLED, "Cancelled"),
            "compensated": (TaskStatus.CANCELLED, "Cancelled"),
            "timed out": (TaskStatus.FAILED, "ExecutionTimeout"),
            "not started in time": (TaskStatus.FAILED, "ScheduleTimeout"),
            "worker lost": (TaskStatus.FAILED, "WorkerLost"),
            "refused at enqueue": (TaskStatus.CANCELLED, "Cancelled"),
        }
        assert [event.name for event in history_of(pool, finished["compensated"])][-1] == "undo"
        for name, task in ended.items():
            assert task.finished_at is not None, name
            assert task.finished_at >= task.inserted_at, name
            if task.started_at is not None:
                assert task.finished_at >= task.started_at, name

        replayed = order(pool, "X")
        first_finish = wait_for_status(pool, replayed, TaskStatus.COMPLETED).finished_at
        with pool.connection() as conn:
            queued_again = replay(conn, replayed).task
        assert (queued_again.status, queued_again.finished_at) == (TaskStatus.QUEUED, None)
        second = wait_until(
            task_once(
                pool,
                replayed,
                lambda task: task.attempt == 2 and task.status == TaskStatus.COMPLETED,
            ),
            timeout=30,
            message="the replay never ran",
        )
        assert first_finish is not None and second.finished_at is not None
        assert second.finished_at > first_finish
        open_gate(gate)


# ---------------------------------------------------------------------------
# history_tool stats
# ---------------------------------------------------------------------------

ENGINE_TABLES = [
    "tasks",
    "task_events",
    "event_waits",
    "external_events",
    "workers",
    "schedules",
    "schedule_ticks",
    "concurrency_limits",
    "concurrency_keys",
    "rate_limits",
    "draining_versions",
    "retention_policy",
    "archived_tasks",
    "idempotency_keys",
    "partitioning",
    "task_partitions",
]
PARTITIONED_TABLES = ("tasks", "task_events", "event_waits")


def stats(database: LessonDatabase, capsys: pytest.CaptureFixture[str]) -> dict[str, list[str]]:
    """`history_tool stats`, in this process: each table's row, by table name."""
    capsys.readouterr()
    assert history_tool.main([f"--schema={database.schema}", "stats"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:6] == ["table", "partitions", "live", "rows", "dead", "rows"], lines
    return {line.split()[0]: line.split()[1:] for line in lines[1:]}


def test_history_tool_stats_lists_the_engines_tables_with_their_row_counts(
    database: LessonDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every engine table is listed. Seven tasks and two external events written by a
    session that has ended (a session hands its counts to the statistics when it
    ends; the pool's stay open): `stats` shows seven live rows of tasks, two of
    external_events, one of retention_policy."""
    with connect(database.url, schema=database.schema) as conn:
        for n in range(7):
            enqueue(conn, "charge", {"order": f"S-{n}"}, queue=UNSERVED_QUEUE)
        for key in ("a", "b"):
            push_event(conn, key, {})
    listed = stats(database, capsys)
    assert set(ENGINE_TABLES) <= set(listed), sorted(listed)

    def live_rows() -> dict[str, str]:
        rows = stats(database, capsys)
        return {table: rows[table][1] for table in ("tasks", "external_events")}

    wait_until(
        lambda: live_rows() == {"tasks": "7", "external_events": "2"},
        timeout=20,
        message=lambda: str(live_rows()),
    )
    listed = stats(database, capsys)
    assert listed["retention_policy"][:2] == ["-", "1"]
    # The partitioned tables are a row each, with their partitions counted: the
    # first two ranges of ids, made with the schema.
    assert {table: listed[table][0] for table in PARTITIONED_TABLES} == dict.fromkeys(
        PARTITIONED_TABLES, "2"
    )
