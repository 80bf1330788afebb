"""Fork with another input.

A task that ran with a wrong input (a mistyped email address) can only be forked with
the same one. Give the tool's `fork` an `--input JSON` option: the fork runs on that
input instead of the source's. The check runs a two-step task, forks it at event 2
with another email address, and asserts that the fork has the new input, replayed
event 1 and ran event 2 with the new address; the tool says so in a line and exits 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from lessons.lesson11_retries_replays_forks.db.models import TaskStatus
from lessons.lesson11_retries_replays_forks.db.queries import Querier
from lessons.lesson11_retries_replays_forks.engine.client import enqueue, wait_for_task
from lessons.lesson11_retries_replays_forks.engine.durable import DurableContext
from lessons.lesson11_retries_replays_forks.engine.worker import Worker
from tests.conftest import LessonDatabase
from tests.waiting import wait_until

LESSON = "lesson11_retries_replays_forks"
TOOL = "lessons.lesson11_retries_replays_forks.tools.history_tool"


def reserve_then_email(ctx: DurableContext, order: dict[str, str]) -> Any:
    reservation = ctx.run_step("reserve", lambda step: step, {"order": order["order"]})
    email = ctx.run_step("email", lambda step: step, {"to": order["email"]})
    return [reservation, email]


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def history_tool(database: LessonDatabase, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", TOOL, "--schema", database.schema, *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ,
    )


def test_a_fork_runs_on_the_input_it_was_given(database: LessonDatabase) -> None:
    old = {"order": "A-1", "email": "ada@exmaple.com"}
    new = {"order": "A-1", "email": "ada@example.com"}
    with database.pool.connection() as conn:
        source_id = enqueue(conn, "reserve_then_email", old, durable=True)
    with Worker(
        database.pool,
        {},
        durable_functions={"reserve_then_email": reserve_then_email},
        slots=1,
        poll_interval=0.05,
        heartbeat_interval=0.1,
        inactivity_threshold=0.6,
    ):
        source = wait_for_task(database.pool, source_id, timeout=20)
        assert source.status == TaskStatus.COMPLETED, source.output
        result = history_tool(
            database, "fork", str(source_id), "--at", "2", "--input", json.dumps(new)
        )
        if result.returncode != 0:
            pytest.fail(
                f"history_tool fork --input exited {result.returncode}: {result.stderr.strip()}"
                " (see exercise 1 in lesson 11's README)",
                pytrace=False,
            )
        with database.pool.connection() as conn:
            forks = wait_until(
                lambda: Querier(conn).list_forks(task_id=source_id),
                message="the tool created no fork",
            )
        [forked] = forks
        task = wait_for_task(database.pool, forked.id, timeout=20)
    assert task.input == new, f"the fork runs on {task.input}, not on the input given"
    assert task.status == TaskStatus.COMPLETED, task.output
    assert task.output == [{"order": "A-1"}, {"to": "ada@example.com"}]
    with database.pool.connection() as conn:
        events = Querier(conn).list_task_events(task_id=task.id)
    assert [(event.name, event.copied_from_task_id) for event in events] == [
        ("reserve", source_id),
        ("email", None),
    ]
