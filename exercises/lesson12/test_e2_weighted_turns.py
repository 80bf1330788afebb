"""Weighted turns: `set_key_weight(conn, queue, key, weight)`.

A tenant on the bigger plan should get more of the workers than one on the small
plan, while both have work waiting, without starving either. Add `set_key_weight`
to engine/client.py: a `weight` column on concurrency_keys (default 1), and a claim
that gives a key of weight w w turns per round: its n-th task of a claim has turn
ceil(n / w). The check gives gold weight 2 and silver the default, enqueues 40
tasks of each under a limit too high to bind, and claims by hand, 6 tasks at a
time (two rounds of 2 + 1), as a worker with 6 free slots would: of the first 30
tasks started, 20 (±1) are gold's and 10 (±1) silver's, and every claim takes some
of each.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from exercises import expect
from lessons.lesson12_flow_control.db.queries import Querier
from lessons.lesson12_flow_control.engine import client
from lessons.lesson12_flow_control.engine.client import enqueue, set_concurrency_limit
from tests.conftest import LessonDatabase

LESSON = "lesson12_flow_control"
QUEUE = "reports"
TASKS_PER_KEY = 40
CLAIM_SIZE = 6
STARTS_COUNTED = 30


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def claim_by_hand(database: LessonDatabase, claims: int) -> list[list[str]]:
    """The keys of the tasks each of `claims` claims of CLAIM_SIZE started, in claim
    order, by one registered worker (whose walk goes on from claim to claim)."""
    started: list[list[str]] = []
    with database.pool.connection() as conn:
        queries = Querier(conn)
        worker = queries.register_worker(
            name="exercise", queue=QUEUE, slots=CLAIM_SIZE, lease_seconds=60
        )
        assert worker is not None
        for _ in range(claims):
            claimed = queries.claim_tasks(
                worker_id=worker.id,
                queue=QUEUE,
                task_names=["work"],
                durable_task_names=[],
                max_tasks=CLAIM_SIZE,
                max_keys_visited=200,
            )
            started.append(sorted(task.concurrency_key or "" for task in claimed))
    return started


def test_a_key_of_weight_2_starts_two_tasks_for_each_of_a_key_of_weight_1(
    database: LessonDatabase,
) -> None:
    set_key_weight: Callable[..., Any] | None = getattr(client, "set_key_weight", None)
    expect(
        set_key_weight is not None,
        "lesson 12's engine/client.py has no `set_key_weight` yet: see exercise 2 in its README",
    )
    assert set_key_weight is not None
    with database.pool.connection() as conn:
        set_concurrency_limit(conn, QUEUE, 100)
        set_key_weight(conn, QUEUE, "gold", 2)
        for _ in range(TASKS_PER_KEY):
            for key in ("gold", "silver"):
                enqueue(conn, "work", {}, queue=QUEUE, concurrency_key=key)

    claims = claim_by_hand(database, STARTS_COUNTED // CLAIM_SIZE)

    starts = [key for claim in claims for key in claim][:STARTS_COUNTED]
    assert len(starts) == STARTS_COUNTED, f"the claims started only {len(starts)} tasks: {claims}"
    counts = Counter(starts)
    expect(
        abs(counts["gold"] - 20) <= 1 and abs(counts["silver"] - 10) <= 1,
        f"of the first {STARTS_COUNTED} tasks started, gold (weight 2) had {counts['gold']} "
        f"and silver (weight 1) {counts['silver']}, not 20 and 10 (±1); the claims took "
        f"{claims}",
    )
    assert all({"gold", "silver"} <= set(claim) for claim in claims), (
        f"a claim took the tasks of one key only: {claims}"
    )
