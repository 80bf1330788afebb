"""Every lesson is laid out on the same shelves, and its imports point one way.

A lesson's `engine/` is what the learner builds, `demo/` the example that
`main.py` and the tests run on it, `tools/` the commands around it. The engine
never imports the demonstration or the tools, and inside the engine each module
imports only modules listed before it in `engine/__init__.py`: the client never
imports the worker, and `shared.py` imports nothing of the engine.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

LESSONS_DIRECTORY = Path(__file__).resolve().parents[1] / "lessons"
SHELVES = ("engine", "demo", "tools")

# Lesson 01 has no engine: it only shows where the database is.
LESSONS = sorted(
    path
    for path in LESSONS_DIRECTORY.glob("lesson[0-9][0-9]_*")
    if (path / "sql" / "queries.sql").exists()
)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """The modules a file imports, relative ones written with their leading dots."""
    tree = ast.parse(path.read_text(), filename=str(path))
    modules: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            modules.append((node.level, node.module or ""))
        elif isinstance(node, ast.Import):
            modules.extend((0, alias.name) for alias in node.names)
    return modules


def engine_order(lesson: Path) -> list[str]:
    """The engine's modules in the order `engine/__init__.py` lists them, bottom first."""
    docstring = ast.get_docstring(ast.parse((lesson / "engine" / "__init__.py").read_text()))
    listed: list[str] = []
    for line in (docstring or "").splitlines():
        if line.startswith("- "):
            listed.extend(re.findall(r"`([a-z_]+)`", line.split(":")[0]))
    return listed


@pytest.mark.parametrize("lesson", LESSONS, ids=[path.name[:8] for path in LESSONS])
def test_a_lesson_keeps_its_files_on_the_same_shelves(lesson: Path) -> None:
    """engine/, demo/ and tools/ are packages; nothing but main.py sits beside them."""
    for shelf in SHELVES:
        assert (lesson / shelf / "__init__.py").exists(), f"{lesson.name} has no {shelf}/"
    loose = sorted(path.name for path in lesson.glob("*.py") if path.name != "__init__.py")
    assert loose == ["main.py"], f"{lesson.name} has modules off the shelves: {loose}"


@pytest.mark.parametrize("lesson", LESSONS, ids=[path.name[:8] for path in LESSONS])
def test_engine_modules_import_only_modules_below_them(lesson: Path) -> None:
    """Each engine module imports only the db/ package and the engine modules listed
    before it; `engine/__init__.py` lists every engine module once."""
    order = engine_order(lesson)
    modules = sorted(path.stem for path in (lesson / "engine").glob("*.py"))
    assert sorted(order) == [name for name in modules if name != "__init__"], (
        f"{lesson.name}/engine/__init__.py does not list each engine module once: {order}"
    )
    for position, name in enumerate(order):
        below = set(order[:position])
        for level, module in imported_modules(lesson / "engine" / f"{name}.py"):
            if level == 1:
                assert module in below, f"{lesson.name}: engine/{name}.py imports .{module}"
            elif level == 2:
                assert module.split(".")[0] == "db", (
                    f"{lesson.name}: engine/{name}.py imports ..{module}"
                )
            else:
                assert not module.startswith("lessons.lesson"), (
                    f"{lesson.name}: engine/{name}.py imports {module}"
                )


@pytest.mark.parametrize("lesson", LESSONS, ids=[path.name[:8] for path in LESSONS])
def test_the_demonstration_never_imports_the_tools(lesson: Path) -> None:
    """The demonstration uses the engine; the tools use both; never the other way round."""
    for path in (lesson / "demo").glob("*.py"):
        for level, module in imported_modules(path):
            assert not (level == 2 and module.startswith("tools")), f"{path} imports ..{module}"
