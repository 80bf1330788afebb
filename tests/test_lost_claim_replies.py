"""A claim whose answer is lost (claims.py, lessons 04-16): its tasks run again, on a
live worker, and lose none of their retries; and a claim whose answer is only late,
or a task that runs for many beats, is never taken for lost.

A claim commits on the server and answers over the network. When the answer is
lost, the database says the tasks run on this worker, and this worker never
heard of them; it is alive, so no sweep takes them back. Its heartbeat must find
them (owned, never received) and give them back to the queue.

On the real server with a real worker, each way in: the poller's claim commits
and then raises the error a dead connection raises (a first claim, and from
lesson 09 on a claim that resumes a suspended task at the same attempt); a task
marked running for the worker behind its back (the state a lost answer leaves,
whatever the path). Every task has max_retries=0: had the lost claim cost an
attempt, it would fail. The function counts its runs: a claim given back while
its answer was still on its way, or while its task ran, would run it twice.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import psycopg
import pytest

from tests.conftest import LESSONS_DIRECTORY, LessonDatabase

# Every lesson from 04 on, whose workers hold leases: any added later is covered too.
LESSONS_WITH_LEASES = sorted(
    path.name
    for path in LESSONS_DIRECTORY.glob("lesson[0-9][0-9]_*")
    if path.name >= "lesson04"  # two-digit numbers: names sort as their lessons do
)

QUEUE = "lost-claims"
HEARTBEAT_INTERVAL = 0.1

# The runs of the functions below in this test, by the input's "n".
runs: list[Any] = []


@pytest.fixture(autouse=True)
def no_runs_yet() -> None:
    runs.clear()


def echo(value: dict[str, Any]) -> Any:
    runs.append(value["n"])
    return value


def slow_echo(value: dict[str, Any]) -> Any:
    runs.append(value["n"])
    time.sleep(value["seconds"])
    return value


def sleep_between_two_steps(ctx: Any, value: dict[str, Any]) -> Any:
    """A durable function whose sleep makes its task suspend, then be resumed."""
    ctx.run_step("before", echo, value)
    ctx.sleep(value["seconds"])
    return ctx.run_step("after", echo, value)


@pytest.fixture(params=LESSONS_WITH_LEASES)
def lesson(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def engine(lesson: str, module: str) -> ModuleType:
    return importlib.import_module(f"lessons.{lesson}.engine.{module}")


@pytest.fixture
def database(lesson: str, lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(lesson)


def live_worker(lesson: str, database: LessonDatabase, **settings: Any) -> Any:
    """A worker with a short lease: it beats every 0.1 s, and stays alive throughout."""
    return engine(lesson, "worker").Worker(
        database.pool,
        {"echo": echo, "slow_echo": slow_echo},
        queue=QUEUE,
        slots=2,
        poll_interval=0.02,
        **{"heartbeat_interval": HEARTBEAT_INTERVAL, "inactivity_threshold": 2.0, **settings},
    )


def claims_patched(
    lesson: str, monkeypatch: pytest.MonkeyPatch, answer: Callable[[Any, list[Any]], None]
) -> None:
    """Every claim of the worker's poller commits, then passes its connection and its
    tasks to `answer`, which may raise (the answer is lost) or wait (it is late). Call it
    before the worker starts: its first claim must already be the patched one."""
    poller = engine(lesson, "poller")

    class ClaimsWithAnswers(poller.Querier):  # type: ignore[name-defined,misc]
        def claim_tasks(self, **arguments: Any) -> Any:
            tasks = super().claim_tasks(**arguments)
            if not self._conn.autocommit:
                self._conn.commit()
            answer(self._conn, tasks)
            return tasks

    monkeypatch.setattr(poller, "Querier", ClaimsWithAnswers)


def lose_the_answer() -> None:
    raise psycopg.OperationalError("server closed the connection unexpectedly")


def enqueue(lesson: str, database: LessonDatabase, name: str, value: Any, **options: Any) -> int:
    with database.pool.connection() as conn:
        task_id = engine(lesson, "client").enqueue(
            conn, name, value, queue=QUEUE, max_retries=0, **options
        )
    return int(task_id)


def finished(lesson: str, database: LessonDatabase, task_id: int) -> Any:
    return engine(lesson, "client").wait_for_task(database.pool, task_id, timeout=15)


def mark_claimed_behind_the_workers_back(conn: Any, task_id: int, worker_id: int) -> None:
    """What a claim's UPDATE leaves, with no answer to anyone. Run it in the enqueue's
    own transaction, so that the worker's poller never sees the task queued."""
    conn.execute(
        "UPDATE tasks SET status = 'running', attempt = attempt + 1, worker_id = %s,"
        " started_at = now(), schedule_deadline = NULL WHERE id = %s",
        (worker_id, task_id),
    )


def attempts_charged(task: Any) -> int:
    """The attempts that count against max_retries (lesson 05 on: not the infrastructure's)."""
    return int(task.attempt - getattr(task, "infrastructure_attempts", 0))


def test_a_claim_that_committed_and_lost_its_answer_gives_its_task_back(
    lesson: str, database: LessonDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    lost: list[int] = []

    def lose_the_first(conn: Any, tasks: list[Any]) -> None:
        if tasks and not lost:
            lost.extend(task.id for task in tasks)
            lose_the_answer()

    claims_patched(lesson, monkeypatch, lose_the_first)
    with live_worker(lesson, database):
        task_id = enqueue(lesson, database, "echo", {"n": 1})
        task = finished(lesson, database, task_id)
    assert lost == [task_id]
    assert (task.status, task.output) == ("completed", {"n": 1}), task
    assert attempts_charged(task) == 1, task
    assert runs == [1]


@pytest.mark.parametrize("lesson", [name for name in LESSONS_WITH_LEASES if name >= "lesson12"])
def test_a_rate_limited_claim_that_lost_its_answer_is_granted_again(
    lesson: str, database: LessonDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From lesson 12 on a claim can take a rate limit's units, and set the task's
    started_at to its grant. The lost claim's units stay spent (the limit errs on the
    side of fewer starts); the task, given back, is granted again and runs once."""
    lost: list[int] = []

    def lose_the_first(conn: Any, tasks: list[Any]) -> None:
        if tasks and not lost:
            lost.extend(task.id for task in tasks)
            lose_the_answer()

    with database.pool.connection() as conn:
        engine(lesson, "client").set_rate_limit(conn, "lost-claims", 10, 1.0)
    claims_patched(lesson, monkeypatch, lose_the_first)
    with live_worker(lesson, database):
        task_id = enqueue(lesson, database, "echo", {"n": 7}, rate_limit="lost-claims")
        task = finished(lesson, database, task_id)
    assert lost == [task_id]
    assert (task.status, task.output) == ("completed", {"n": 7}), task
    assert attempts_charged(task) == 1, task
    assert runs == [7]
    with database.pool.connection() as conn:
        row = conn.execute(
            "SELECT cardinality(granted_at) FROM rate_limits WHERE name = 'lost-claims'"
        ).fetchone()
    assert row == (2,), "one grant for the lost claim, one for the claim that ran"


@pytest.mark.parametrize("lesson", [name for name in LESSONS_WITH_LEASES if name >= "lesson09"])
def test_a_claim_that_resumed_a_task_and_lost_its_answer_gives_it_back(
    lesson: str, database: LessonDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From lesson 09 on a claim resumes a suspended task at the attempt it suspended:
    the same attempt, claimed twice. The second claim's answer is lost, soon after
    the first was received, with no beat in between (a beat every second): the
    heartbeat must tell the two claims apart."""
    claimed: set[int] = set()
    lost: list[int] = []

    def lose_the_resume(conn: Any, tasks: list[Any]) -> None:
        resumed = [task.id for task in tasks if task.id in claimed]
        claimed.update(task.id for task in tasks)
        if resumed and not lost:
            lost.extend(resumed)
            lose_the_answer()

    claims_patched(lesson, monkeypatch, lose_the_resume)
    worker = live_worker(
        lesson,
        database,
        heartbeat_interval=1.0,
        inactivity_threshold=5.0,
        durable_functions={"sleep_between_two_steps": sleep_between_two_steps},
    )
    with worker:
        task_id = enqueue(
            lesson, database, "sleep_between_two_steps", {"n": 3, "seconds": 0.01}, durable=True
        )
        task = finished(lesson, database, task_id)
    assert lost == [task_id]
    assert (task.status, task.output) == ("completed", {"n": 3, "seconds": 0.01}), task
    assert attempts_charged(task) == 1, task
    assert runs == [3, 3], "each step runs once"


def test_a_claim_whose_answer_is_late_is_not_taken_for_lost(
    lesson: str, database: LessonDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first claim's answer arrives five beats late: every beat meanwhile finds
    the task owned and never received, with that claim on its way. Given back, the
    task would run twice: once for the late answer, once for its next claim."""
    delayed: list[int] = []

    def delay_the_first(conn: Any, tasks: list[Any]) -> None:
        if tasks and not delayed:
            delayed.extend(task.id for task in tasks)
            time.sleep(5 * HEARTBEAT_INTERVAL)

    claims_patched(lesson, monkeypatch, delay_the_first)
    with live_worker(lesson, database):
        task_id = enqueue(lesson, database, "echo", {"n": 4})
        task = finished(lesson, database, task_id)
    assert delayed == [task_id]
    assert (task.status, task.attempt) == ("completed", 1), task
    assert getattr(task, "infrastructure_attempts", 0) == 0, task
    assert runs == [4]


def test_a_task_that_runs_for_many_beats_is_not_given_back(
    lesson: str, database: LessonDatabase
) -> None:
    with live_worker(lesson, database):
        task_id = enqueue(
            lesson, database, "slow_echo", {"n": 5, "seconds": 10 * HEARTBEAT_INTERVAL}
        )
        task = finished(lesson, database, task_id)
    assert (task.status, task.attempt) == ("completed", 1), task
    assert getattr(task, "infrastructure_attempts", 0) == 0, task
    assert runs == [5]


def test_a_task_owned_by_a_live_worker_that_never_received_it_runs_again(
    lesson: str, database: LessonDatabase
) -> None:
    with live_worker(lesson, database) as worker:
        with database.pool.connection() as conn, conn.transaction():
            task_id = engine(lesson, "client").enqueue(
                conn, "echo", {"n": 2}, queue=QUEUE, max_retries=0
            )
            mark_claimed_behind_the_workers_back(conn, task_id, worker.id)
        task = finished(lesson, database, task_id)
    assert (task.status, task.output) == ("completed", {"n": 2}), task
    assert attempts_charged(task) == 1, task
    assert runs == [2]


@pytest.mark.parametrize("lesson", [name for name in LESSONS_WITH_LEASES if name >= "lesson14"])
def test_a_durable_task_given_back_before_its_first_event_is_pinned_to_no_version(
    lesson: str, database: LessonDatabase
) -> None:
    """From lesson 14 on a claim pins a durable task to the claiming worker's code
    version. A claim lost before the task wrote any history ran no code: given back,
    the task must be free for any version, here a worker of another version than the
    one the lost claim pinned it to."""
    worker = live_worker(
        lesson,
        database,
        durable_functions={"sleep_between_two_steps": sleep_between_two_steps},
    )
    with worker:
        with database.pool.connection() as conn, conn.transaction():
            task_id = engine(lesson, "client").enqueue(
                conn,
                "sleep_between_two_steps",
                {"n": 6, "seconds": 0.01},
                queue=QUEUE,
                max_retries=0,
                durable=True,
            )
            mark_claimed_behind_the_workers_back(conn, task_id, worker.id)
            conn.execute(
                "UPDATE tasks SET code_version = 'a version no worker runs' WHERE id = %s",
                (task_id,),
            )
        task = finished(lesson, database, task_id)
    assert task.status == "completed", task
    assert task.code_version != "a version no worker runs", task
    assert runs == [6, 6]
