"""A wrong setting is not a bug in the lesson: one line on stderr, exit code 2, no traceback.

Each case runs a real main.py or tool in a process of its own, with the setting a learner
gets wrong, against a real server (or a port where none listens): the line must name what
was tried, without its password, and the one thing to do.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from lessons.common.database import connect

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "hunter2-secret"


@dataclass(frozen=True)
class Failure:
    """How a command ended: its exit code and its standard error."""

    exit_code: int
    stderr: str

    def assert_one_line(self, *expected: str) -> str:
        assert self.exit_code == 2, self.stderr
        assert "Traceback" not in self.stderr
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1, self.stderr
        assert PASSWORD not in self.stderr, "the password must never be printed"
        for text in expected:
            assert text in lines[0]
        return lines[0]


def run(command: list[str], database_url: str) -> Failure:
    """`command` (a main.py, or `-m` and a tool with its arguments) with this DATABASE_URL."""
    completed = subprocess.run(
        [sys.executable, *command],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return Failure(completed.returncode, completed.stderr)


def main_py(lesson_directory: str) -> list[str]:
    return [str(REPOSITORY_ROOT / "lessons" / lesson_directory / "main.py")]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def with_setting(url: str, **changes: str) -> str:
    """The session's server URL with a parameter changed (a role, a database)."""
    return make_conninfo(url, **changes)


def test_a_string_that_is_not_a_url() -> None:
    line = run(main_py("lesson02_simple_task_queue"), "garbage").assert_one_line(
        "at garbage (DATABASE_URL)", "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
    )
    assert "ProgrammingError" not in line


def test_a_malformed_url_quoted_back_without_its_password() -> None:
    run(main_py("lesson03_concurrency_limits"), f"postgresql://me:{PASSWORD}@[::1").assert_one_line(
        "postgresql://me:***@[::1 (DATABASE_URL)", "must look like"
    )


def test_a_port_where_no_server_listens() -> None:
    port = free_port()
    url = f"postgresql://someone:{PASSWORD}@127.0.0.1:{port}/nowhere"
    worker = ["-m", "lessons.lesson04_queue_improvements.tools.worker_process"]
    run(worker, url).assert_one_line(
        f"postgresql://someone:***@127.0.0.1:{port}/nowhere (DATABASE_URL)",
        "Connection refused",
        "start it, or correct the host and port",
    )


def test_a_host_that_does_not_exist() -> None:
    # .invalid never resolves (RFC 6761).
    url = "postgresql://someone@no-such-host.invalid:5432/course"
    push = ["-m", "lessons.lesson10_durable_events.tools.push_event", "approval:A-1", "{}"]
    run(push, url).assert_one_line(
        "postgresql://someone@no-such-host.invalid:5432/course (DATABASE_URL)",
        "correct the host name",
    )


def test_a_role_the_server_does_not_have(database_url: str) -> None:
    role = f"nobody_{uuid.uuid4().hex[:8]}"
    history = ["-m", "lessons.lesson11_retries_replays_forks.tools.history_tool", "list"]
    line = run(history, with_setting(database_url, user=role, password=PASSWORD)).assert_one_line(
        f'role "{role}" does not exist', "has no such role"
    )
    assert "start" not in line.lower(), "the server is up: starting it is the wrong advice"


def test_a_database_the_server_does_not_have(database_url: str) -> None:
    database = f"nowhere_{uuid.uuid4().hex[:8]}"
    url = with_setting(database_url, dbname=database)
    line = run(main_py("lesson07_durable_tasks"), url).assert_one_line(
        f'database "{database}" does not exist', "createdb"
    )
    assert "start" not in line.lower()


@pytest.fixture
def role_without_rights(database_url: str) -> Iterator[str]:
    """A role that may log in, and nothing more: it may not create the lesson's schema."""
    role = f"learner_{uuid.uuid4().hex[:8]}"
    with connect(database_url) as conn:
        try:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        except psycopg.errors.InsufficientPrivilege:
            pytest.skip("the test server's role may not create roles")
    try:
        yield role
    finally:
        with connect(database_url) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_role_that_may_not_create_the_lessons_schema(
    database_url: str, role_without_rights: str
) -> None:
    url = with_setting(database_url, user=role_without_rights, password=PASSWORD)
    database = conninfo_to_dict(url)["dbname"]
    run(main_py("lesson05_durable_event_log"), url).assert_one_line(
        "cannot re-create the lesson's schema",
        f"GRANT CREATE ON DATABASE {database} TO {role_without_rights}",
    )


LESSON_DIRECTORIES = sorted(path.parent.name for path in REPOSITORY_ROOT.glob("lessons/*/main.py"))


@pytest.mark.parametrize("lesson_directory", LESSON_DIRECTORIES)
def test_a_python_without_the_course_is_told_what_to_run(lesson_directory: str) -> None:
    """`python3 lessons/.../main.py` outside .venv: a Python that cannot import the course
    (-S: no site-packages, so neither `lessons` nor psycopg)."""
    completed = subprocess.run(
        [sys.executable, "-I", "-S", *main_py(lesson_directory)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    Failure(completed.returncode, completed.stderr).assert_one_line(
        "make install", f".venv/bin/python lessons/{lesson_directory}/main.py"
    )
