"""`history_tool flow`, run as a real subprocess: it shows each concurrency key's slots
taken against its limit with its tasks waiting, and each rate limit's units left in
its window now, as the claims left them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

from lessons.lesson12_flow_control.db.queries import Querier
from lessons.lesson12_flow_control.engine.client import (
    enqueue,
    set_concurrency_limit,
    set_rate_limit,
)
from tests.conftest import LessonDatabase

LESSON = "lesson12_flow_control"
TOOL = f"lessons.{LESSON}.tools.history_tool"


def run_tool(database: LessonDatabase, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", TOOL, "--schema", database.schema, *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DATABASE_URL": database.url},
    )


def test_flow_shows_slots_taken_tasks_waiting_and_units_left(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    database = lesson_database(LESSON)
    with database.pool.connection() as conn:
        set_concurrency_limit(conn, "tenants", 2)
        set_rate_limit(conn, "payment_api", 10, 60)
        for _ in range(5):
            enqueue(conn, "work", {}, queue="tenants", concurrency_key="noisy")
        enqueue(conn, "work", {}, queue="tenants", concurrency_key="quiet")
        for _ in range(3):
            enqueue(conn, "charge", {}, queue="tenants", rate_limit="payment_api", rate_units=2)
        queries = Querier(conn)
        worker = queries.register_worker(name="test", queue="tenants", slots=10, lease_seconds=30)
        assert worker is not None
        claimed = queries.claim_tasks(
            worker_id=worker.id,
            queue="tenants",
            task_names=["work", "charge"],
            durable_task_names=[],
            max_tasks=10,
            max_keys_visited=10,
        )
    # noisy: 2 of 5 (its limit), quiet: 1 of 1, charges: 3 of 3 (6 units of 10).
    assert len(claimed) == 6

    result = run_tool(database, "flow")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "concurrency keys (busiest first):"
    assert lines[1].split() == ["queue", "key", "running", "limit", "queued"]
    assert lines[2].split() == ["tenants", "noisy", "2", "2", "3"]
    assert lines[3].split() == ["tenants", "quiet", "1", "2", "0"]
    assert lines[4] == "rate limits:"
    assert lines[5].split() == ["name", "units", "per", "left", "now"]
    assert lines[6].split() == ["payment_api", "10", "60", "s", "4"]


def test_flow_says_none_when_nothing_is_limited(
    lesson_database: Callable[..., LessonDatabase],
) -> None:
    database = lesson_database(LESSON)

    result = run_tool(database, "flow")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "concurrency keys (busiest first):",
        "  none",
        "rate limits:",
        "  none",
    ]
