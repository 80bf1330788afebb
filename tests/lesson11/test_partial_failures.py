"""Lesson 11 under partial failures: durable orders through a database outage, and a
rolling deploy of a durable function.

Real worker processes and the real server, as in lesson 04's tests of the same
guarantees (tests/lesson04/test_partial_failures.py). The outage goes through a
TCP proxy (tests/database_proxy.py) that the workers connect to, so that the
database vanishes for them while the server itself stays up for the test.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from psycopg_pool import ConnectionPool

from lessons.lesson11_retries_replays_forks.db.models import TaskStatus
from lessons.lesson11_retries_replays_forks.db.queries import Querier
from lessons.lesson11_retries_replays_forks.demo.tasks import ORDERS_QUEUE
from lessons.lesson11_retries_replays_forks.engine.client import enqueue, wait_for_task
from lessons.lesson11_retries_replays_forks.tools.worker_process import WorkerProcess
from tests.conftest import LessonDatabase
from tests.database_proxy import DatabaseProxy
from tests.lesson11.functions import arrival_file
from tests.lesson11.helpers import LESSON, all_tasks, history

FUNCTIONS_MODULE = "tests.lesson11.functions"

# What the poller logs of each claim: "claimed 2 task(s): [4, 7]".
CLAIMED = re.compile(r"claimed \d+ task\(s\): \[([\d, ]+)\]")


def worker(
    database: LessonDatabase,
    *,
    heartbeat_interval: float,
    inactivity_threshold: float,
    functions: str = FUNCTIONS_MODULE,
    slots: int = 2,
    database_url: str | None = None,
) -> WorkerProcess:
    """A worker process on the orders queue that logs the engine's events,
    optionally through a proxy."""
    return WorkerProcess(
        schema=database.schema,
        queues=[ORDERS_QUEUE],
        functions=functions,
        slots=slots,
        poll_interval=0.05,
        heartbeat_interval=heartbeat_interval,
        inactivity_threshold=inactivity_threshold,
        verbose=True,
        environment={"DATABASE_URL": database_url} if database_url else None,
    )


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON, max_size=8)


@pytest.fixture
def proxy(database_url: str) -> Iterator[DatabaseProxy]:
    with DatabaseProxy(database_url) as running:
        yield running


def leases_all_renewed(pool: ConnectionPool, worker_ids: list[int]) -> bool:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT bool_and(lease_expires_at > now()) FROM workers WHERE id = ANY(%s)",
            (worker_ids,),
        ).fetchone()
    return bool(row and row[0])


def at_the_gate(gate: Path, order_id: str) -> bool:
    """Whether the order runs its gate step. Not "running, its history empty": that holds
    from the claim on, while the worker may still be reading the history, and an
    outage then ends that attempt as the infrastructure's (rightly, but not the
    moment these tests are about)."""
    return Path(arrival_file(str(gate), order_id)).exists()


def test_an_outage_of_three_leases_loses_no_durable_order_and_charges_each_once(
    database: LessonDatabase, tmp_path: Path, proxy: DatabaseProxy
) -> None:
    """Four workers (heartbeat 0.2 s, lease 1 s), each running a durable order
    held at a gate, with no retries left. The database is out of their reach for
    3 s, three whole leases. When it is back, the first worker to beat again
    finds every other lease expired, but must not take their orders: each
    worker is alive and about to go on with its own. Every order completes on
    attempt 1, charged and confirmed once, and no result is rejected."""
    pool = database.pool
    gate = tmp_path / "gate"
    workers = [
        worker(database, heartbeat_interval=0.2, inactivity_threshold=1.0, database_url=proxy.url)
        for _ in range(4)
    ]
    order_ids = [f"OUT-{n}" for n in range(4)]
    with ExitStack() as stack:
        for process in workers:
            stack.enter_context(process).start()
        with pool.connection() as conn:
            ids = [
                enqueue(
                    conn,
                    "order_at_gate",
                    {
                        "order_id": order_id,
                        "card": "4242",
                        "email": "ada@example.com",
                        "gate": str(gate),
                    },
                    queue=ORDERS_QUEUE,
                    durable=True,
                    max_retries=0,
                )
                for order_id in order_ids
            ]
        wait_for = time.monotonic() + 20
        while not all(at_the_gate(gate, order_id) for order_id in order_ids):
            assert time.monotonic() < wait_for, "the orders did not all reach the gate"
            time.sleep(0.02)

        proxy.cut()
        time.sleep(3.0)  # the outage itself: three leases of every worker
        proxy.restore()
        deadline = time.monotonic() + 20
        while not leases_all_renewed(pool, [process.id for process in workers]):
            assert time.monotonic() < deadline, "the workers did not all renew their leases"
            time.sleep(0.02)
        gate.touch()

        finished = [wait_for_task(pool, task_id, timeout=60) for task_id in ids]
        logs = "\n".join(process.log() for process in workers)
        for task in finished:
            assert (task.status, task.attempt) == (TaskStatus.COMPLETED, 1), (task, logs)
        with pool.connection() as conn:
            queries = Querier(conn)
            charges = Counter(charge.order_id for charge in queries.list_charges())
            emails = Counter(email.order_id for email in queries.list_emails())
        assert charges == Counter(order_ids), "each order charged once"
        assert emails == Counter(order_ids), "each order confirmed once"
        assert "result rejected" not in logs
        assert "worker lost" not in logs
        for process in workers:
            assert process.stop() == 0, process.log()


def test_old_and_new_workers_during_a_rolling_deploy_of_a_durable_function(
    database: LessonDatabase,
) -> None:
    """Two old workers, which lack the durable function `new_kind`, and one new
    worker, which has it, share a queue holding durable tasks of both kinds. An
    old worker neither starts a new kind of task nor resumes one (a new-kind
    task waits for its child, suspended, then is resumed): every task completes
    on its first attempt, and each new-kind task was always run by the new worker."""
    pool = database.pool
    old = [
        worker(
            database,
            heartbeat_interval=0.1,
            inactivity_threshold=1.0,
            functions="tests.lesson11.functions_before_deploy",
        )
        for _ in range(2)
    ]
    new = worker(database, heartbeat_interval=0.1, inactivity_threshold=1.0)
    with ExitStack() as stack:
        for process in [*old, new]:
            stack.enter_context(process).start()
        kinds = ["record_nothing", "new_kind"] * 10
        with pool.connection() as conn:
            ids = [
                enqueue(conn, kind, {"n": n}, queue=ORDERS_QUEUE, durable=True)
                for n, kind in enumerate(kinds)
            ]
        finished = [wait_for_task(pool, task_id, timeout=30) for task_id in ids]
        for kind, task in zip(kinds, finished, strict=True):
            assert (task.status, task.attempt) == (TaskStatus.COMPLETED, 1), task
            if kind == "new_kind":
                assert task.worker_id == new.id, task
                assert task.output == {"new": {"n": task.input["n"]}}
        new_ids = {task.id for task in finished if task.task_name == "new_kind"}
        children = [task for task in all_tasks(pool) if task.parent_id in new_ids]
        assert len(children) == len(new_ids), "each new-kind task spawned one child"
        claimed_by_old = {
            int(task_id)
            for process in old
            for claimed in CLAIMED.findall(process.log())
            for task_id in claimed.split(", ")
        }
        assert not claimed_by_old & new_ids, "an old worker claimed a task of the new kind"
        for process in [*old, new]:
            assert process.stop() == 0, process.log()


def test_a_blip_while_an_order_records_its_step_costs_no_rerun_and_no_retry(
    database: LessonDatabase, tmp_path: Path, proxy: DatabaseProxy
) -> None:
    """One durable order, `max_retries=0`, its worker's connections cut for 2 s
    (threshold 10 s: no worker looks dead) at the moment its gate step returns and
    its event is written. The durable context tries its statements again through
    the blip: the order completes on attempt 1, charged and confirmed once."""
    pool = database.pool
    gate = tmp_path / "gate"
    with worker(
        database, heartbeat_interval=0.5, inactivity_threshold=10.0, database_url=proxy.url
    ) as process:
        process.start()
        with pool.connection() as conn:
            task_id = enqueue(
                conn,
                "order_at_gate",
                {
                    "order_id": "BLIP-1",
                    "card": "4242",
                    "email": "ada@example.com",
                    "gate": str(gate),
                },
                queue=ORDERS_QUEUE,
                durable=True,
                max_retries=0,
            )
        deadline = time.monotonic() + 20
        while not at_the_gate(gate, "BLIP-1"):
            assert time.monotonic() < deadline, "the order did not reach the gate"
            time.sleep(0.02)
        proxy.cut()
        gate.touch()  # the step returns now, and its event meets the cut
        time.sleep(2.0)  # the blip itself, not a wait for work
        proxy.restore()
        task = wait_for_task(pool, task_id, timeout=60)
        log = process.log()
    assert (task.status, task.attempt) == (TaskStatus.COMPLETED, 1), (task, log)
    assert task.infrastructure_attempts == 0
    with pool.connection() as conn:
        queries = Querier(conn)
        charges = Counter(charge.order_id for charge in queries.list_charges())
        emails = Counter(email.order_id for email in queries.list_emails())
    assert charges == Counter(["BLIP-1"]) and emails == Counter(["BLIP-1"])
    assert [(event.event_number, event.attempt) for event in history(pool, task_id)] == [
        (1, 1),
        (2, 1),
        (3, 1),
    ]
    assert "again in" in log  # the cut was met, and ridden out
