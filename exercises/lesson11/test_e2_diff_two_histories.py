"""`history_tool diff A B`, where two runs part.

A fork's history is its source's up to the fork's event, and its own after it: where
exactly did the fixed code take another path? Add a `diff A B` command that prints,
for each event number of either history, a line `event N: VERDICT`, VERDICT being
`same` (the same call, by its key, with the same output), `other output`, `other
call`, or `only in task T`; then exit 0. The check runs a task, changes a step's
answer (a fix deployed), forks the task at event 2, and reads the tool's lines.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from lessons.lesson11_retries_replays_forks.db.models import TaskStatus
from lessons.lesson11_retries_replays_forks.engine.client import enqueue, wait_for_task
from lessons.lesson11_retries_replays_forks.engine.durable import DurableContext
from lessons.lesson11_retries_replays_forks.engine.reruns import fork
from lessons.lesson11_retries_replays_forks.engine.worker import Worker
from lessons.lesson11_retries_replays_forks.tools import history_tool
from tests.conftest import LessonDatabase

LESSON = "lesson11_retries_replays_forks"
VERDICT = re.compile(r"^event (\d+): (same|other output|other call|only in task \d+)\b")

# What the step `price` answers, in cents: the check raises it between the run and the
# fork, as a deployed fix would (the worker runs in-process).
PRICE = [100]


def quote(ctx: DurableContext, order: dict[str, str]) -> Any:
    """Reserve, price, then ship: by post up to 150 cents, else by courier, insured."""
    ctx.run_step("reserve", lambda step: step, {"order": order["order"]})
    price = ctx.run_step("price", lambda step: {"cents": PRICE[0]}, {"order": order["order"]})
    if price["cents"] <= 150:
        return ctx.run_step("post", lambda step: step, {"order": order["order"]})
    ctx.run_step("courier", lambda step: step, {"order": order["order"]})
    return ctx.run_step("insure", lambda step: step, {"cents": price["cents"]})


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def run_tool(
    database: LessonDatabase, capsys: pytest.CaptureFixture[str], *arguments: str
) -> tuple[int, str, str]:
    """The tool's exit code, its stdout and its stderr."""
    capsys.readouterr()
    try:
        exit_code = history_tool.main(["--schema", database.schema, *arguments])
    except SystemExit as exit:  # argparse refuses a command it does not know
        exit_code = exit.code if isinstance(exit.code, int) else 2
    out, err = capsys.readouterr()
    return exit_code, out, err


def verdicts(output: str) -> dict[int, str]:
    found: dict[int, str] = {}
    for line in output.splitlines():
        match = VERDICT.match(line.strip())
        if match:
            found[int(match[1])] = match[2]
    return found


def test_diff_says_where_a_fork_parts_from_its_source(
    database: LessonDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    PRICE[0] = 100
    with database.pool.connection() as conn:
        source_id = enqueue(conn, "quote", {"order": "A-1"}, durable=True)
    with Worker(
        database.pool,
        {},
        durable_functions={"quote": quote},
        slots=1,
        poll_interval=0.05,
        heartbeat_interval=0.1,
        inactivity_threshold=0.6,
    ):
        source = wait_for_task(database.pool, source_id, timeout=20)
        assert source.status == TaskStatus.COMPLETED, source.output
        PRICE[0] = 200
        with database.pool.connection() as conn:
            fork_id = fork(conn, source_id, at_event=2).id
        forked = wait_for_task(database.pool, fork_id, timeout=20)
    assert forked.status == TaskStatus.COMPLETED, forked.output

    exit_code, out, err = run_tool(database, capsys, "diff", str(source_id), str(fork_id))
    if exit_code != 0:
        pytest.fail(
            f"history_tool diff exited {exit_code}: {err.strip()[-300:]} "
            "(see exercise 2 in lesson 11's README)",
            pytrace=False,
        )
    expected = {1: "same", 2: "other output", 3: "other call", 4: f"only in task {fork_id}"}
    assert verdicts(out) == expected, f"history_tool diff {source_id} {fork_id} printed:\n{out}"

    _, out, _ = run_tool(database, capsys, "diff", str(fork_id), str(source_id))
    assert verdicts(out) == expected, f"history_tool diff {fork_id} {source_id} printed:\n{out}"

    _, out, _ = run_tool(database, capsys, "diff", str(source_id), str(source_id))
    assert verdicts(out) == {1: "same", 2: "same", 3: "same"}, out

    exit_code, out, err = run_tool(database, capsys, "diff", str(source_id), "999999")
    assert exit_code == 1 and "999999" in err and len(err.strip().splitlines()) == 1, (
        f"an unknown task: exit code {exit_code}, stderr {err!r} (expected 1 and one line)"
    )
