"""A lesson as the change from the lesson before it: `python -m lessons.common.lesson_diff 04`.

`make diff N=04` runs it. A lesson starts as a copy of the one before, so this diff *is*
the lesson: its SQL, its engine, its demonstration, its tools and its main.py, in the
order to read them (schema, queries, the engine from the bottom up). Left out: the
README (prose), `db/` (generated from the SQL) and `__pycache__`. Paths are relative
to the lesson, `a/` the lesson before and `b/` this one, and a new file is shown whole.
The lesson before is read with its package name replaced by this lesson's, so a line
that differs only in naming its own lesson is not shown as a change.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from lessons.common.demo import lesson_directories

# A lesson's shelves (see the top README), in reading order, then its main.py.
SHELVES = ("sql", "engine", "demo", "tools")
MAIN = "main.py"
SQL_ORDER = ("schema.sql", "queries.sql")

# ANSI colours, for a terminal only: bold file names, cyan hunks, green and red lines.
HEADER = "\033[1m"
COLOURS = {"@": "\033[36m", "+": "\033[32m", "-": "\033[31m"}
RESET = "\033[0m"


class NoDiff(Exception):
    """The lesson asked for has no lesson before it to differ from."""


def lesson_files(lesson: Path) -> list[str]:
    """The lesson's files that the diff shows, relative to the lesson."""
    on_shelves = [
        path.relative_to(lesson).as_posix()
        for shelf in SHELVES
        for path in (lesson / shelf).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ]
    return [*on_shelves, MAIN]


def engine_order(lesson: Path) -> list[str]:
    """The engine's modules in the order `engine/__init__.py` lists them, bottom first."""
    docstring = ast.get_docstring(ast.parse((lesson / "engine" / "__init__.py").read_text()))
    listed = [
        name
        for line in (docstring or "").splitlines()
        if line.startswith("- ")
        for name in re.findall(r"`([a-z_]+)`", line.split(":")[0])
    ]
    return ["__init__", *listed]


def reading_order(paths: set[str], lesson: Path) -> list[str]:
    """Shelf by shelf; the schema before the queries; the engine as its __init__ lists it."""
    order_on_shelf = {
        "sql": list(SQL_ORDER),
        "engine": [f"{module}.py" for module in engine_order(lesson)],
    }

    def position(path: str) -> tuple[int, int, str]:
        shelf, _, name = path.partition("/")
        shelf_rank = SHELVES.index(shelf) if shelf in SHELVES else len(SHELVES)
        order = order_on_shelf.get(shelf, [])
        return shelf_rank, order.index(name) if name in order else len(order), name

    return sorted(paths, key=position)


def read_lines(path: Path) -> list[str]:
    """The file's lines, each ending in a newline; none for a file that does not exist."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines(keepends=True)
    return [line if line.endswith("\n") else line + "\n" for line in lines]


def file_diffs(previous: Path, lesson: Path) -> Iterator[tuple[str, list[str]]]:
    """The unified diff of each file that changed, in reading order; a new file whole."""
    renames = (previous.name, lesson.name)
    for path in reading_order(set(lesson_files(previous)) | set(lesson_files(lesson)), lesson):
        lines = list(
            difflib.unified_diff(
                [line.replace(*renames) for line in read_lines(previous / path)],
                read_lines(lesson / path),
                fromfile=f"a/{path}" if (previous / path).exists() else "/dev/null",
                tofile=f"b/{path}" if (lesson / path).exists() else "/dev/null",
            )
        )
        if lines:
            yield path, lines


def lesson_and_previous(number: str) -> tuple[Path, Path]:
    """The lesson numbered `number` and the one before it, if both have an engine."""
    directories = lesson_directories()
    numbers = [directory.name[len("lesson") :][:2] for directory in directories]
    has_engine = [(directory / "engine").is_dir() for directory in directories]
    diffable = [n for i, n in enumerate(numbers) if i > 0 and has_engine[i - 1] and has_engine[i]]
    if number not in numbers:
        raise NoDiff(
            f"there is no lesson {number}: make diff takes N={diffable[0]} to {diffable[-1]}"
        )
    lesson = directories[numbers.index(number)]
    if number not in diffable:
        why = "builds the first engine" if (lesson / "engine").is_dir() else "has no engine"
        raise NoDiff(
            f"lesson {number} {why}, so there is no lesson before it to diff: read "
            f"{lesson.relative_to(lesson.parents[1])}/ whole (make diff takes N={diffable[0]} "
            f"to {diffable[-1]})"
        )
    return lesson, directories[numbers.index(number) - 1]


def render(number: str, *, colour: bool) -> str:
    """A summary of the files that changed, then their diffs."""
    lesson, previous = lesson_and_previous(number)
    diffs = list(file_diffs(previous, lesson))
    summary = [f"Lesson {number}: {previous.name} (a/) -> {lesson.name} (b/)\n"]
    summary += [f"  {path:<32} {stat(lines)}\n" for path, lines in diffs]
    body = [paint(line, index, colour) for _, lines in diffs for index, line in enumerate(lines)]
    return "".join([*summary, "\n", *body])


def stat(diff: list[str]) -> str:
    """`+12 -3`, or `new, 40 lines` for a new file."""
    added = sum(1 for line in diff[2:] if line.startswith("+"))
    removed = sum(1 for line in diff[2:] if line.startswith("-"))
    if diff[0].startswith("--- /dev/null"):
        return f"new, {added} lines"
    if diff[1].startswith("+++ /dev/null"):
        return f"removed, {removed} lines"
    return f"+{added} -{removed}"


def paint(line: str, index: int, colour: bool) -> str:
    """The line in its colour: `index` is its place in its file's diff (0, 1: the header)."""
    if not colour:
        return line
    code = HEADER if index < 2 else COLOURS.get(line[0], "")
    return f"{code}{line.rstrip()}{RESET}\n" if code else line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("lesson", nargs="?", help="the lesson's number, e.g. 04")
    options = parser.parse_args(argv)
    if not options.lesson:
        print("error: say which lesson: make diff N=04", file=sys.stderr)
        return 2
    try:
        number = options.lesson.zfill(2) if options.lesson.isdigit() else options.lesson
        text = render(number, colour=sys.stdout.isatty())
    except NoDiff as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
