"""A role that may create schemas.

Every lesson resets a schema of its own (`lesson_02`, ...), and every test creates
one: a role without the CREATE privilege on the database would fail there, with a
traceback, in the middle of a later lesson. main.py must check it up front, and FAIL
(exit 1) with a line that says "schema". The check runs main.py as a fresh role that
has no such privilege, and as the usual one, where it must pass.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from exercises import REPOSITORY_ROOT, expect
from lessons.common.database import connect

MAIN = REPOSITORY_ROOT / "lessons" / "lesson01_prerequisites" / "main.py"


@pytest.fixture
def role_without_create(database_url: str) -> Iterator[str]:
    """The URL of a new login role that may connect but not create schemas."""
    role = f"exercise_{uuid.uuid4().hex[:10]}"
    with connect(database_url) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        yield make_conninfo(database_url, user=role)
    finally:
        with connect(database_url) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def run_main(database_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(MAIN)],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_main_fails_for_a_role_that_cannot_create_schemas(
    database_url: str, role_without_create: str
) -> None:
    with connect(database_url) as conn:
        row = conn.execute("SELECT has_database_privilege(current_database(), 'CREATE')").fetchone()
    if not (row and row[0]):
        pytest.skip("the server's usual role cannot create schemas either")
    normal = run_main(database_url)
    expect(
        normal.returncode == 0,
        f"main.py should still pass for a role that may create schemas; it exited "
        f"{normal.returncode}:\n{normal.stdout}{normal.stderr}",
    )
    limited = run_main(role_without_create)
    expect(
        limited.returncode == 1,
        f"for a role without CREATE on the database main.py exited {limited.returncode}, "
        f"not 1: see exercise 2 in lesson 01's README\n{limited.stdout}{limited.stderr}",
    )
    fail_lines = [line for line in limited.stdout.splitlines() if "FAIL" in line]
    expect(
        any("schema" in line.lower() for line in fail_lines),
        f"main.py failed, but no FAIL line says 'schema': {fail_lines}",
    )
