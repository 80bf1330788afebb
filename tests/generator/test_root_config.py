"""The root sqlc.yaml generates every lesson that has SQL, with the options lessons rely on."""

import re
from pathlib import Path

import pytest

from tests.generator.conftest import REPOSITORY

CONFIG = (REPOSITORY / "sqlc.yaml").read_text()
LESSONS_WITH_SQL = sorted(p.parents[1] for p in REPOSITORY.glob("lessons/*/sql/schema.sql"))


@pytest.mark.parametrize("lesson", LESSONS_WITH_SQL, ids=lambda p: p.name)
def test_every_lesson_with_sql_has_an_entry(lesson: Path) -> None:
    name = lesson.name
    entry = re.search(
        rf"  - engine: postgresql\n"
        rf"    schema: lessons/{name}/sql/schema.sql\n"
        rf"    queries: lessons/{name}/sql/queries.sql\n"
        rf"    codegen:\n"
        rf"      - plugin: py\n"
        rf"        out: lessons/{name}/db\n"
        rf"        options:\n"
        rf"          package: lessons\.{name}\.db\n"
        rf"          emit_sync_querier: true\n"
        rf"          emit_async_querier: false\n"
        rf"          emit_str_enum: true\n"
        rf"          query_parameter_limit: -1\n"
        # Laid out for the project's ruff line length, not the plugin's default of 88.
        rf"(?:          #.*\n)*"
        rf"          line_length: 100\n",
        CONFIG,
    )
    assert entry, f"sqlc.yaml has no (or a different) entry for {name}"
