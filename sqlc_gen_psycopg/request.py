"""Typed view of sqlc's GenerateRequest, as sqlc sends it in protojson.

Only the fields the generator uses are kept. protojson may omit fields that hold
their default value, so every lookup has a default.
"""

import base64
import json
from dataclasses import dataclass
from typing import Any

from sqlc_gen_psycopg.errors import GenerationError

JsonObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Identifier:
    schema: str
    name: str

    @classmethod
    def parse(cls, data: JsonObject | None) -> "Identifier | None":
        if not data or not data.get("name"):
            return None
        return cls(schema=data.get("schema", ""), name=data["name"])


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    not_null: bool
    is_array: bool
    array_dims: int
    comment: str
    # The column's SQL type; sqlc spells it in several ways ("int4",
    # "pg_catalog.int4", "integer", a schema-qualified enum...).
    type_schema: str
    type_name: str
    table: Identifier | None
    embed_table: Identifier | None
    # A parameter's column as the table names it, when sqlc.arg() gave it another name.
    original_name: str = ""
    # A sqlc.slice(name) parameter: a list of values.
    is_sqlc_slice: bool = False

    @classmethod
    def parse(cls, data: JsonObject) -> "Column":
        type_ = data.get("type") or {}
        return cls(
            name=data.get("name", ""),
            not_null=bool(data.get("not_null", False)),
            is_array=bool(data.get("is_array", False)),
            array_dims=int(data.get("array_dims", 0)),
            comment=data.get("comment", ""),
            type_schema=type_.get("schema", ""),
            type_name=type_.get("name", ""),
            table=Identifier.parse(data.get("table")),
            embed_table=Identifier.parse(data.get("embed_table")),
            original_name=data.get("original_name", ""),
            is_sqlc_slice=bool(data.get("is_sqlc_slice", False)),
        )

    @property
    def dims(self) -> int:
        """Array dimensions; older sqlc versions set is_array without array_dims."""
        if self.is_sqlc_slice:
            return 1
        if not self.is_array:
            return 0
        return max(self.array_dims, 1)


@dataclass(frozen=True, slots=True)
class Table:
    rel: Identifier
    columns: tuple[Column, ...]
    comment: str


@dataclass(frozen=True, slots=True)
class Enum:
    name: str
    values: tuple[str, ...]
    comment: str


@dataclass(frozen=True, slots=True)
class Schema:
    name: str
    tables: tuple[Table, ...]
    enums: tuple[Enum, ...]


@dataclass(frozen=True, slots=True)
class Parameter:
    number: int
    column: Column


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    cmd: str
    text: str
    columns: tuple[Column, ...]
    params: tuple[Parameter, ...]
    comments: tuple[str, ...]
    filename: str
    insert_into_table: Identifier | None


@dataclass(frozen=True, slots=True)
class Request:
    sqlc_version: str
    default_schema: str
    schemas: tuple[Schema, ...]
    queries: tuple[Query, ...]
    # The codegen entry's `options:` mapping, decoded.
    options: JsonObject


# Schemas that belong to PostgreSQL itself, never to the user's schema files.
SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema", "pg_temp"})


def parse_request(raw: bytes) -> Request:
    """Parse the JSON GenerateRequest that sqlc writes to the plugin's stdin."""
    try:
        data = json.loads(raw)
    except ValueError as error:
        raise GenerationError(
            f"sqlc sent a request that is not JSON ({error}); "
            "set `format: json` on the plugin in sqlc.yaml"
        ) from error
    catalog = data.get("catalog") or {}
    return Request(
        sqlc_version=data.get("sqlc_version", ""),
        default_schema=catalog.get("default_schema") or "public",
        schemas=tuple(_parse_schema(s) for s in catalog.get("schemas") or ()),
        queries=tuple(_parse_query(q) for q in data.get("queries") or ()),
        options=_decode_options(data.get("plugin_options", "")),
    )


def _parse_schema(data: JsonObject) -> Schema:
    return Schema(
        name=data.get("name", ""),
        tables=tuple(
            Table(
                rel=Identifier.parse(t.get("rel")) or Identifier("", ""),
                columns=tuple(Column.parse(c) for c in t.get("columns") or ()),
                comment=t.get("comment", ""),
            )
            for t in data.get("tables") or ()
        ),
        enums=tuple(
            Enum(name=e["name"], values=tuple(e.get("vals") or ()), comment=e.get("comment", ""))
            for e in data.get("enums") or ()
        ),
    )


def _parse_query(data: JsonObject) -> Query:
    return Query(
        name=data.get("name", ""),
        cmd=data.get("cmd", ""),
        text=data.get("text", ""),
        columns=tuple(Column.parse(c) for c in data.get("columns") or ()),
        params=tuple(
            Parameter(number=int(p.get("number", 0)), column=Column.parse(p.get("column") or {}))
            for p in data.get("params") or ()
        ),
        comments=tuple(data.get("comments") or ()),
        filename=data.get("filename", ""),
        insert_into_table=Identifier.parse(data.get("insert_into_table")),
    )


def _decode_options(encoded: str) -> JsonObject:
    """plugin_options holds the codegen `options:` mapping as base64-encoded JSON."""
    if not encoded:
        return {}
    try:
        options = json.loads(base64.b64decode(encoded))
    except ValueError as error:
        raise GenerationError(f"`options:` could not be decoded: {error}") from error
    if not isinstance(options, dict):
        raise GenerationError("`options:` must be a mapping of option names to values")
    return options
