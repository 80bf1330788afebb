"""`make diff N=04` shows lesson 04 as the change from lesson 03, and nothing else."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lessons.common.lesson_diff import file_diffs
from tests.worker_processes import REPOSITORY_ROOT

LESSON_03 = REPOSITORY_ROOT / "lessons" / "lesson03_concurrency_limits"
LESSON_04 = REPOSITORY_ROOT / "lessons" / "lesson04_queue_improvements"

# The `---` and `+++` lines that start a file's diff, and the paths they may name: relative
# to the lesson (a/ lesson 03, b/ lesson 04), or /dev/null for a file new in lesson 04.
FILE_HEADER = re.compile(r"^(--- |\+\+\+ )(a/|b/|/dev/null)")
LESSON_PATH = re.compile(
    r"^(--- a/|\+\+\+ b/)((sql|engine|demo|tools)/[a-z_]+\.(py|sql)|main\.py)$"
)


def lesson_diff(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lessons.common.lesson_diff", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_lesson_04_is_its_sql_engine_demo_tools_and_main_with_new_files_whole() -> None:
    completed = lesson_diff("04")
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    headers = [line for line in lines if FILE_HEADER.match(line)]
    for header in headers:
        assert header.endswith(" /dev/null") or LESSON_PATH.match(header), header
    assert headers[:2] == ["--- a/sql/schema.sql", "+++ b/sql/schema.sql"], "schema first"
    assert not any("README" in line or "/db/" in line for line in headers)
    assert "__pycache__" not in completed.stdout
    assert "\033[" not in completed.stdout, "no colour when the output is not a terminal"

    # heartbeat.py is new in lesson 04: shown whole, every line of it added.
    start = lines.index("+++ b/engine/heartbeat.py")
    assert lines[start - 1] == "--- /dev/null"
    heartbeat = (LESSON_04 / "engine" / "heartbeat.py").read_text().splitlines()
    assert lines[start + 2 : start + 2 + len(heartbeat)] == [f"+{line}" for line in heartbeat]


def test_compiled_files_are_left_out(tmp_path: Path) -> None:
    """A learner's Python leaves __pycache__ beside the sources; copies of the lessons get one
    here whatever PYTHONDONTWRITEBYTECODE says."""
    previous, lesson = (shutil.copytree(d, tmp_path / d.name) for d in (LESSON_03, LESSON_04))
    for directory in (previous, lesson):
        (directory / "engine" / "__pycache__").mkdir(exist_ok=True)
        (directory / "engine" / "__pycache__" / "worker.cpython-311.pyc").write_bytes(
            bytes(range(256))
        )
    paths = [path for path, _ in file_diffs(previous, lesson)]
    assert "engine/heartbeat.py" in paths
    assert not [path for path in paths if "__pycache__" in path]


@pytest.mark.parametrize(
    ("number", "says"),
    [
        ("01", "lesson 01 has no engine"),
        ("2", "lesson 02 builds the first engine"),
        ("99", "there is no lesson 99"),
        ("", "say which lesson"),
    ],
)
def test_a_lesson_without_one_before_it_is_one_line_and_exit_code_2(number: str, says: str) -> None:
    completed = lesson_diff(*([number] if number else []))
    assert completed.returncode == 2
    assert completed.stdout == ""
    assert completed.stderr.count("\n") == 1 and completed.stderr.startswith(f"error: {says}")
