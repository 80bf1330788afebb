"""A move that checks first: `history_tool move-version --check-with MODULE`.

`move-version` moves a version's unfinished durable tasks on the operator's
word that the new code replays them; one forgotten `history_tool check`, and
every task moved fails on its next claim. Add `--check-with MODULE` to
`move-version`: before moving, replay every task it would move against the
module's durable functions (the determinism check), and if any would break,
refuse (exit 1) with an error that names each breaking task and its event,
and move nothing; if all replay, move them all (exit 0). The check holds four
orders of version v1 at a wait, two paid by card and two by invoice, on a
worker of its own: checked against code that changes the card's charge at
event 2, the move is refused, the refusal names both card orders with event
2, and no invoice order as breaking, and all four stay on v1; checked against
the same change behind a patch marker, all four move to v2.
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from collections.abc import Callable

import pytest

from exercises import expect
from exercises.lesson14 import orders_v1
from lessons.lesson14_changing_code_safely.db.models import EventKind, TaskStatus
from lessons.lesson14_changing_code_safely.db.queries import Querier
from lessons.lesson14_changing_code_safely.engine.client import enqueue
from lessons.lesson14_changing_code_safely.engine.worker import Worker
from lessons.lesson14_changing_code_safely.tools import history_tool
from tests.conftest import LessonDatabase
from tests.waiting import wait_until

LESSON = "lesson14_changing_code_safely"
ORDERS = "exercises.lesson14"
BREAKING_AT = 2  # the card's charge: event 1 is "take order"


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON)


def has_check_with_option() -> bool:
    """Whether `move-version` takes `--check-with` (argparse exits on an unknown option)."""
    arguments = ["move-version", "--from", "v1", "--to", "v2", "--check-with", f"{ORDERS}.x"]
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            history_tool.parser().parse_args(arguments)
        except SystemExit:
            return False
    return True


def move_checked(database: LessonDatabase, module: str) -> subprocess.CompletedProcess[str]:
    """`history_tool move-version --from v1 --to v2 --check-with MODULE`, as an operator runs it."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            f"lessons.{LESSON}.tools.history_tool",
            f"--schema={database.schema}",
            "move-version",
            "--from=v1",
            "--to=v2",
            f"--check-with={module}",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def versions(database: LessonDatabase, task_ids: list[int]) -> dict[int, str | None]:
    with database.pool.connection() as conn:
        queries = Querier(conn)
        return {
            task_id: task.code_version if (task := queries.get_task(id=task_id)) else None
            for task_id in task_ids
        }


def waiting_for_go_ahead(database: LessonDatabase, task_ids: list[int]) -> bool:
    with database.pool.connection() as conn:
        queries = Querier(conn)
        for task_id in task_ids:
            task = queries.get_task(id=task_id)
            events = queries.list_task_events(task_id=task_id)
            if task is None or task.status != TaskStatus.SUSPENDED:
                return False
            if not any(event.kind == EventKind.WAIT for event in events):
                return False
    return True


def lines_naming(output: str, task_id: int) -> list[str]:
    return [line for line in output.splitlines() if re.search(rf"\btask {task_id}\b", line)]


def test_a_move_checked_first_is_refused_whole_or_made_whole(database: LessonDatabase) -> None:
    expect(
        has_check_with_option(),
        "lesson 14's history_tool move-version has no `--check-with MODULE` option yet: "
        "see exercise 1 in its README",
    )
    worker = Worker(
        database.pool,
        {},
        durable_functions=orders_v1.DURABLE_FUNCTIONS,
        code_version="v1",
        slots=4,
        poll_interval=0.05,
        heartbeat_interval=0.1,
        inactivity_threshold=1.0,
        run_schedules=False,
    )
    with worker:
        with database.pool.connection() as conn:
            orders = {
                order_id: enqueue(
                    conn,
                    "settle",
                    {
                        "order_id": order_id,
                        "pay_by": pay_by,
                        "amount_cents": 4900,
                        "currency": "EUR",
                    },
                    durable=True,
                )
                for order_id, pay_by in (
                    ("C-1", "card"),
                    ("I-1", "invoice"),
                    ("C-2", "card"),
                    ("I-2", "invoice"),
                )
            }
        all_ids = sorted(orders.values())
        by_card = [orders["C-1"], orders["C-2"]]
        by_invoice = [orders["I-1"], orders["I-2"]]
        wait_until(
            lambda: waiting_for_go_ahead(database, all_ids),
            message="the four v1 orders never came to wait for their go-ahead",
        )
        assert set(versions(database, all_ids).values()) == {"v1"}, versions(database, all_ids)

        refused = move_checked(database, f"{ORDERS}.orders_v2_unsafe")
        output = refused.stdout + refused.stderr
        expect(
            refused.returncode == 1,
            f"move-version checked against code that breaks the card orders should be "
            f"refused with exit status 1; it exited {refused.returncode}:\n{output}",
        )
        expect(
            set(versions(database, all_ids).values()) == {"v1"},
            f"a refused move must move no task, not even those that replay: versions "
            f"{versions(database, all_ids)}",
        )
        for task_id in by_card:
            expect(
                any(
                    re.search(rf"\bevent {BREAKING_AT}\b", line)
                    for line in lines_naming(output, task_id)
                ),
                f"the refusal should name task {task_id}, which breaks, with its event "
                f"(event {BREAKING_AT}), on one line (`task {task_id} ... event "
                f"{BREAKING_AT}`):\n{output}",
            )
        for task_id in by_invoice:
            expect(
                not any("break" in line for line in lines_naming(output, task_id)),
                f"the refusal names task {task_id} as breaking, but it replays:\n{output}",
            )

        moved = move_checked(database, f"{ORDERS}.orders_v2_patched")
        output = moved.stdout + moved.stderr
        expect(
            moved.returncode == 0,
            f"move-version checked against code that replays every order should move "
            f"them (exit status 0); it exited {moved.returncode}:\n{output}",
        )
        expect(
            set(versions(database, all_ids).values()) == {"v2"},
            f"a move whose check passed should move every unfinished task of v1 to v2: "
            f"versions {versions(database, all_ids)}\n{output}",
        )
