"""Lesson 14: pinned code versions, continued (see test_versions.py for how claims are seen).

- Stranded: a version whose workers are all gone, with unfinished tasks, is reported
  STRANDED by `history_tool versions`; its tasks stay as they were (queued, suspended;
  never failed) while a worker of another version runs beside them and sweeps, and a
  worker of their version, started later, finishes them.
- Derived versions: the same module gives the same version in two processes (and the
  digest this process computes); a module whose durable function differs gives another;
  a worker with plain functions only still registers one.
- A fork keeps its source's version, and runs only there; a replay resets it, and the
  task is pinned again by its next first claim.
- Every path of the claim pins the same way: a task taken back from a killed worker on
  the keyed and the rate-limited paths; resumes after a sleep, an event, a child (on a
  keyed queue too); and a delayed start, which goes to a version that is not draining
  and then stays on it.

Real worker processes and the real server.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from lessons.lesson15_operating_at_scale.db.models import TaskStatus
from lessons.lesson15_operating_at_scale.db.queries import Querier
from lessons.lesson15_operating_at_scale.demo import tasks as demo_v1
from lessons.lesson15_operating_at_scale.demo import tasks_v2_patched as demo_v2
from lessons.lesson15_operating_at_scale.engine.client import drain_version, undrain_version
from lessons.lesson15_operating_at_scale.engine.shared import DEFAULT_QUEUE
from lessons.lesson15_operating_at_scale.engine.versions import derived_code_version
from lessons.lesson15_operating_at_scale.engine.worker import Worker
from tests.conftest import LessonDatabase
from tests.lesson15_inherited14 import functions_versions
from tests.lesson15_inherited14.test_versions import (
    CHILDREN,
    KEYED,
    RATE_LIMIT,
    assert_claimed_only_by_their_version,
    children_of,
    claimed_in_log,
    claims_of,
    enqueue_durable,
    enqueue_task,
    get_task,
    history_tool,
    pinned,
    push,
    runs_of,
    version_line,
    versions_database,
    wait_completed,
    wait_pinned,
    wait_until_past,
    worker,
)
from tests.recording import open_gate
from tests.waiting import wait_until


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return versions_database(lesson_database)


# How long the tasks a test's worker leaves sleeping sleep: long enough that it
# is killed first (at once: it is killed as soon as they sleep).
SLEEP_SECONDS = 1.0


def wake_at_of(database: LessonDatabase, task_id: int) -> datetime:
    """The task's wake-up time (its sleep's end, its delayed start), read while it waits."""
    wake_at = get_task(database.pool, task_id).wake_at
    assert wake_at is not None, f"task {task_id} waits for no time"
    return wake_at


# ---------------------------------------------------------------------------
# Stranded
# ---------------------------------------------------------------------------


def test_a_version_with_tasks_and_no_live_worker_is_reported_stranded_and_its_tasks_wait_intact(
    database: LessonDatabase, tmp_path: Path
) -> None:
    """A v1 worker leaves an event waiter and a sleeper suspended and a task running,
    and is SIGKILLed. A v2 worker sweeps the running one back to the queue; the sleep
    ends and the event is pushed; a sleeper enqueued after all that starts, resumes
    and finishes on v2. The v1 tasks are still as they were, queued and suspended,
    none failed, and `history_tool versions` says v1 is STRANDED with three tasks and
    no live worker, v2 serving. A new v1 worker finishes all three, and v1 is no
    longer stranded."""
    pool = database.pool
    gate = tmp_path / "gate"
    with (
        worker(database, "v1") as gone,
        worker(database, "v2") as new,
        worker(database, "v1") as old_again,
    ):
        gone.start()
        waiter = enqueue_durable(pool, "event_waiter", {"key": "stranded"})
        running = enqueue_durable(pool, "gated", {"gate": str(gate)})
        wait_pinned(pool, [waiter], TaskStatus.SUSPENDED, "v1")
        wait_pinned(pool, [running], TaskStatus.RUNNING, "v1")
        wait_until(lambda: runs_of(pool, running), message="the gated task never ran")
        # Last, and killed as soon as it sleeps: its own worker never resumes it.
        sleeper = enqueue_durable(pool, "sleeper", {"seconds": SLEEP_SECONDS})
        wait_pinned(pool, [sleeper], TaskStatus.SUSPENDED, "v1")
        gone.kill()
        sleep_ends = wake_at_of(database, sleeper)

        new.start()
        wait_pinned(pool, [running], TaskStatus.QUEUED, "v1")
        push(pool, "stranded")
        wait_until_past(database, sleep_ends)
        behind = enqueue_durable(pool, "sleeper", {"seconds": 0.05})
        [finished_behind] = wait_completed(pool, [behind])
        assert (finished_behind.code_version, finished_behind.worker_id) == ("v2", new.id)

        stranded = [sleeper, waiter, running]
        assert pinned(pool, [sleeper, waiter], TaskStatus.SUSPENDED, "v1")
        assert pinned(pool, [running], TaskStatus.QUEUED, "v1")
        for task_id in stranded:
            assert [claim.worker_id for claim in claims_of(pool, task_id)] == [gone.id]
            assert claimed_in_log(new)[task_id] == 0
        versions = history_tool(database, "versions")
        assert versions.returncode == 0, versions.stderr
        assert version_line(versions.stdout, "v1").split()[2:4] == ["0", "3"], versions.stdout
        assert version_line(versions.stdout, "v1").endswith("STRANDED: tasks and no live worker"), (
            versions.stdout
        )
        assert version_line(versions.stdout, "v2").split()[2:4] == ["1", "0"], versions.stdout
        assert version_line(versions.stdout, "v2").endswith("serving"), versions.stdout

        open_gate(gate)
        old_again.start()
        for task in wait_completed(pool, stranded):
            assert (task.code_version, task.worker_id) == ("v1", old_again.id)
        versions = history_tool(database, "versions")
        assert "STRANDED" not in versions.stdout, versions.stdout
        assert version_line(versions.stdout, "v1").split()[2:4] == ["1", "0"], versions.stdout
        assert_claimed_only_by_their_version(pool, [*stranded, behind], [gone, new, old_again])


# ---------------------------------------------------------------------------
# Derived versions
# ---------------------------------------------------------------------------

HEX_DIGITS = re.compile(r"[0-9a-f]{12}")


def registered_version(database: LessonDatabase, worker_id: int) -> str:
    with database.pool.connection() as conn:
        row = conn.execute("SELECT code_version FROM workers WHERE id = %s", (worker_id,))
        (version,) = row.fetchone() or (None,)
    assert isinstance(version, str), version
    return version


def test_a_derived_version_is_the_same_for_the_same_code_and_another_for_changed_code(
    database: LessonDatabase,
) -> None:
    """Two worker processes with the same functions module and no declared version
    register the same version, the digest this process computes of that module's
    durable functions (twelve hex digits), and each takes the other's tasks: a task
    started on one resumes on the other. A process with the shop's version 2, whose
    durable function's source differs from version 1's, registers another version,
    its own digest. A worker with plain functions only registers a version too, and
    runs its tasks."""
    pool = database.pool
    expected = derived_code_version(functions_versions.DURABLE_FUNCTIONS)
    assert HEX_DIGITS.fullmatch(expected)
    with (
        worker(database, None) as first,
        worker(database, None) as second,
        worker(database, None, functions=demo_v2.__name__) as shop_v2,
    ):
        first.start()
        task_id = enqueue_durable(pool, "event_waiter", {"key": "derived"})
        wait_pinned(pool, [task_id], TaskStatus.SUSPENDED, expected)
        assert first.stop() == 0
        second.start()
        shop_v2.start()
        assert first.code_version == second.code_version == expected
        assert registered_version(database, first.id) == expected
        assert registered_version(database, second.id) == expected
        push(pool, "derived")
        [finished] = wait_completed(pool, [task_id])
        assert (finished.code_version, finished.worker_id) == (expected, second.id)

        shop_v1_version = derived_code_version(demo_v1.DURABLE_FUNCTIONS)
        assert shop_v2.code_version == derived_code_version(demo_v2.DURABLE_FUNCTIONS)
        assert registered_version(database, shop_v2.id) == shop_v2.code_version
        assert len({expected, shop_v1_version, shop_v2.code_version}) == 3
        assert_claimed_only_by_their_version(pool, [task_id], [first, second, shop_v2])

    plain_only = Worker(
        pool,
        {"probe": functions_versions.probe},
        slots=1,
        poll_interval=0.1,
        heartbeat_interval=0.1,
        inactivity_threshold=1.0,
    )
    with plain_only:
        assert plain_only.code_version == derived_code_version({})
        assert plain_only.code_version is not None and HEX_DIGITS.fullmatch(plain_only.code_version)
        assert registered_version(database, plain_only.id) == plain_only.code_version
        probe = enqueue_task(pool, "probe", "plain only")
        [ran] = wait_completed(pool, [probe])
        assert (ran.worker_id, ran.code_version) == (plain_only.id, None)


# ---------------------------------------------------------------------------
# Fork and replay
# ---------------------------------------------------------------------------

FORK_LINE = re.compile(r"task (?P<id>\d+) \(steps\) is a fork of task (?P<source>\d+) at event 2")


def test_a_fork_keeps_its_sources_version_and_a_replay_resets_it(
    database: LessonDatabase,
) -> None:
    """A durable task finishes on v1, and v1's worker stops. `history_tool fork --at 2`
    makes a fork pinned to v1 (the history it copies was written by v1's code);
    `history_tool replay` puts the task back on the queue with no version. A v2
    worker then runs the replayed task from scratch, pinned to v2 now, and a task
    enqueued behind the fork, and leaves the fork queued; a v1 worker finishes it."""
    pool = database.pool
    with (
        worker(database, "v1") as old,
        worker(database, "v2") as new,
        worker(database, "v1") as old_again,
    ):
        old.start()
        source = enqueue_durable(pool, "steps", {"source": True})
        wait_completed(pool, [source])
        assert get_task(pool, source).code_version == "v1"
        assert old.stop() == 0

        forked = history_tool(database, "fork", str(source), "--at", "2")
        assert forked.returncode == 0, forked.stderr
        match = FORK_LINE.match(forked.stdout)
        assert match is not None and int(match["source"]) == source, forked.stdout
        fork = int(match["id"])
        assert pinned(pool, [fork], TaskStatus.QUEUED, "v1")
        replayed = history_tool(database, "replay", str(source))
        assert replayed.returncode == 0, replayed.stderr
        task = get_task(pool, source)
        assert (task.status, task.code_version) == (TaskStatus.QUEUED, None)

        new.start()
        behind = enqueue_durable(pool, "steps", {"behind": fork})
        for task in wait_completed(pool, [source, behind]):
            assert (task.code_version, task.worker_id) == ("v2", new.id)
        assert pinned(pool, [fork], TaskStatus.QUEUED, "v1")
        assert claims_of(pool, fork) == []

        old_again.start()
        [finished_fork] = wait_completed(pool, [fork])
        assert (finished_fork.code_version, finished_fork.worker_id) == ("v1", old_again.id)
        # The fork replayed the copied event 1 and ran event 2 itself.
        with pool.connection() as conn:
            events = Querier(conn).list_task_events(task_id=fork)
        assert [(event.event_number, event.copied_from_task_id) for event in events] == [
            (1, source),
            (2, None),
        ]
        # The replayed task's claims: v1 before the replay, v2 after it.
        assert [claim.worker_version for claim in claims_of(pool, source)] == ["v1", "v2"]
        assert_claimed_only_by_their_version(pool, [fork, behind], [old, new, old_again])


# ---------------------------------------------------------------------------
# The paths of the claim
# ---------------------------------------------------------------------------


def test_tasks_taken_back_from_a_killed_v1_worker_wait_for_v1_on_the_keyed_and_rate_limited_paths(
    database: LessonDatabase, tmp_path: Path
) -> None:
    """A v1 worker runs three durable tasks, one keyed, one rate-limited, one both, and
    is SIGKILLed. A v2 worker takes them back to the queue, pinned to v1, and passes
    them over: a durable task enqueued behind each, on the same key or rate limit,
    starts and finishes on v2 (each key takes one task at a time, so v2's claim had
    the key's slot and chose the later task). A second v1 worker finishes the three."""
    pool = database.pool
    gate = tmp_path / "gate"
    queues = [DEFAULT_QUEUE, KEYED]
    with (
        worker(database, "v1", queues=queues) as doomed,
        worker(database, "v2", queues=queues) as new,
        worker(database, "v1", queues=queues) as old_again,
    ):
        doomed.start()
        lanes = {
            "keyed": {"queue": KEYED, "concurrency_key": "k"},
            "rate-limited": {"rate_limit": RATE_LIMIT},
            "keyed and rate-limited": {
                "queue": KEYED,
                "concurrency_key": "k-rated",
                "rate_limit": RATE_LIMIT,
            },
        }
        killed = {
            lane: enqueue_durable(pool, "gated", {"gate": str(gate)}, **options)
            for lane, options in lanes.items()
        }
        wait_pinned(pool, list(killed.values()), TaskStatus.RUNNING, "v1")
        wait_until(
            lambda: all(runs_of(pool, task_id) for task_id in killed.values()),
            message="the v1 worker did not run all three",
        )
        doomed.kill()

        new.start()
        wait_pinned(pool, list(killed.values()), TaskStatus.QUEUED, "v1")
        behind = {
            lane: enqueue_durable(pool, "steps", {"behind": lane}, **options)
            for lane, options in lanes.items()
        }
        for task in wait_completed(pool, behind.values()):
            assert (task.code_version, task.worker_id in new.ids) == ("v2", True)
        assert pinned(pool, list(killed.values()), TaskStatus.QUEUED, "v1")
        for lane, task_id in killed.items():
            assert [claim.worker_id for claim in claims_of(pool, task_id)] == [
                doomed.ids[1] if lane.startswith("keyed") else doomed.ids[0]
            ], lane
            assert claimed_in_log(new)[task_id] == 0, lane

        open_gate(gate)
        old_again.start()
        for task in wait_completed(pool, killed.values()):
            assert (task.attempt, task.code_version, task.worker_id in old_again.ids) == (
                2,
                "v1",
                True,
            )
        assert_claimed_only_by_their_version(
            pool, [*killed.values(), *behind.values()], [doomed, new, old_again]
        )


def test_resumes_of_v1_tasks_wait_for_v1_after_a_sleep_an_event_and_a_child(
    database: LessonDatabase,
) -> None:
    """A v1 worker leaves four durable tasks suspended: a sleeper, an event waiter, an
    event waiter on the keyed queue (which gave its key's slot back), and a parent of a
    plain child on a queue nobody serves yet, and is SIGKILLed; a v2 worker alone serves all
    three queues: it runs the child, which wakes the parent; the events are pushed
    and the sleep ends. Sleepers enqueued after that on both queues resume and finish
    on v2, and the four are still suspended, claimed once. A v1 worker finishes them."""
    pool = database.pool
    queues = [DEFAULT_QUEUE, KEYED, CHILDREN]
    with (
        worker(database, "v1", queues=[DEFAULT_QUEUE, KEYED]) as old,
        worker(database, "v2", queues=queues) as new,
        worker(database, "v1", queues=[DEFAULT_QUEUE, KEYED]) as old_again,
    ):
        old.start()
        waiter = enqueue_durable(pool, "event_waiter", {"key": "resume"})
        keyed_waiter = enqueue_durable(
            pool, "event_waiter", {"key": "resume-keyed"}, queue=KEYED, concurrency_key="k"
        )
        parent = enqueue_durable(pool, "parent", {"child_queue": CHILDREN})
        wait_pinned(pool, [waiter, keyed_waiter, parent], TaskStatus.SUSPENDED, "v1")
        # Last, and killed as soon as it sleeps: its own worker never resumes it.
        sleeper = enqueue_durable(pool, "sleeper", {"seconds": SLEEP_SECONDS})
        wait_pinned(pool, [sleeper], TaskStatus.SUSPENDED, "v1")
        old.kill()
        sleep_ends = wake_at_of(database, sleeper)
        suspended = [sleeper, waiter, keyed_waiter, parent]

        new.start()
        push(pool, "resume")
        push(pool, "resume-keyed")
        [child] = children_of(pool, parent)
        [ran_child] = wait_completed(pool, [child])
        assert ran_child.worker_id == new.ids[2]
        wait_until_past(database, sleep_ends)
        behind = [
            enqueue_durable(pool, "sleeper", {"seconds": 0.05}),
            enqueue_durable(pool, "sleeper", {"seconds": 0.05}, queue=KEYED, concurrency_key="k"),
        ]
        for task in wait_completed(pool, behind):
            assert (task.code_version, task.worker_id in new.ids) == ("v2", True)
        assert pinned(pool, suspended, TaskStatus.SUSPENDED, "v1")
        with pool.connection() as conn:
            now = Querier(conn).database_now()
        for task_id in suspended:
            assert now is not None and wake_at_of(database, task_id) < now, "not due"
            assert [claim.worker_id for claim in claims_of(pool, task_id)] in (
                [old.ids[0]],
                [old.ids[1]],
            )

        old_again.start()
        for task in wait_completed(pool, suspended):
            assert (task.code_version, task.worker_id in old_again.ids) == ("v1", True)
        assert_claimed_only_by_their_version(pool, [*suspended, *behind], [old, new, old_again])


def test_a_delayed_durable_task_starts_on_a_version_that_is_not_draining_and_stays_on_it(
    database: LessonDatabase,
) -> None:
    """With v1 draining and its worker alone, a durable task delayed until a time
    (`run_at`) is not started when its time comes: a plain task delayed until later
    starts and finishes on v1 while the durable one waits, unpinned, at attempt 0. A
    v2 worker starts it (pinned to v2 now) and it sleeps; the v2 worker is SIGKILLed, v1 is
    undrained, and when the sleep is over a durable task started on v1 after that
    resumes and finishes there while the delayed one waits. A new v2 worker finishes it."""
    pool = database.pool
    with (
        worker(database, "v1") as old,
        worker(database, "v2") as new,
        worker(database, "v2") as new_again,
    ):
        old.start()
        with pool.connection() as conn:
            drain_version(conn, "v1")
            now = Querier(conn).database_now()
        assert now is not None
        delayed = enqueue_durable(
            pool, "sleeper", {"seconds": SLEEP_SECONDS}, run_at=now + timedelta(seconds=0.2)
        )
        probe = enqueue_task(pool, "probe", "later", run_at=now + timedelta(seconds=0.4))
        [ran_probe] = wait_completed(pool, [probe])
        assert ran_probe.worker_id == old.id
        waiting = get_task(pool, delayed)
        assert (waiting.status, waiting.attempt, waiting.code_version) == (
            TaskStatus.SUSPENDED,
            0,
            None,
        )
        assert claims_of(pool, delayed) == []

        new.start()
        wait_until(
            lambda: (
                (task := get_task(pool, delayed)).status == TaskStatus.SUSPENDED
                and task.attempt == 1
            ),
            message="the v2 worker did not start the delayed task",
        )
        new.kill()  # as soon as the task sleeps: it never resumes it
        assert get_task(pool, delayed).code_version == "v2"
        sleep_ends = wake_at_of(database, delayed)
        with pool.connection() as conn:
            assert undrain_version(conn, "v1")
        wait_until_past(database, sleep_ends)
        behind = enqueue_durable(pool, "sleeper", {"seconds": 0.05})
        [finished_behind] = wait_completed(pool, [behind])
        assert (finished_behind.code_version, finished_behind.worker_id) == ("v1", old.id)
        assert pinned(pool, [delayed], TaskStatus.SUSPENDED, "v2")
        assert [claim.worker_id for claim in claims_of(pool, delayed)] == [new.id]

        new_again.start()
        [finished] = wait_completed(pool, [delayed])
        assert (finished.code_version, finished.worker_id) == ("v2", new_again.id)
        assert_claimed_only_by_their_version(pool, [delayed, behind], [old, new, new_again])
