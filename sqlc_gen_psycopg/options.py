"""The codegen `options:` of sqlc.yaml, validated.

Names and meanings follow sqlc-gen-python so its users feel at home; the few
additions (`overrides` with `py_type`/`py_import`, `strict_types`) are documented
in docs/sqlc-gen-psycopg.md. Anything unknown or wrongly typed is an error that
names the option, because a silently ignored typo produces surprising code.
"""

import keyword
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlc_gen_psycopg.errors import GenerationError
from sqlc_gen_psycopg.layout import DEFAULT_LINE_LENGTH

# sqlc-gen-python bundles a query's parameters into a Params class past 4.
DEFAULT_QUERY_PARAMETER_LIMIT = 4
# Below PEP 8's 79 the fixed parts of the output (the querier's own methods, the helpers)
# would need wrapping too; above 320 ruff itself refuses the length.
MIN_LINE_LENGTH, MAX_LINE_LENGTH = 79, 320

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Override:
    """Use `py_type` for a database type or for one column, importing `py_import`."""

    py_type: str
    py_import: str
    db_type: str = ""
    # "table.column" or "schema.table.column"
    column: str = ""


@dataclass(frozen=True, slots=True)
class Options:
    package: str = ""
    emit_sync_querier: bool = False
    emit_async_querier: bool = False
    emit_str_enum: bool = False
    emit_pydantic_models: bool = False
    emit_exact_table_names: bool = False
    inflection_exclude_table_names: tuple[str, ...] = ()
    query_parameter_limit: int = DEFAULT_QUERY_PARAMETER_LIMIT
    overrides: tuple[Override, ...] = ()
    strict_types: bool = False
    # A result of one column comes back as a one-field Row class rather than the value.
    emit_single_column_row_class: bool = False
    # :many methods are generators over cursor.stream() instead of returning a list.
    emit_streaming_many: bool = False
    line_length: int = DEFAULT_LINE_LENGTH
    # sqlc-gen-python reads `out` and does nothing with it (sqlc's codegen `out:` says
    # where files go); it is accepted so that its configurations work unchanged.
    out: str = ""

    def bundles_params(self, count: int) -> bool:
        """Whether a query with `count` parameters takes one Params object."""
        limit = self.query_parameter_limit
        if limit < 0:
            return False
        return count > 0 and (limit == 0 or count > limit)


def _boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _wrong_type(name, "true or false", value)
    return value


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(name, "an integer", value)
    return value


def _line_length(name: str, value: Any) -> int:
    length = _integer(name, value)
    if not MIN_LINE_LENGTH <= length <= MAX_LINE_LENGTH:
        raise GenerationError(
            f"option `{name}` must be between {MIN_LINE_LENGTH} and {MAX_LINE_LENGTH}, got {length}"
        )
    return length


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _wrong_type(name, "a string", value)
    return value


def _package(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _wrong_type(name, "a dotted Python package name", value)
    if value and not all(
        part.isidentifier() and not keyword.iskeyword(part) for part in value.split(".")
    ):
        raise GenerationError(
            f"option `{name}` must be a dotted Python package name, got {value!r}"
        )
    return value


def _strings(name: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _wrong_type(name, "a list of strings", value)
    return tuple(value)


def _overrides(name: str, value: Any) -> tuple[Override, ...]:
    if not isinstance(value, list):
        raise _wrong_type(name, "a list of mappings", value)
    return tuple(_override(f"{name}[{index}]", item) for index, item in enumerate(value))


def _override(where: str, item: Any) -> Override:
    if not isinstance(item, dict):
        raise _wrong_type(where, "a mapping", item)
    unknown = sorted(set(item) - {"db_type", "column", "py_type", "py_import"})
    if unknown:
        raise GenerationError(
            f"unknown key `{unknown[0]}` in option `{where}`; "
            "expected db_type or column, py_type and optionally py_import"
        )
    fields = {}
    for key in ("db_type", "column", "py_type", "py_import"):
        field = item.get(key, "")
        if not isinstance(field, str):
            raise _wrong_type(f"{where}.{key}", "a string", field)
        fields[key] = field.strip()
    if bool(fields["db_type"]) == bool(fields["column"]):
        raise GenerationError(f"option `{where}` needs exactly one of `db_type` or `column`")
    if not fields["py_type"]:
        raise GenerationError(f"option `{where}` needs `py_type`, the Python type to use")
    if fields["column"] and fields["column"].count(".") not in (1, 2):
        raise GenerationError(
            f"option `{where}.column` must be `table.column` or "
            f"`schema.table.column`, got {fields['column']!r}"
        )
    return Override(**fields)


def _wrong_type(name: str, expected: str, value: Any) -> GenerationError:
    return GenerationError(f"option `{name}` must be {expected}, got {value!r}")


_PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "package": _package,
    "emit_sync_querier": _boolean,
    "emit_async_querier": _boolean,
    "emit_str_enum": _boolean,
    "emit_pydantic_models": _boolean,
    "emit_exact_table_names": _boolean,
    "inflection_exclude_table_names": _strings,
    "query_parameter_limit": _integer,
    "overrides": _overrides,
    "strict_types": _boolean,
    "emit_single_column_row_class": _boolean,
    "emit_streaming_many": _boolean,
    "line_length": _line_length,
    "out": _string,
}


def parse_options(raw: dict[str, Any]) -> Options:
    """Validate the decoded `options:` mapping of one codegen entry."""
    unknown = sorted(set(raw) - set(_PARSERS))
    if unknown:
        known = ", ".join(sorted(_PARSERS))
        raise GenerationError(f"unknown option `{unknown[0]}`; known options: {known}")
    values = {name: _PARSERS[name](name, value) for name, value in raw.items()}
    return Options(**values)
