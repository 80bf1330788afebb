"""Every lesson's main.py runs its demonstration, checks its guarantee, and exits 0.

A main.py is how a reader meets a lesson (`make demo`, `make lesson N=07 ARGS=--panic`):
each run below is one a reader makes, with what its output must show.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.worker_processes import REPOSITORY_ROOT


@dataclass(frozen=True)
class MainScriptRun:
    """One run of a lesson's main.py, and what its standard output must contain besides
    the verdict every main.py prints."""

    path: str  # relative to the repository root
    arguments: tuple[str, ...] = ()
    prints: tuple[str, ...] = ()

    @property
    def test_id(self) -> str:
        """`lesson07` for a run without arguments, `lesson07-panic` for `--panic`."""
        lesson = Path(self.path).parts[1].split("_", 1)[0]
        return "-".join([lesson, *(argument.lstrip("-") for argument in self.arguments)])


MAIN_SCRIPT_RUNS = [
    MainScriptRun(
        "lessons/lesson01_prerequisites/main.py",
        prints=("Server version: PostgreSQL", "sqlc is installed"),
    ),
    MainScriptRun("lessons/lesson02_simple_task_queue/main.py"),
    MainScriptRun("lessons/lesson03_concurrency_limits/main.py"),
    MainScriptRun("lessons/lesson04_queue_improvements/main.py"),
    MainScriptRun("lessons/lesson05_durable_event_log/main.py"),
    MainScriptRun("lessons/lesson06_non_determinism/main.py"),
    MainScriptRun("lessons/lesson07_durable_tasks/main.py"),
    MainScriptRun("lessons/lesson07_durable_tasks/main.py", arguments=("--panic",)),
    MainScriptRun("lessons/lesson08_listen_notify/main.py"),
    MainScriptRun("lessons/lesson09_durable_sleep/main.py"),
    MainScriptRun("lessons/lesson09_durable_sleep/main.py", arguments=("--panic",)),
    MainScriptRun("lessons/lesson10_durable_events/main.py"),
    MainScriptRun(
        "lessons/lesson11_retries_replays_forks/main.py",
        # The counts the lesson is about, as main.py prints them.
        prints=(
            "ok    after the fork: still one charge, and the fixed email sent",
            "ok    after the replay: the order is charged twice, and a third email sent",
        ),
    ),
]


@pytest.mark.parametrize("run", MAIN_SCRIPT_RUNS, ids=lambda run: run.test_id)
def test_main_checks_its_guarantee_and_exits_0(database_url: str, run: MainScriptRun) -> None:
    """The script exits 0, says that the lesson's guarantee held, reports no FAIL among its
    checks, and prints what the lesson is about."""
    completed = subprocess.run(
        [sys.executable, str(REPOSITORY_ROOT / run.path), *run.arguments],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "The lesson's guarantee held." in completed.stdout
    assert "FAIL" not in completed.stdout
    for expected in run.prints:
        assert expected in completed.stdout
