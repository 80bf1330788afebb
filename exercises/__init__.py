"""Exercises that check themselves: where each exercise's check and reference solution live.

An exercise is exercise K of lesson NN. Its check is `exercises/lessonNN/test_eK_<slug>.py`
(a pytest module whose docstring states the exercise), its reference solution
`exercises/solutions/lessonNN/eK.patch`. `check.py` runs one check, `prove.py` proves
every check both ways; both find the exercises here.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

EXERCISES_DIRECTORY = Path(__file__).resolve().parent
REPOSITORY_ROOT = EXERCISES_DIRECTORY.parent
SOLUTIONS_DIRECTORY = EXERCISES_DIRECTORY / "solutions"

_CHECK_FILE = re.compile(r"^test_e(?P<number>[0-9]+)_(?P<slug>[a-z0-9_]+)\.py$")


@dataclass(frozen=True)
class Exercise:
    lesson: str  # two digits, "04"
    number: int
    check: Path

    @property
    def name(self) -> str:
        """`04.1`: how the messages name an exercise."""
        return f"{self.lesson}.{self.number}"

    @property
    def solution(self) -> Path:
        return SOLUTIONS_DIRECTORY / f"lesson{self.lesson}" / f"e{self.number}.patch"

    @property
    def title(self) -> str:
        """The first line of the check's docstring: the exercise in a few words."""
        docstring = ast.get_docstring(ast.parse(self.check.read_text())) or ""
        return docstring.strip().splitlines()[0].rstrip(".") if docstring.strip() else ""

    @property
    def lesson_readme(self) -> Path:
        """The README whose `## Exercises` section states this exercise."""
        (directory,) = (REPOSITORY_ROOT / "lessons").glob(f"lesson{self.lesson}_*")
        return directory / "README.md"


def all_exercises(lesson: str | None = None) -> list[Exercise]:
    """Every exercise (of one lesson, when `lesson` is given), by lesson and number."""
    found = []
    for directory in sorted(EXERCISES_DIRECTORY.glob("lesson[0-9][0-9]")):
        if lesson is not None and directory.name != f"lesson{lesson}":
            continue
        for check in directory.glob("test_e*.py"):
            match = _CHECK_FILE.match(check.name)
            if match:
                found.append(Exercise(directory.name[-2:], int(match["number"]), check))
    return sorted(found, key=lambda exercise: (exercise.lesson, exercise.number))


def expect(holds: bool, message: str) -> None:
    """Fail the check with `message` alone when `holds` is false: a learner reads what is
    missing, not pytest's account of the expression."""
    if not holds:
        pytest.fail(message, pytrace=False)
