"""Durable commits.

The engine's every promise rests on "committed means kept". main.py must check that
`fsync` is on and that the session's `synchronous_commit` is not `off`, and FAIL
(exit 1) naming the setting when it is. The check runs main.py twice: as it is, where
it must pass, and with `PGOPTIONS="-c synchronous_commit=off"`, where it must FAIL
with a line naming `synchronous_commit`.
"""

from __future__ import annotations

import os
import subprocess
import sys

from exercises import REPOSITORY_ROOT, expect

MAIN = REPOSITORY_ROOT / "lessons" / "lesson01_prerequisites" / "main.py"


def run_main(**environment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(MAIN)],
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_main_fails_when_commits_are_not_durable(database_url: str) -> None:
    normal = run_main()
    expect(
        normal.returncode == 0,
        f"main.py should still pass on a server with durable commits; it exited "
        f"{normal.returncode}:\n{normal.stdout}{normal.stderr}",
    )
    unsafe = run_main(PGOPTIONS="-c synchronous_commit=off")
    expect(
        unsafe.returncode == 1,
        f"with synchronous_commit=off main.py exited {unsafe.returncode}, not 1: "
        f"see exercise 1 in lesson 01's README\n{unsafe.stdout}{unsafe.stderr}",
    )
    fail_lines = [line for line in unsafe.stdout.splitlines() if "FAIL" in line]
    expect(
        any("synchronous_commit" in line for line in fail_lines),
        f"main.py failed, but no FAIL line names synchronous_commit: {fail_lines}",
    )
