"""Lesson 14: pinned code versions, with the real server and real worker processes.

Every worker registers the version of the code it runs (declared here: `v1`, `v2`); a
durable task's first claim pins it to the claiming worker's version, and from then on
only a worker of that version claims it. These tests prove it with old and new workers
side by side on one queue (tasks suspended on sleeps, events and children, and woken
while both run), with a v1 worker SIGKILLed in the middle of a task (a v2 worker sweeps
it back to the queue and leaves it; a second v1 worker takes it), with a version that
drains (no new durable task, its own finished; undrain reverses it; plain tasks run
anywhere), and with tasks moved to another version (the unfinished ones only; a moved
suspended task resumes on the new version).

Each claim is seen three ways, and all three must agree: a trigger of the test's
schema records every claim as it commits (the task, the claiming worker and that
worker's registered version); the durable function records each of its runs, from
the process that runs it; and each worker process logs the ids it claims. A worker
not taking a task is shown by what it did take: a task enqueued behind the pinned one
(a later id, or a later wake-up time) that the worker claimed and finished, so that
the claim that took it saw the pinned task first and passed it over.

The other guarantees (stranded versions, derived versions, forks and replays, the
delayed, keyed, rate-limited and resume paths of the claim) are in
test_versions_paths.py; how a poller behaves beside a due task it may not claim, in
test_versions_polling.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from lessons.lesson15_operating_at_scale.db.models import Task, TaskStatus
from lessons.lesson15_operating_at_scale.db.queries import Querier
from lessons.lesson15_operating_at_scale.engine.client import (
    drain_version,
    enqueue,
    move_to_version,
    push_event,
    set_concurrency_limit,
    set_rate_limit,
    wait_for_task,
)
from lessons.lesson15_operating_at_scale.engine.shared import DEFAULT_QUEUE
from lessons.lesson15_operating_at_scale.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.recording import create_executions_table, open_gate
from tests.waiting import wait_until

LESSON = "lesson15_operating_at_scale"
FUNCTIONS_MODULE = "tests.lesson15_inherited14.functions_versions"
TOOL = f"lessons.{LESSON}.tools.history_tool"
# A queue of plain children, served by the workers a test chooses.
CHILDREN = "children"
# A queue with a concurrency limit of one task per key.
KEYED = "keyed"
# A rate limit roomy enough never to hold a test's tasks back.
RATE_LIMIT = "api"

# Every claim, recorded by the database as it commits: what a test checks the
# workers' own accounts against.
CLAIMS = """
CREATE TABLE {schema}.claims (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id bigint NOT NULL,
    attempt integer NOT NULL,
    durable boolean NOT NULL,
    worker_id bigint NOT NULL,
    -- The claiming worker's registered version, and the task's after the claim.
    worker_version text NOT NULL,
    task_version text
);
CREATE FUNCTION {schema}.record_claim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {schema}.claims
        (task_id, attempt, durable, worker_id, worker_version, task_version)
    SELECT NEW.id, NEW.attempt, NEW.durable, NEW.worker_id, workers.code_version,
        NEW.code_version
    FROM {schema}.workers
    WHERE workers.id = NEW.worker_id;
    RETURN NEW;
END;
$$;
CREATE TRIGGER tasks_claimed
    AFTER UPDATE ON {schema}.tasks
    FOR EACH ROW
    WHEN (NEW.status = 'running' AND OLD.status <> 'running')
    EXECUTE FUNCTION {schema}.record_claim();
"""

UNFINISHED = (TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.SUSPENDED)


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return versions_database(lesson_database)


def versions_database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    """A lesson-14 schema with `executions` and `claims`, a keyed queue and a rate limit."""
    created = lesson_database(LESSON)
    with created.pool.connection() as conn:
        create_executions_table(conn)
        conn.execute(sql.SQL(CLAIMS).format(schema=sql.Identifier(created.schema)))
        set_concurrency_limit(conn, KEYED, 1)
        set_rate_limit(conn, RATE_LIMIT, 1000, 60)
    return created


def worker(
    database: LessonDatabase,
    code_version: str | None,
    *,
    queues: Sequence[str] = (DEFAULT_QUEUE,),
    functions: str = FUNCTIONS_MODULE,
    poll_interval: float = 0.1,
) -> WorkerProcess:
    """A worker process of `code_version` (None: derived), logging its claims."""
    return WorkerProcess(
        schema=database.schema,
        queues=queues,
        functions=functions,
        slots=4,
        poll_interval=poll_interval,
        heartbeat_interval=0.1,
        inactivity_threshold=1.0,
        verbose=True,
        code_version=code_version,
    )


# ---------------------------------------------------------------------------
# Tasks, claims and runs
# ---------------------------------------------------------------------------


def enqueue_task(pool: ConnectionPool, task_name: str, input: Any, **options: Any) -> int:
    with pool.connection() as conn:
        return enqueue(conn, task_name, input, **options)


def enqueue_durable(pool: ConnectionPool, task_name: str, input: Any, **options: Any) -> int:
    return enqueue_task(pool, task_name, input, durable=True, **options)


def get_task(pool: ConnectionPool, task_id: int) -> Task:
    with pool.connection() as conn:
        task = Querier(conn).get_task(id=task_id)
    assert task is not None, f"there is no task {task_id}"
    return task


def push(pool: ConnectionPool, key: str) -> None:
    with pool.connection() as conn:
        push_event(conn, key, {"pushed": key})


@dataclass(frozen=True)
class Claim:
    """A claim as the database recorded it (see CLAIMS)."""

    task_id: int
    attempt: int
    durable: bool
    worker_id: int
    worker_version: str
    task_version: str | None


@dataclass(frozen=True)
class Run:
    """A run of a task function, as the function recorded it (functions_versions.py)."""

    task_id: int
    attempt: int
    pid: int
    worker_id: int
    worker_version: str
    task_version: str | None


def claims_of(pool: ConnectionPool, task_id: int) -> list[Claim]:
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT task_id, attempt, durable, worker_id, worker_version, task_version "
            "FROM claims WHERE task_id = %s ORDER BY seq",
            (task_id,),
        ).fetchall()
    return [Claim(*row) for row in rows]


def runs_of(pool: ConnectionPool, task_id: int) -> list[Run]:
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT key, attempt, pid, (detail->>'worker_id')::bigint, "
            "detail->>'worker_version', detail->>'task_version' "
            "FROM executions WHERE key = %s ORDER BY seq",
            (task_id,),
        ).fetchall()
    return [Run(*row) for row in rows]


def children_of(pool: ConnectionPool, task_id: int) -> list[int]:
    with pool.connection() as conn:
        rows = Querier(conn).list_task_events(task_id=task_id)
    return [event.child_task_id for event in rows if event.child_task_id is not None]


CLAIMED_LINE = re.compile(r"claimed \d+ task\(s\): \[(?P<ids>[\d, ]*)\]")


def claimed_in_log(process: WorkerProcess) -> Counter[int]:
    """How many times the process logged a claim of each task (its poller's lines)."""
    claimed: Counter[int] = Counter()
    for match in CLAIMED_LINE.finditer(process.log()):
        claimed.update(int(task_id) for task_id in match["ids"].split(",") if task_id.strip())
    return claimed


def assert_claimed_only_by_their_version(
    pool: ConnectionPool, task_ids: Iterable[int], processes: Sequence[WorkerProcess]
) -> None:
    """Every claim of each durable task was by a worker of the version it is pinned to,
    by the database's record, by the function's own runs (the process that ran it),
    and by the worker logs, and the three count the same claims."""
    logs = [(process, claimed_in_log(process)) for process in processes]
    for task_id in task_ids:
        task = get_task(pool, task_id)
        version = task.code_version
        assert task.durable and version is not None, task
        claims = claims_of(pool, task_id)
        assert claims, f"task {task_id} was never claimed"
        assert all(claim.worker_version == claim.task_version == version for claim in claims), (
            task_id,
            version,
            claims,
        )
        pids = {process.pid for process in processes if process.code_version == version}
        runs = runs_of(pool, task_id)
        assert len(runs) == len(claims), (task_id, runs, claims)
        assert all(
            run.pid in pids and run.worker_version == run.task_version == version for run in runs
        ), (
            task_id,
            version,
            runs,
        )
        assert [run.worker_id for run in runs] == [claim.worker_id for claim in claims]
        logged: Counter[str | None] = Counter()
        for process, claimed in logs:
            logged[process.code_version] += claimed[task_id]
        assert +logged == Counter({version: len(claims)}), (task_id, logged)


def pinned(pool: ConnectionPool, task_ids: Iterable[int], status: TaskStatus, version: str) -> bool:
    return all(
        (task.status, task.code_version) == (status, version)
        for task in (get_task(pool, task_id) for task_id in task_ids)
    )


def wait_pinned(
    pool: ConnectionPool, task_ids: Sequence[int], status: TaskStatus, version: str
) -> None:
    wait_until(
        lambda: pinned(pool, task_ids, status, version),
        message=lambda: (
            f"not all {status} on {version}: "
            + str([(t, get_task(pool, t).status, get_task(pool, t).code_version) for t in task_ids])
        ),
    )


def wait_completed(pool: ConnectionPool, task_ids: Iterable[int]) -> list[Task]:
    finished = [wait_for_task(pool, task_id, timeout=30) for task_id in task_ids]
    for task in finished:
        assert task.status == TaskStatus.COMPLETED, task
    return finished


def wait_until_past(database: LessonDatabase, moment: datetime) -> None:
    """Wait until the database's clock has passed `moment`."""

    def past() -> bool:
        with database.pool.connection() as conn:
            now = Querier(conn).database_now()
        return now is not None and now > moment

    wait_until(past, message=f"the database's clock never passed {moment}")


def history_tool(database: LessonDatabase, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", TOOL, "--schema", database.schema, *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DATABASE_URL": database.url},
    )


def version_lines(versions: str, code_version: str) -> list[str]:
    """The rows of `history_tool versions` for `code_version`, one per queue."""
    rows = [line for line in versions.splitlines() if line.split()[:1] == [code_version]]
    assert rows, versions
    return rows


def version_line(versions: str, code_version: str, queue: str = "default") -> str:
    """The row of `history_tool versions` for `code_version` on `queue`."""
    rows = [line for line in version_lines(versions, code_version) if line.split()[1] == queue]
    assert len(rows) == 1, versions
    return rows[0]


# ---------------------------------------------------------------------------
# Old and new side by side
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """Durable tasks that suspend three ways: on a sleep, on an event, on a child."""

    sleepers: list[int]
    waiters: list[int]
    parents: list[int]
    event_keys: list[str]

    @property
    def tasks(self) -> list[int]:
        return self.sleepers + self.waiters + self.parents


def start_batch(
    pool: ConnectionPool, label: str, *, sleep_seconds: float, child_gate: Path | None
) -> Batch:
    keys = [f"{label}-{n}" for n in range(2)]
    return Batch(
        sleepers=[enqueue_durable(pool, "sleeper", {"seconds": sleep_seconds}) for _ in range(2)],
        waiters=[enqueue_durable(pool, "event_waiter", {"key": key}) for key in keys],
        parents=[
            enqueue_durable(
                pool,
                "parent",
                {"child_queue": CHILDREN, "child_gate": str(child_gate) if child_gate else None},
            )
            for _ in range(2)
        ],
        event_keys=keys,
    )


def test_old_and_new_workers_side_by_side_each_claim_only_the_durable_tasks_of_their_version(
    database: LessonDatabase, tmp_path: Path
) -> None:
    """A v1 worker starts six durable tasks (two sleep, two wait for an event, two wait
    for a child) and stops; a v2 worker starts six more (its second worker serves the
    children, held at a gate); a new v1 worker joins it, six more start while both
    run, and everything is woken while both run: the events pushed, the children let
    go, the sleeps over. Every task finishes, and every claim of each was by its own
    version: the first six resume only on the second v1 worker, the next six only on
    v2, the last six each on the version that started it. The children, plain tasks,
    ran on the v2 worker, those of v1 parents too."""
    pool = database.pool
    gate = tmp_path / "children"
    with (
        worker(database, "v1") as old,
        worker(database, "v2", queues=[DEFAULT_QUEUE, CHILDREN]) as new,
        worker(database, "v1") as old_again,
    ):
        old.start()
        on_v1 = start_batch(pool, "v1", sleep_seconds=3.0, child_gate=gate)
        wait_pinned(pool, on_v1.tasks, TaskStatus.SUSPENDED, "v1")
        assert old.stop() == 0

        new.start()
        on_v2 = start_batch(pool, "v2", sleep_seconds=2.0, child_gate=gate)
        wait_pinned(pool, on_v2.tasks, TaskStatus.SUSPENDED, "v2")

        old_again.start()
        on_both = start_batch(pool, "both", sleep_seconds=0.3, child_gate=None)
        wait_until(
            lambda: all(
                get_task(pool, task_id).status == TaskStatus.SUSPENDED
                for task_id in on_both.waiters
            ),
            message="the waiters started while both run did not open their waits",
        )
        for key in on_v1.event_keys + on_v2.event_keys + on_both.event_keys:
            push(pool, key)
        open_gate(gate)
        everything = on_v1.tasks + on_v2.tasks + on_both.tasks
        wait_completed(pool, everything)

        assert_claimed_only_by_their_version(pool, everything, [old, new, old_again])
        for task_id in on_v1.tasks:
            workers = [claim.worker_id for claim in claims_of(pool, task_id)]
            # Started on the first v1 worker; every resume on the second.
            assert len(workers) >= 2 and workers[0] == old.id, (task_id, workers)
            assert set(workers[1:]) == {old_again.id}, (task_id, workers)
        for task_id in on_v2.tasks:
            assert {claim.worker_id for claim in claims_of(pool, task_id)} == {new.id}
        for task_id in on_both.tasks:
            assert get_task(pool, task_id).code_version in ("v1", "v2")
        children = [child for task_id in everything for child in children_of(pool, task_id)]
        assert len(children) == 6
        for child in children:
            task = get_task(pool, child)
            assert (task.status, task.durable, task.code_version) == (
                TaskStatus.COMPLETED,
                False,
                None,
            )
            assert [claim.worker_id for claim in claims_of(pool, child)] == [new.ids[1]]


# ---------------------------------------------------------------------------
# A killed worker's task
# ---------------------------------------------------------------------------


def test_a_killed_v1_workers_durable_task_is_retaken_by_another_v1_worker_never_by_v2(
    database: LessonDatabase, tmp_path: Path
) -> None:
    """A v1 worker is SIGKILLed while a durable task runs. A v2 worker alone sweeps it
    back to the queue (WorkerLost, still pinned to v1), and leaves it there: a durable
    task enqueued behind it starts and finishes on v2 while it stays queued, claimed
    once. A second v1 worker takes it, as attempt 2, and finishes it."""
    pool = database.pool
    gate = tmp_path / "gate"
    with (
        worker(database, "v1") as doomed,
        worker(database, "v2") as new,
        worker(database, "v1") as old_again,
    ):
        doomed.start()
        task_id = enqueue_durable(pool, "gated", {"gate": str(gate)})
        wait_until(lambda: runs_of(pool, task_id), message="the v1 worker never ran the task")
        doomed.kill()

        new.start()
        wait_until(
            lambda: get_task(pool, task_id).status == TaskStatus.QUEUED,
            message="the v2 worker's sweeper did not take the task back",
        )
        taken_back = get_task(pool, task_id)
        assert taken_back.output is not None
        assert taken_back.output["error"]["type"] == "WorkerLost"
        assert (taken_back.attempt, taken_back.code_version) == (1, "v1")

        behind = enqueue_durable(pool, "steps", {"behind": task_id})
        [finished_behind] = wait_completed(pool, [behind])
        assert (finished_behind.code_version, finished_behind.worker_id) == ("v2", new.id)
        left = get_task(pool, task_id)
        assert (left.status, left.attempt, left.code_version) == (TaskStatus.QUEUED, 1, "v1")
        assert [claim.worker_id for claim in claims_of(pool, task_id)] == [doomed.id]
        assert claimed_in_log(new)[task_id] == 0

        open_gate(gate)
        old_again.start()
        [finished] = wait_completed(pool, [task_id])
        assert (finished.attempt, finished.worker_id, finished.code_version) == (
            2,
            old_again.id,
            "v1",
        )
        assert [(claim.attempt, claim.worker_id) for claim in claims_of(pool, task_id)] == [
            (1, doomed.id),
            (2, old_again.id),
        ]
        assert_claimed_only_by_their_version(pool, [task_id, behind], [doomed, new, old_again])


# ---------------------------------------------------------------------------
# Drain
# ---------------------------------------------------------------------------


def start_one_of_each_path(pool: ConnectionPool, label: str) -> dict[str, int]:
    """A new durable task on each path of the claim: keyless, keyed, rate-limited, delayed."""
    return {
        "keyless": enqueue_durable(pool, "steps", {label: "keyless"}),
        "keyed": enqueue_durable(
            pool, "steps", {label: "keyed"}, queue=KEYED, concurrency_key=label
        ),
        "rate-limited": enqueue_durable(
            pool, "steps", {label: "rate-limited"}, rate_limit=RATE_LIMIT
        ),
        "delayed": enqueue_durable(pool, "steps", {label: "delayed"}, delay=0.0),
    }


def test_a_draining_version_starts_no_new_durable_task_finishes_its_own_and_undrain_reverses_it(
    database: LessonDatabase,
) -> None:
    """With v1 draining (`history_tool drain v1`) and its worker alone, new durable tasks
    on every path (keyless, keyed, rate-limited, delayed) wait, unclaimed and unpinned,
    while plain tasks enqueued behind them on the same paths run on that worker, and
    so do its own pinned tasks, woken (a waiter on the keyed queue; a parent, whose
    plain child it runs too). A v2 worker then starts them all, and the new durable
    tasks that come while both run; a v2 task's plain child runs on the draining v1
    worker, the only one serving children. Undrain v1 and drain v2, and new durable
    tasks start on v1 instead. `history_tool versions` says which version drains."""
    pool = database.pool
    with (
        worker(database, "v1", queues=[DEFAULT_QUEUE, KEYED, CHILDREN]) as old,
        worker(database, "v2", queues=[DEFAULT_QUEUE, KEYED]) as new,
    ):
        old.start()
        own_parent = enqueue_durable(
            pool, "waiting_parent", {"key": "own-parent", "child_queue": CHILDREN}
        )
        own_waiter = enqueue_durable(
            pool, "event_waiter", {"key": "own-waiter"}, queue=KEYED, concurrency_key="own"
        )
        wait_pinned(pool, [own_parent, own_waiter], TaskStatus.SUSPENDED, "v1")

        drained = history_tool(database, "drain", "v1")
        assert drained.returncode == 0, drained.stderr
        assert drained.stdout.splitlines() == [
            "version v1 is draining: its workers start no new durable task"
        ]
        waiting = start_one_of_each_path(pool, "drained")
        probes = [
            enqueue_task(pool, "probe", "keyless"),
            enqueue_task(pool, "probe", "keyed", queue=KEYED, concurrency_key="drained"),
            enqueue_task(pool, "probe", "rate-limited", rate_limit=RATE_LIMIT),
            enqueue_task(pool, "probe", "delayed", delay=0.05),
        ]
        for probe in wait_completed(pool, probes):
            assert probe.worker_id in old.ids
        for path, task_id in waiting.items():
            task = get_task(pool, task_id)
            expected = TaskStatus.SUSPENDED if path == "delayed" else TaskStatus.QUEUED
            assert (task.status, task.attempt, task.code_version) == (expected, 0, None), path
            assert claims_of(pool, task_id) == [], path

        # A draining version finishes its own tasks.
        push(pool, "own-parent")
        push(pool, "own-waiter")
        wait_completed(pool, [own_parent, own_waiter])
        [own_child] = children_of(pool, own_parent)
        assert [claim.worker_id for claim in claims_of(pool, own_child)] == [old.ids[2]]
        versions = history_tool(database, "versions")
        assert versions.returncode == 0, versions.stderr
        assert all(row.endswith("draining") for row in version_lines(versions.stdout, "v1")), (
            versions.stdout
        )

        new.start()
        started_on_v2 = wait_completed(pool, waiting.values())
        assert all(task.code_version == "v2" for task in started_on_v2)
        assert all(task.worker_id in new.ids for task in started_on_v2)
        while_both_run = [enqueue_durable(pool, "steps", {"both": n}) for n in range(4)]
        v2_parent = enqueue_durable(pool, "parent", {"child_queue": CHILDREN})
        for task in wait_completed(pool, [*while_both_run, v2_parent]):
            assert (task.code_version, task.worker_id) == ("v2", new.id)
        [v2_child] = children_of(pool, v2_parent)
        assert [claim.worker_id for claim in claims_of(pool, v2_child)] == [old.ids[2]]

        undrained = history_tool(database, "undrain", "v1")
        assert undrained.returncode == 0, undrained.stderr
        assert undrained.stdout.splitlines() == ["version v1 starts new durable tasks again"]
        with pool.connection() as conn:
            drain_version(conn, "v2")
        back_on_v1 = start_one_of_each_path(pool, "undrained")
        for task in wait_completed(pool, back_on_v1.values()):
            assert (task.code_version, task.worker_id in old.ids) == ("v1", True)
        versions = history_tool(database, "versions")
        assert all(row.endswith("serving") for row in version_lines(versions.stdout, "v1")), (
            versions.stdout
        )
        assert all(row.endswith("draining") for row in version_lines(versions.stdout, "v2")), (
            versions.stdout
        )
        again = history_tool(database, "undrain", "v1")
        assert (again.returncode, again.stdout) == (1, "")
        assert again.stderr.strip() == "error: version v1 is not draining"

        assert_claimed_only_by_their_version(
            pool,
            [
                own_parent,
                own_waiter,
                *waiting.values(),
                *while_both_run,
                v2_parent,
                *back_on_v1.values(),
            ],
            [old, new],
        )


# ---------------------------------------------------------------------------
# Move
# ---------------------------------------------------------------------------


def test_moving_a_version_moves_its_unfinished_tasks_only_and_a_moved_task_resumes_on_the_new(
    database: LessonDatabase,
) -> None:
    """A v1 worker finishes one durable task and leaves two waiting for events. With a
    v2 worker beside it, `history_tool move-version --from v1 --to v2` moves the two
    waiting (and says so), not the finished one, which keeps v1. Their events pushed,
    both resume on the v2 worker, though the v1 worker that started them still runs.
    A second move finds nothing to move; a move to the same version is refused."""
    pool = database.pool
    with worker(database, "v1") as old, worker(database, "v2") as new:
        old.start()
        finished = enqueue_durable(pool, "steps", {"finished": True})
        waiters = [enqueue_durable(pool, "event_waiter", {"key": f"move-{n}"}) for n in range(2)]
        wait_completed(pool, [finished])
        wait_pinned(pool, waiters, TaskStatus.SUSPENDED, "v1")
        new.start()

        moved = history_tool(database, "move-version", "--from", "v1", "--to", "v2")
        assert moved.returncode == 0, moved.stderr
        assert moved.stdout.splitlines() == ["moved 2 unfinished task(s) from version v1 to v2"]
        assert get_task(pool, finished).code_version == "v1"
        assert pinned(pool, waiters, TaskStatus.SUSPENDED, "v2")

        for n in range(2):
            push(pool, f"move-{n}")
        for task in wait_completed(pool, waiters):
            assert (task.code_version, task.worker_id) == ("v2", new.id)
            assert [claim.worker_id for claim in claims_of(pool, task.id)] == [old.id, new.id]
            assert [run.pid for run in runs_of(pool, task.id)] == [old.pid, new.pid]
            assert claimed_in_log(old)[task.id] == 1
            assert claimed_in_log(new)[task.id] == 1

        with pool.connection() as conn:
            assert move_to_version(conn, from_version="v1", to_version="v2") == []
            with pytest.raises(ValueError, match="the tasks of version v1 are there already"):
                move_to_version(conn, from_version="v1", to_version="v1")
        assert get_task(pool, finished).code_version == "v1"
        assert_claimed_only_by_their_version(pool, [finished], [old, new])
