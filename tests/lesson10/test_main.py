"""Lesson 10's main.py runs its demonstration, checks its guarantee, and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.worker_processes import REPOSITORY_ROOT

MAIN = REPOSITORY_ROOT / "lessons" / "lesson10_durable_events" / "main.py"


@pytest.mark.parametrize("arguments", [[]], ids=lambda arguments: " ".join(arguments) or "default")
def test_main_checks_its_guarantee_and_exits_0(database_url: str, arguments: list[str]) -> None:
    completed = subprocess.run(
        [sys.executable, str(MAIN), *arguments],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "The lesson's guarantee held." in completed.stdout
    assert "FAIL" not in completed.stdout
