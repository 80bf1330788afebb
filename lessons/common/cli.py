"""The shape every lesson's `main.py` shares: logging, a lesson's identity, checks.

A `main.py` ends by *checking* its lesson's guarantee. `Checks` collects those
checks, prints each one as it is made, and decides the exit code.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from psycopg_pool import ConnectionPool

from lessons.common.database import DatabaseUnavailable, create_pool, reset_schema

EXIT_GUARANTEE_BROKEN = 1
EXIT_NO_DATABASE = 2
EXIT_USAGE = 2

# What `--panic=list` asks for instead of a crash point.
LIST_PANIC_POINTS = "list"

LESSON_DIRECTORY_NAME = re.compile(r"^lesson[0-9]{2}_")

# On a shared classroom server each learner sets COURSE_LEARNER, and lesson NN
# lives in the schema lesson_NN_<learner>: two learners never drop each other's
# tables. Child processes inherit the variable, so a worker process or a tool
# started without --schema finds the same schema as the main.py that started it.
LEARNER_VARIABLE = "COURSE_LEARNER"
# At most 20 characters keeps every name built from the schema within
# PostgreSQL's 63 bytes: lesson 08's NOTIFY channels need a schema name of 48
# bytes at most (51 from lesson 09 on), and a listener's application_name is
# "<schema> worker <id> listener".
LEARNER_NAME = re.compile(r"^[a-z0-9_]{1,20}$")


@dataclass(frozen=True)
class Lesson:
    """A lesson directory such as `lessons/lesson02_simple_task_queue/`."""

    directory: Path

    @classmethod
    def of(cls, file: str) -> Lesson:
        """The lesson that `file` (the `__file__` of a module of that lesson) belongs to."""
        for directory in Path(file).resolve().parents:
            if LESSON_DIRECTORY_NAME.match(directory.name):
                return cls(directory)
        raise ValueError(f"{file} is not inside a lesson directory")

    @property
    def package(self) -> str:
        """The lesson's Python package, such as `lessons.lesson02_simple_task_queue`."""
        return f"lessons.{self.directory.name}"

    @property
    def number(self) -> str:
        return self.directory.name.removeprefix("lesson")[:2]

    @property
    def schema(self) -> str:
        """Each lesson lives in its own Postgres schema, so lessons never see each other;
        with COURSE_LEARNER set, each learner has their own schema of each lesson."""
        learner = learner_name()
        return f"lesson_{self.number}" if learner is None else f"lesson_{self.number}_{learner}"

    @property
    def schema_sql(self) -> Path:
        return self.directory / "sql" / "schema.sql"

    def reset(self) -> None:
        reset_schema(self.schema, self.schema_sql)

    def pool(self, *, max_size: int = 4) -> ConnectionPool:
        return create_pool(self.schema, max_size=max_size)


def learner_name() -> str | None:
    """COURSE_LEARNER, or None when it is unset or empty.

    A value that cannot be part of a schema name ends the process with one line
    and exit code 2, like a missing database: it is read wherever a lesson's
    schema is (a main.py, a worker process, a tool's --schema default), before
    any of them has anything to clean up.
    """
    learner = os.environ.get(LEARNER_VARIABLE, "")
    if not learner:
        return None
    if not LEARNER_NAME.match(learner):
        print(
            f"error: {LEARNER_VARIABLE}={learner!r} cannot name a schema: use 1 to 20 "
            "lower-case letters, digits and _, such as ana or learner_07",
            file=sys.stderr,
        )
        sys.exit(EXIT_NO_DATABASE)
    return learner


@dataclass
class Checks:
    """The guarantees a lesson checks at the end of its demonstration."""

    failures: list[str] = field(default_factory=list)

    def check(self, holds: bool, claim: str, detail: str = "") -> bool:
        if holds:
            print(f"  ok    {claim}")
        else:
            print(f"  FAIL  {claim}" + (f": {detail}" if detail else ""))
            self.failures.append(claim)
        return holds

    @property
    def passed(self) -> bool:
        return not self.failures


def wait_until(condition: Callable[[], bool], what: str, *, timeout: float = 10.0) -> None:
    """Wait for `condition` to hold, checking every 10 ms; a demo never sleeps and hopes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.01)


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )


def argument_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the engine does")
    return parser


def add_panic_option(parser: argparse.ArgumentParser, *, default: str, help: str) -> None:
    """`--panic` (at the lesson's `default` crash point), `--panic=POINT`, `--panic=list`."""
    parser.add_argument(
        "--panic",
        nargs="?",
        const=default,
        metavar="POINT",
        help=f"{help}; at crash point POINT (default {default}), or --panic=list to list them",
    )


def chosen_panic_point(
    chosen: str | None, points: Mapping[str, str], not_offered: Mapping[str, str]
) -> str | None:
    """The crash point `--panic` chose, or None for a run without it.

    `points` maps each point the demonstration can die at to one line (where the
    worker is, what survives); `not_offered`, each point of the crash table it
    cannot, to why. `--panic=list` prints both and exits 0; any other point gets
    one line on stderr, and exit code 2.
    """
    if chosen is None or chosen in points:
        return chosen
    if chosen == LIST_PANIC_POINTS:
        width = max(map(len, [*points, *not_offered]))
        for point, about in points.items():
            print(f"{point:<{width}}  {about}")
        for point, why in not_offered.items():
            print(f"{point:<{width}}  (not offered: {why})")
        sys.exit(0)
    valid = ", ".join(points)
    if chosen in not_offered:
        print(
            f"error: --panic={chosen}: {not_offered[chosen]}; choose one of {valid}",
            file=sys.stderr,
        )
    else:
        print(
            f"error: --panic={chosen} is no crash point of this lesson; choose one of {valid}",
            file=sys.stderr,
        )
    sys.exit(EXIT_USAGE)


def run_lesson(demonstrate: Callable[[], bool]) -> NoReturn:
    """Run a lesson's demonstration and exit 0 only if its guarantee held.

    A missing database is not a bug in the lesson: it gets one readable line and
    its own exit code instead of a traceback.
    """
    try:
        held = demonstrate()
    except DatabaseUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_NO_DATABASE)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    if held:
        print("\nThe lesson's guarantee held.")
        sys.exit(0)
    print("\nThe lesson's guarantee did NOT hold; see FAIL above.", file=sys.stderr)
    sys.exit(EXIT_GUARANTEE_BROKEN)
