"""`--panic=POINT`: a lesson's main.py kills its first worker at any point of its crash
table, and the guarantee still holds; `--panic=list` lists the points; an unknown point
gets one line and exit code 2.

Each run takes 3 to 8 s, so not every point runs here: every point of lesson 07, where
the crash table is the lesson; in lesson 09 the points of what it adds (suspensions,
sleeps, the batched finish); in lessons 10 and 11 a point besides the default.
The default `--panic` runs, and the one README sample of another point (lesson 09's
`finish_attempts:before_commit`), are tests/test_main_scripts.py's runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import pytest

from lessons.lesson07_durable_tasks import main as lesson07
from lessons.lesson09_durable_sleep import main as lesson09
from lessons.lesson10_durable_events import main as lesson10
from lessons.lesson11_retries_replays_forks import main as lesson11
from tests.worker_processes import REPOSITORY_ROOT


@dataclass(frozen=True)
class PanicLesson:
    path: str  # of its main.py, relative to the repository root
    points: Mapping[str, object]  # its PANIC_POINTS
    not_offered: Mapping[str, str]  # its PANIC_POINTS_NOT_OFFERED
    default: str


LESSONS = {
    "lesson07": PanicLesson(
        "lessons/lesson07_durable_tasks/main.py",
        lesson07.PANIC_POINTS,
        {},
        lesson07.DEFAULT_PANIC_POINT,
    ),
    "lesson09": PanicLesson(
        "lessons/lesson09_durable_sleep/main.py",
        lesson09.PANIC_POINTS,
        lesson09.PANIC_POINTS_NOT_OFFERED,
        lesson09.DEFAULT_PANIC_POINT,
    ),
    "lesson10": PanicLesson(
        "lessons/lesson10_durable_events/main.py",
        lesson10.PANIC_POINTS,
        lesson10.PANIC_POINTS_NOT_OFFERED,
        lesson10.DEFAULT_PANIC_POINT,
    ),
    "lesson11": PanicLesson(
        "lessons/lesson11_retries_replays_forks/main.py",
        lesson11.PANIC_POINTS,
        lesson11.PANIC_POINTS_NOT_OFFERED,
        lesson11.DEFAULT_PANIC_POINT,
    ),
}

PANIC_RUNS = [
    *(
        ("lesson07", point)
        for point in lesson07.PANIC_POINTS
        if point != lesson07.DEFAULT_PANIC_POINT
    ),
    ("lesson09", "call:before_commit"),
    ("lesson09", "call:suspended"),
    ("lesson09", "sleep:before_commit"),
    ("lesson09", "sleep:suspended"),
    ("lesson10", "wait_for_event:before_commit"),
    ("lesson11", "wait_for_event:received"),
]


def run_main(lesson: PanicLesson, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPOSITORY_ROOT / lesson.path), *arguments],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
@pytest.mark.parametrize(("name", "point"), PANIC_RUNS, ids=[f"{n}-{p}" for n, p in PANIC_RUNS])
def test_the_guarantee_holds_at_every_panic_point(database_url: str, name: str, point: str) -> None:
    """The run exits 0, reports no FAIL, and killed the first worker where it was asked:
    its narration names the point it set (lesson 09's `all_asleep` is main.py's kill)."""
    completed = run_main(LESSONS[name], f"--panic={point}")
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "The lesson's guarantee held." in completed.stdout
    assert "FAIL" not in completed.stdout
    told = "A is killed (SIGKILL)" if point == "all_asleep" else f"COURSE_CRASH_AT={point}:"
    assert told in completed.stdout.replace("\n  ", " "), completed.stdout


@pytest.mark.parametrize("name", LESSONS)
def test_panic_list_prints_one_line_per_point_and_exits_0(name: str) -> None:
    lesson = LESSONS[name]
    completed = run_main(lesson, "--panic=list")
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [*lesson.points, *lesson.not_offered]
    assert all("not offered" in line for line in lines[len(lesson.points) :])
    assert lesson.default in lesson.points


@pytest.mark.parametrize("name", LESSONS)
@pytest.mark.parametrize("point", ["no_such:point", "sweep:before_commit"])
def test_a_point_not_offered_gets_one_line_listing_the_valid_ones_and_exit_2(
    name: str, point: str
) -> None:
    lesson = LESSONS[name]
    if point in lesson.points:
        pytest.skip(f"{name} offers {point}")
    completed = run_main(lesson, f"--panic={point}")
    assert completed.returncode == 2
    assert completed.stdout == ""
    [line] = completed.stderr.splitlines()
    assert line.startswith(f"error: --panic={point}")
    assert all(valid in line for valid in lesson.points)
