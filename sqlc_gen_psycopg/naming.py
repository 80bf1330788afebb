"""Turning SQL names into Python names.

The rules mirror sqlc-gen-python (and so sqlc-gen-go) where it has one: models are
the singular CamelCase of the table, methods the snake_case of the query name,
enum members the UPPER_SNAKE of the label.
"""

import builtins
import keyword
import re
from collections.abc import Iterable

# Builtins a parameter could shadow: the public lower-case names (functions,
# types, and the site helpers such as exit); the same in every Python 3.11+.
_BUILTINS = frozenset(name for name in dir(builtins) if name.islower() and not name.startswith("_"))

# `id` is by far the most common column name, and a generated method never calls
# id(), so shadowing it is harmless; escaping it would make every signature worse.
_UNESCAPED_BUILTINS = frozenset({"id"})

# Names a generated method body or its module refers to; a parameter with one of
# these names would shadow it.
_GENERATED_NAMES = frozenset(
    {
        *("self", "cur", "row", "copy", "params", "arg", "args", "results", "models"),
        *("psycopg", "tuple_row", "postgres", "pq", "Transformer", "Json", "Jsonb"),
        *("dataclasses", "datetime", "decimal", "enum", "ipaddress", "uuid", "pydantic"),
        *("Any", "Callable", "Iterable", "Sequence", "TypeAlias", "TypeVar"),
        *("Range", "Multirange"),
    }
)

# Names the generated annotations refer to inside a class body (modules, typing names,
# builtin types, models.py's own names). A field or method of that name would hide
# them from the rest of the class: `uuid: uuid.UUID` fails mypy, and a method named
# `uuid` makes every later `-> uuid.UUID` fail at import.
_ANNOTATION_NAMES = frozenset(
    {
        *("datetime", "decimal", "ipaddress", "uuid", "dataclasses", "enum", "pydantic"),
        *("psycopg", "models", "typing", "collections"),
        *("Any", "Callable", "Iterable", "Sequence", "TypeAlias", "TypeVar"),
        *("Range", "Multirange", "Json", "Jsonb", "Inet", "ExecResult"),
        *("int", "float", "str", "bool", "bytes", "list", "tuple", "dict"),
    }
)

# pydantic.BaseModel's own attributes (v2 and its deprecated v1 API): a field of that name
# fails mypy, and `model_config` fails at import.
_BASE_MODEL_ATTRIBUTES = frozenset(
    {
        *("copy", "dict", "json", "construct", "from_orm", "validate", "schema", "schema_json"),
        *("parse_obj", "parse_raw", "parse_file", "update_forward_refs"),
    }
)

_NON_IDENTIFIER = re.compile(r"\W+", re.ASCII)


def identifier(name: str, fallback: str) -> str:
    """A valid Python identifier for an SQL name, which may contain anything when quoted."""
    cleaned = _NON_IDENTIFIER.sub("_", name).strip("_") if not name.isidentifier() else name
    if not cleaned:
        return fallback
    if cleaned[0].isdigit():
        return f"{fallback}_{cleaned}"
    return cleaned


def field_name(name: str, reserved: frozenset[str] = frozenset()) -> str:
    """A class field or module name: `row.type` reads fine, so only keywords, the names
    annotations use, and `reserved` (the names of imported override types) are escaped."""
    if keyword.iskeyword(name) or name in _ANNOTATION_NAMES or name in reserved:
        return f"{name}_"
    return name


def module_name(name: str) -> str:
    """A module: `import` needs keywords escaped, nothing else."""
    return f"{name}_" if keyword.iskeyword(name) else name


def pydantic_field_name(name: str) -> str:
    """A field of a pydantic model, escaped where it would override a BaseModel attribute."""
    if name in _BASE_MODEL_ATTRIBUTES or name.startswith("model_"):
        return f"{name}_"
    return name


def method_name(query_name: str, reserved: frozenset[str] = frozenset()) -> str:
    """The querier method of a query: snake_case, escaped like a field."""
    return field_name(snake_case(query_name), reserved)


def parameter_name(name: str) -> str:
    """A keyword-only method parameter.

    Escaped with a trailing underscore when it is a Python keyword (`from_`), a
    builtin (`input_`, `type_`; except `id`), a name the generated method uses
    (`cur_`), or private like the module's helpers (`_array_`).
    """
    if (
        keyword.iskeyword(name)
        or (name in _BUILTINS and name not in _UNESCAPED_BUILTINS)
        or name in _GENERATED_NAMES
        # The generated module's private helpers (_array, _task_from_row...).
        or name.startswith("_")
    ):
        return f"{name}_"
    return name


def unique(names: Iterable[str]) -> list[str]:
    """Suffix repeated names with _2, _3... so fields and parameters stay distinct."""
    seen: set[str] = set()
    result = []
    for name in names:
        candidate, suffix = name, 1
        while candidate in seen:
            suffix += 1
            candidate = f"{name}_{suffix}"
        seen.add(candidate)
        result.append(candidate)
    return result


def camel_case(name: str) -> str:
    """`task_events` -> `TaskEvents`; other characters are dropped like underscores."""
    parts = _NON_IDENTIFIER.sub("_", name).split("_")
    return "".join(part[:1].upper() + part[1:] for part in parts)


_FIRST_CAP = re.compile(r"(.)([A-Z][a-z]+)")
_ALL_CAP = re.compile(r"([a-z0-9])([A-Z])")


def snake_case(name: str) -> str:
    """`ClaimTasks` -> `claim_tasks`, `GetHTTPStatus` -> `get_http_status`."""
    snake = _FIRST_CAP.sub(r"\1_\2", name)
    return _ALL_CAP.sub(r"\1_\2", snake).lower()


def enum_member(label: str) -> str:
    """`queued` -> `QUEUED`, `in-progress` -> `IN_PROGRESS`, `2fa` -> `VALUE_2FA`."""
    member = re.sub(r"[-:/\s.]", "_", label)
    member = re.sub(r"[^A-Za-z0-9_]", "", member).strip("_").upper()
    if not member:
        return "VALUE"
    if member[0].isdigit():
        return f"VALUE_{member}"
    return member


# Singular forms, as in the inflection library sqlc uses (from Rails). Checked in
# order; the first rule that matches the end of the name wins.
_UNCOUNTABLE = frozenset(
    {
        *("equipment", "information", "rice", "money", "species", "series", "fish", "sheep"),
        *("jeans", "police", "meta", "campus"),
    }
)
_IRREGULAR = (
    ("people", "person"),
    ("men", "man"),
    ("children", "child"),
    ("sexes", "sex"),
    ("moves", "move"),
    ("zombies", "zombie"),
)
_SINGULAR_RULES = tuple(
    (re.compile(pattern, re.IGNORECASE), replacement)
    for pattern, replacement in (
        (r"(database)s$", r"\1"),
        (r"(quiz)zes$", r"\1"),
        (r"(matr)ices$", r"\1ix"),
        (r"(vert|ind)ices$", r"\1ex"),
        (r"^(ox)en", r"\1"),
        (r"(alias|status)(es)?$", r"\1"),
        (r"(octop|vir)(us|i)$", r"\1us"),
        (r"^(a)x[ie]s$", r"\1xis"),
        (r"(cris|test)(is|es)$", r"\1is"),
        (r"(shoe)s$", r"\1"),
        (r"(o)es$", r"\1"),
        (r"(bus)(es)?$", r"\1"),
        (r"^(m|l)ice$", r"\1ouse"),
        (r"(x|ch|ss|sh)es$", r"\1"),
        (r"(m)ovies$", r"\1ovie"),
        (r"(s)eries$", r"\1eries"),
        (r"([^aeiouy]|qu)ies$", r"\1y"),
        (r"([lr])ves$", r"\1f"),
        (r"(tive)s$", r"\1"),
        (r"(hive)s$", r"\1"),
        (r"([^f])ves$", r"\1fe"),
        (r"(^analy)(sis|ses)$", r"\1sis"),
        (r"((a)naly|(b)a|(d)iagno|(p)arenthe|(p)rogno|(s)ynop|(t)he)(sis|ses)$", r"\1sis"),
        (r"([ti])a$", r"\1um"),
        (r"(n)ews$", r"\1ews"),
        (r"(ss)$", r"\1"),
        (r"s$", ""),
    )
)


def singular(name: str, exclusions: Iterable[str] = ()) -> str:
    """`tasks` -> `task`, `task_events` -> `task_event`, `statuses` -> `status`."""
    lowered = name.lower()
    if lowered in _UNCOUNTABLE or lowered in (e.lower() for e in exclusions):
        return name
    for plural, single in _IRREGULAR:
        if lowered.endswith(plural):
            return name[: len(name) - len(plural)] + single
    for pattern, replacement in _SINGULAR_RULES:
        if pattern.search(name):
            return pattern.sub(replacement, name, count=1)
    return name
