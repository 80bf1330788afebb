"""A bad slot count is a usage error, not a traceback.

`worker_process --slots 0` (or -3) is a mistake like a misspelled option, and should
be refused like one: a short message on standard error, exit code 2, before the
worker connects to anything. The check runs the worker process with `--slots 0` and
`--slots -3`: each must exit 2, print no traceback, and say "slot" on standard error.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from exercises import REPOSITORY_ROOT, expect
from tests.conftest import LessonDatabase

LESSON = "lesson03_concurrency_limits"


@pytest.mark.parametrize("slots", ["0", "-3"])
def test_the_worker_process_refuses_a_slot_count_below_one(
    lesson_database: Callable[..., LessonDatabase], slots: str
) -> None:
    database = lesson_database(LESSON)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            f"lessons.{LESSON}.tools.worker_process",
            f"--schema={database.schema}",
            f"--slots={slots}",
        ],
        cwd=REPOSITORY_ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        # A worker that accepted the count would run until stopped.
        timeout=30,
        check=False,
    )
    expect(
        "Traceback" not in run.stderr,
        f"--slots {slots} ended in a traceback: see exercise 2 in lesson 03's README\n{run.stderr}",
    )
    expect(run.returncode == 2, f"--slots {slots} exited {run.returncode}, not 2:\n{run.stderr}")
    expect("slot" in run.stderr.lower(), f"the refusal should say 'slot':\n{run.stderr}")
