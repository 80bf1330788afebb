"""Issue 21: the claim's generic plan (lesson 12's PlanOnce), made on an empty table,
must not read the whole of `tasks` once the table has grown.

The poller's own claim connection prepares ClaimTasks while `tasks` is empty (no
statistics: the planner takes the table for ten pages); the table then grows by
rounds of the engine's own statements, claimed on that connection, with no ANALYZE.
The next claim runs with auto_explain on that connection (its plan sent back as a
notice, in JSON), and no sequential scan of `tasks` may have run in it.
"""

from __future__ import annotations

import inspect
from typing import Any

import psycopg

from benchmarks.systems.lesson_engine import LessonEngine
from tests.auto_explain import plans_of, scans_that_ran
from tests.conftest import LessonDatabase

QUEUE = "plans"
TASK = "child"
DURABLE_TASK = "parent"
ROUNDS = 2_000  # tasks the table grows by after the plan was made


def seq_scans_of_tasks_in_a_claim_after_growth(
    package: str, database: LessonDatabase
) -> list[tuple[str, float]]:
    engine = LessonEngine.named(package)
    poller = engine.module("engine.poller")
    with database.pool.connection() as conn:
        worker = engine.register_worker(conn, name="plans", queue=QUEUE)
    claims: psycopg.Connection[Any] = poller.claim_connection(
        database.pool, application_name="plans"
    )

    def claim(max_tasks: int) -> list[Any]:
        return engine.claim(
            claims,
            worker_id=worker,
            queue=QUEUE,
            task_names=[TASK],
            durable_task_names=[DURABLE_TASK],
            max_tasks=max_tasks,
        )

    try:
        # Past psycopg's prepare_threshold: the generic plan is made on the empty table.
        for _ in range(8):
            assert claim(10) == []
        with database.pool.connection() as conn:
            queries = engine.querier(conn)
            for _ in range(ROUNDS):
                create_task(queries)
                (task,) = claim(1)
                engine.finish_completed(conn, worker, [task])
            create_task(queries)
        claimed: list[Any] = []
        documents = plans_of(claims, lambda: claimed.extend(claim(10)))
        assert len(claimed) == 1
        (document,) = [d for d in documents if "ClaimTasks" in d.get("Query Text", "")]
        return [
            (scan["Relation Name"], float(scan["Actual Rows"]))
            for scan in scans_that_ran(document["Plan"])
            if scan["Node Type"] == "Seq Scan" and scan["Relation Name"].startswith("tasks")
        ]
    finally:
        claims.close()


def create_task(queries: Any) -> None:
    known = {
        "queue": QUEUE,
        "task_name": TASK,
        "durable": False,
        "display_name": "plans",
        "input_": {"n": 1},
        "priority": 0,
        "max_retries": 3,
    }
    method = queries.create_task
    parameters = inspect.signature(method).parameters
    method(**{name: known.get(name) for name, p in parameters.items() if p.kind == p.KEYWORD_ONLY})
