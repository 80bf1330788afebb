"""Several learners on one shared server: COURSE_LEARNER gives each their own schemas.

Lesson NN uses the schema `lesson_NN`, and its main.py drops and re-creates it on
every run; with COURSE_LEARNER=ana it is `lesson_NN_ana`. Here two learners run the
same lesson at the same time on one database, and the tools and worker processes
they start without `--schema` find their own schema, by the environment they inherit.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from psycopg import sql

from lessons.common.cli import Lesson
from lessons.common.database import connect, drop_schema
from tests.conftest import LESSONS_DIRECTORY
from tests.worker_processes import REPOSITORY_ROOT, environment_for_children

LESSON = "lesson11_retries_replays_forks"
MAIN_SCRIPT = REPOSITORY_ROOT / "lessons" / LESSON / "main.py"
TOOLS = f"lessons.{LESSON}.tools"


@pytest.fixture
def learners(database_url: str) -> Iterator[list[str]]:
    """Two learner names no other run uses; their lesson 11 schemas are dropped after."""
    suffix = uuid.uuid4().hex[:8]
    names = [f"ana_{suffix}", f"ben_{suffix}"]
    yield names
    for name in names:
        drop_schema(f"lesson_11_{name}", url=database_url)


def as_learner(learner: str, database_url: str) -> dict[str, str]:
    return environment_for_children(DATABASE_URL=database_url, COURSE_LEARNER=learner)


def test_two_learners_run_the_same_lesson_at_once_each_in_their_own_schema(
    database_url: str, learners: list[str]
) -> None:
    runs = [
        subprocess.Popen(
            [sys.executable, str(MAIN_SCRIPT)],
            env=as_learner(learner, database_url),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for learner in learners
    ]
    outputs = [run.communicate(timeout=180)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output
        assert "The lesson's guarantee held." in output

    with connect(database_url) as conn:
        for learner in learners:
            # main.py checks its counts in its own schema: a schema the other learner's
            # run had dropped or written to would have failed those checks.
            orders = conn.execute(
                sql.SQL("SELECT count(*) FROM {}.tasks WHERE task_name = 'process_order'").format(
                    sql.Identifier(f"lesson_11_{learner}")
                )
            ).fetchone()
            assert orders is not None and orders[0] > 0


def test_a_tool_started_without_schema_finds_the_learners_schema(
    database_url: str, learners: list[str]
) -> None:
    ana, ben = learners
    environment = as_learner(ana, database_url)
    main = subprocess.run(
        [sys.executable, str(MAIN_SCRIPT)], env=environment, capture_output=True, timeout=180
    )
    assert main.returncode == 0, main.stdout + main.stderr

    listing = subprocess.run(
        [sys.executable, "-m", f"{TOOLS}.history_tool", "list"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    assert "process_order" in listing.stdout

    # Ben has run nothing yet: the same command, as Ben, finds no tables.
    as_ben = subprocess.run(
        [sys.executable, "-m", f"{TOOLS}.history_tool", "list"],
        env=as_learner(ben, database_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert as_ben.returncode == 2
    assert f"schema lesson_11_{ben} has no tasks table" in as_ben.stderr


def test_a_worker_process_started_without_schema_registers_in_the_learners_schema(
    database_url: str, learners: list[str]
) -> None:
    ana = learners[0]
    environment = as_learner(ana, database_url)
    main = subprocess.run(
        [sys.executable, str(MAIN_SCRIPT)], env=environment, capture_output=True, timeout=180
    )
    assert main.returncode == 0, main.stdout + main.stderr

    worker = subprocess.Popen(
        [sys.executable, "-m", f"{TOOLS}.worker_process", "--queue=orders"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None
        readable, _, _ = select.select([worker.stdout], [], [], 30)
        line = worker.stdout.readline() if readable else ""
        words = line.split()
        assert words[:1] == ["worker"] and words[2:] == ["ready"], line
        with connect(database_url) as conn:
            registered = conn.execute(
                sql.SQL("SELECT count(*) FROM {}.workers WHERE id = %s").format(
                    sql.Identifier(f"lesson_11_{ana}")
                ),
                (int(words[1]),),
            ).fetchone()
        assert registered == (1,)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.communicate()


@pytest.mark.parametrize("learner", ["Ana", "ana-1", "a" * 21, "ana; DROP SCHEMA"])
@pytest.mark.parametrize(
    "command",
    [
        [str(MAIN_SCRIPT)],
        ["-m", f"{TOOLS}.worker_process"],
        ["-m", f"{TOOLS}.history_tool", "list"],
    ],
    ids=["main", "worker_process", "history_tool"],
)
def test_a_learner_name_that_cannot_name_a_schema_is_one_line_and_exit_2(
    database_url: str, learner: str, command: list[str]
) -> None:
    completed = subprocess.run(
        [sys.executable, *command],
        env={**os.environ, "DATABASE_URL": database_url, "COURSE_LEARNER": learner},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert completed.stderr.startswith("error: COURSE_LEARNER=")
    assert len(completed.stderr.strip().splitlines()) == 1, completed.stderr


def test_the_longest_learner_name_leaves_room_for_every_lessons_channels(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lessons 08 on refuse a schema whose NOTIFY channels would pass 63 bytes
    (tests/lesson08/test_long_schema_names.py): a learner name of 20 characters,
    the most COURSE_LEARNER takes, is accepted by all of them."""
    monkeypatch.setenv("COURSE_LEARNER", "a" * 20)
    for schema_sql in sorted(LESSONS_DIRECTORY.glob("lesson[0-9][0-9]_*/sql/schema.sql")):
        lesson = Lesson(schema_sql.parents[1])
        assert lesson.schema == f"lesson_{lesson.number}_{'a' * 20}"
        try:
            lesson.reset()
        finally:
            drop_schema(lesson.schema, url=database_url)
