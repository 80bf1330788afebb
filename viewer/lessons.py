"""Which lesson the viewer shows, and what that lesson's schema has.

The viewer reads lesson 11's tables and every later lesson's. Later lessons
add to them (concurrency keys, cancellation, code versions, partitions); a
page shows a lesson's additions when the lesson has them, and the operations
it offers are the ones that lesson's history tool has.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from lessons.common.cli import Lesson

LESSONS_DIRECTORY = Path(__file__).resolve().parents[1] / "lessons"

# The oldest lesson whose schema the viewer reads: the first with replays and forks.
FIRST_LESSON = 11

# What each lesson adds that the pages show, by the lesson that adds it.
FEATURES_SINCE = {
    "flow_control": 12,
    "cancellation": 13,
    "versions": 14,
    "partitions": 15,
}


@dataclass(frozen=True)
class ViewedLesson:
    """A lesson the viewer can show: its package, its schema and its additions."""

    lesson: Lesson
    schema: str

    @property
    def number(self) -> int:
        return int(self.lesson.number)

    @property
    def title(self) -> str:
        return self.lesson.directory.name.split("_", 1)[1].replace("_", " ")

    def has(self, feature: str) -> bool:
        return self.number >= FEATURES_SINCE[feature]

    def history_tool(self) -> ModuleType:
        """The lesson's own history tool: the viewer's operations are its functions."""
        return importlib.import_module(f"{self.lesson.package}.tools.history_tool")


def viewable_lessons() -> dict[int, Lesson]:
    """The lessons the viewer can show, by number."""
    found = {}
    for directory in sorted(LESSONS_DIRECTORY.glob("lesson[0-9][0-9]_*")):
        lesson = Lesson(directory)
        if int(lesson.number) >= FIRST_LESSON:
            found[int(lesson.number)] = lesson
    return found


def view_lesson(number: int | None, schema: str | None = None) -> ViewedLesson:
    """Lesson `number` (the last one when None), in `schema` (its own by default).

    Raises ValueError, with the lessons there are, for a number it cannot show.
    """
    lessons = viewable_lessons()
    chosen = max(lessons) if number is None else number
    if chosen not in lessons:
        numbers = ", ".join(f"{n:02d}" for n in lessons)
        raise ValueError(f"the viewer shows lessons {numbers}, not lesson {chosen:02d}")
    lesson = lessons[chosen]
    return ViewedLesson(lesson=lesson, schema=schema or lesson.schema)
