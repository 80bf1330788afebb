"""Lesson 11's main.py runs its demonstration, checks its guarantee, and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.worker_processes import REPOSITORY_ROOT

MAIN = REPOSITORY_ROOT / "lessons" / "lesson11_retries_replays_forks" / "main.py"


def test_main_checks_its_guarantee_and_exits_0(database_url: str) -> None:
    completed = subprocess.run(
        [sys.executable, str(MAIN)],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "The lesson's guarantee held." in completed.stdout
    assert "FAIL" not in completed.stdout
    # The counts the lesson is about, as main.py prints them.
    for claim in (
        "after the fork: still one charge, and the fixed email sent",
        "after the replay: the order is charged twice, and a third email sent",
    ):
        assert f"ok    {claim}" in completed.stdout
