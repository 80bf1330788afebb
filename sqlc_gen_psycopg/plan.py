"""From sqlc's request to a plan of what to emit: enums, models, queries.

Everything about names, types and shapes is decided here, so the emitters only
lay out text.
"""

import re
from dataclasses import dataclass, replace

from sqlc_gen_psycopg import naming
from sqlc_gen_psycopg.errors import GenerationError
from sqlc_gen_psycopg.options import Options, Override
from sqlc_gen_psycopg.request import SYSTEM_SCHEMAS, Column, Identifier, Query, Request
from sqlc_gen_psycopg.typemap import (
    ANY,
    BUILTIN_TYPES,
    INET,
    BaseType,
    ColumnType,
    Import,
    Kind,
    canonical_type_name,
)


@dataclass(frozen=True, slots=True)
class EnumClass:
    name: str
    # (member name, PostgreSQL label)
    members: tuple[tuple[str, str], ...]
    comment: str


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    comment: str = ""
    type: ColumnType | None = None
    # The name a pydantic field takes in the constructor when `name` had to be escaped
    # (`json_` for a column `json`): its alias, so that it keeps the column's name.
    alias: str = ""
    # A sqlc.embed(table) field holds that table's model, built from `width` columns.
    embed: "ModelClass | None" = None

    @property
    def width(self) -> int:
        return len(self.embed.fields) if self.embed else 1


@dataclass(frozen=True, slots=True)
class ModelClass:
    """A table model (in models.py) or a query's Row or Params class."""

    name: str
    fields: tuple[Field, ...]
    comment: str = ""
    in_models: bool = False
    # For table models: the table, its schema spelled out.
    table: Identifier | None = None
    # A Params class: its fields are typed like method parameters.
    is_params: bool = False


@dataclass(frozen=True, slots=True)
class Param:
    """One $n placeholder: its Python name (argument or Params field) and type."""

    name: str
    type: ColumnType
    # For :copyfrom, the column the value goes to.
    column: str
    # As Field.alias, for a field of a pydantic Params class.
    alias: str = ""


@dataclass(frozen=True, slots=True)
class QueryPlan:
    name: str
    cmd: str
    method: str
    constant: str
    sql: str
    comments: tuple[str, ...]
    # $1..$n in order.
    params: tuple[Param, ...]
    # Set when the parameters come in one object (bundled, or one per batch item).
    params_class: ModelClass | None
    # The class of a result row (a table model or the query's Row class)...
    result: ModelClass | None
    # ...or, for a result of one column, the type of its value (as sqlc-gen-go returns it).
    value: ColumnType | None = None


@dataclass(frozen=True, slots=True)
class QueryModule:
    """The Python module generated from one queries file."""

    name: str
    source: str
    # In the order sqlc sent them, which is their order in the file.
    queries: tuple[QueryPlan, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    enums: tuple[EnumClass, ...]
    models: tuple[ModelClass, ...]
    modules: tuple[QueryModule, ...]
    uses_inet: bool
    uses_exec_result: bool


SUPPORTED_COMMANDS = frozenset(
    {
        ":one",
        ":many",
        ":exec",
        ":execrows",
        ":execresult",
        ":copyfrom",
        ":batchexec",
        ":batchone",
        ":batchmany",
    }
)
# Commands that return rows, and so need result columns.
ROW_COMMANDS = frozenset({":one", ":many", ":batchone", ":batchmany"})
# Commands that take a sequence of parameter sets, each one a Params object.
MULTI_COMMANDS = frozenset({":copyfrom", ":batchexec", ":batchone", ":batchmany"})


class _TypeResolver:
    """Resolves a column's type: overrides first, then PostgreSQL types, then enums."""

    def __init__(self, request: Request, options: Options, enums: dict[tuple[str, str], str]):
        self.default_schema = request.default_schema
        self.options = options
        self._enums = enums
        self.uses_inet = False
        # Names that overridden types import: fields and methods must not hide them.
        self.imported_names = frozenset(
            imp.name or imp.module.split(".")[0]
            for override in options.overrides
            for imp in _override_type(override).imports
        )

    def resolve(self, column: Column, where: str) -> ColumnType:
        base = self._override(column) or self._builtin_or_enum(column, where)
        if base is INET:
            self.uses_inet = True
        return ColumnType(base=base, dims=column.dims, nullable=not column.not_null)

    def _override(self, column: Column) -> BaseType | None:
        """The first override for this very column, else the first for its type."""
        overrides = self.options.overrides
        for override in overrides:
            if override.column and self._matches_column(override, column):
                return _override_type(override)
        db_type = canonical_type_name(column.type_schema, column.type_name)
        for override in overrides:
            if override.db_type and canonical_type_name("", override.db_type) == db_type:
                return _override_type(override)
        return None

    def _matches_column(self, override: Override, column: Column) -> bool:
        *table_path, column_name = override.column.split(".")
        if column.table is None or column_name != column.name:
            return False
        table_schema = column.table.schema or self.default_schema
        if len(table_path) == 2:
            return table_path == [table_schema, column.table.name]
        return table_path[0] == column.table.name

    def _builtin_or_enum(self, column: Column, where: str) -> BaseType:
        schema, name = canonical_type_name(column.type_schema, column.type_name)
        if not schema and name in BUILTIN_TYPES:
            return BUILTIN_TYPES[name]
        enum = self._enums.get((schema or self.default_schema, name))
        if enum is None and not schema:
            # Unqualified: any schema on the search path could hold it.
            matches = sorted(e for (_, n), e in self._enums.items() if n == name)
            enum = matches[0] if len(matches) == 1 else None
        if enum is not None:
            return BaseType(enum, (), Kind.ENUM, in_models=True)
        if self.options.strict_types:
            spelled = f"{schema}.{name}" if schema else name
            raise GenerationError(
                f"{where}: unknown PostgreSQL type `{spelled}` (strict_types is on); "
                "add an override for it or turn strict_types off to get `Any`"
            )
        return ANY


def _override_type(override: Override) -> BaseType:
    """`py_type: uuid.UUID, py_import: uuid` imports the module; `py_type: MyType,
    py_import: app.types` imports the name from it."""
    if not override.py_import:
        return BaseType(override.py_type, pydantic_native=False)
    module = override.py_import
    if override.py_type.startswith(f"{module}."):
        return BaseType(override.py_type, (Import(module),), pydantic_native=False)
    name = override.py_type.split("[", 1)[0].split(".", 1)[0].strip()
    return BaseType(override.py_type, (Import(module, name),), pydantic_native=False)


def _qualified_name(schema: str, name: str, default_schema: str) -> str:
    """Objects outside the default schema are prefixed with it, as in sqlc-gen-python."""
    return name if schema in ("", default_schema) else f"{schema}_{name}"


def build_plan(request: Request, options: Options) -> Plan:
    enums, enum_index = _build_enums(request)
    resolver = _TypeResolver(request, options, enum_index)
    models = _build_models(request, options, resolver)
    by_file: dict[str, list[QueryPlan]] = {}
    for query in request.queries:
        if query.name and query.cmd:
            plan = _build_query(query, request, options, resolver, models)
            by_file.setdefault(query.filename, []).append(plan)
    modules = _modules(by_file)
    uses_exec_result = any(q.cmd == ":execresult" for m in modules for q in m.queries)
    _check_model_names(enums, models, resolver.uses_inet, uses_exec_result)
    return Plan(
        enums=enums,
        models=models,
        modules=modules,
        uses_inet=resolver.uses_inet,
        uses_exec_result=uses_exec_result,
    )


def _build_enums(request: Request) -> tuple[tuple[EnumClass, ...], dict[tuple[str, str], str]]:
    classes = []
    index = {}
    for schema in request.schemas:
        if schema.name in SYSTEM_SCHEMAS:
            continue
        for enum in schema.enums:
            name = naming.camel_case(
                _qualified_name(schema.name, enum.name, request.default_schema)
            )
            members = naming.unique(naming.enum_member(label) for label in enum.values)
            classes.append(
                EnumClass(name, tuple(zip(members, enum.values, strict=True)), enum.comment)
            )
            index[(schema.name, enum.name)] = name
    return tuple(sorted(classes, key=lambda e: e.name)), index


def _build_models(
    request: Request, options: Options, resolver: _TypeResolver
) -> tuple[ModelClass, ...]:
    models = []
    for schema in request.schemas:
        if schema.name in SYSTEM_SCHEMAS:
            continue
        for table in schema.tables:
            name = _qualified_name(schema.name, table.rel.name, request.default_schema)
            if not options.emit_exact_table_names:
                name = naming.singular(name, options.inflection_exclude_table_names)
            fields = _fields(table.columns, resolver, f"table {table.rel.name}")
            models.append(
                ModelClass(
                    name=naming.camel_case(name),
                    fields=tuple(fields),
                    comment=table.comment,
                    in_models=True,
                    table=Identifier(schema.name, table.rel.name),
                )
            )
    return tuple(sorted(models, key=lambda m: m.name))


def _fields(
    columns: tuple[Column, ...],
    resolver: _TypeResolver,
    where: str,
    embeds: dict[tuple[str, str], ModelClass] | None = None,
) -> list[Field]:
    """Fields named after the columns (`column_N` when unnamed), made unique.

    A sqlc.embed(table) column becomes a field named after the table's model
    (`task`) holding that model, found in `embeds` by (schema, table).
    """
    names = []
    fields = []
    for index, column in enumerate(columns):
        if column.embed_table is not None:
            table = column.embed_table
            model = (embeds or {}).get((table.schema or resolver.default_schema, table.name))
            if model is None:
                raise GenerationError(f"{where}: sqlc.embed({table.name}) names no known table")
            names.append(naming.snake_case(model.name))
            fields.append(Field("", embed=model))
        else:
            name = naming.identifier(column.name, "column") if column.name else ""
            name = name or f"column_{index + 1}"
            names.append(name)
            fields.append(Field("", type=resolver.resolve(column, f"{where}, column {name}")))
    pydantic = resolver.options.emit_pydantic_models
    escaped = [naming.field_name(name, resolver.imported_names) for name in names]
    if pydantic:
        escaped = [naming.pydantic_field_name(name) for name in escaped]
    return [
        Field(
            name,
            comment=column.comment,
            type=field.type,
            embed=field.embed,
            alias=original if pydantic and naming.pydantic_field_name(original) != original else "",
        )
        for name, original, field, column in zip(
            naming.unique(escaped), names, fields, columns, strict=True
        )
    ]


def _build_query(
    query: Query,
    request: Request,
    options: Options,
    resolver: _TypeResolver,
    models: tuple[ModelClass, ...],
) -> QueryPlan:
    where = f"query {query.name} ({query.filename})"
    if query.cmd == ":execlastid":
        raise GenerationError(
            f"{where}: :execlastid is not supported; PostgreSQL has no last insert id. "
            "Add `RETURNING id` and use :one instead"
        )
    if query.cmd not in SUPPORTED_COMMANDS:
        raise GenerationError(
            f"{where}: unknown command {query.cmd}; supported: "
            + ", ".join(sorted(SUPPORTED_COMMANDS))
        )
    if query.cmd in ROW_COMMANDS and not query.columns:
        raise GenerationError(
            f"{where}: {query.cmd} needs a query that returns columns; use :exec or add RETURNING"
        )
    params = _params(query, resolver, where)
    bundled = query.cmd in MULTI_COMMANDS or options.bundles_params(len(params))
    if bundled and options.emit_pydantic_models:
        params = _pydantic_params(params)
    if query.cmd in MULTI_COMMANDS and not params:
        raise GenerationError(f"{where}: {query.cmd} needs at least one parameter")
    value = _single_value(query, options, resolver, where)
    return QueryPlan(
        name=query.name,
        cmd=query.cmd,
        method=naming.method_name(query.name, resolver.imported_names),
        constant=naming.snake_case(query.name).upper(),
        sql=_copy_statement(query, params, where) if query.cmd == ":copyfrom" else query.text,
        comments=query.comments,
        params=params,
        params_class=ModelClass(
            f"{query.name}Params",
            tuple(Field(p.name, type=p.type, alias=p.alias) for p in params),
            is_params=True,
        )
        if bundled
        else None,
        result=_result_class(query, request, resolver, models, where)
        if query.cmd in ROW_COMMANDS and value is None
        else None,
        value=value,
    )


def _single_value(
    query: Query, options: Options, resolver: _TypeResolver, where: str
) -> ColumnType | None:
    """The type of the one column of a result, unless its rows are to be Row classes.

    sqlc-gen-go and sqlc-gen-python return such a value bare; sqlc.embed(table) is
    a whole model, not a value.
    """
    if query.cmd not in ROW_COMMANDS or options.emit_single_column_row_class:
        return None
    if len(query.columns) != 1 or query.columns[0].embed_table is not None:
        return None
    column = query.columns[0]
    name = column.name or "column_1"
    return resolver.resolve(column, f"{where}, column {name}")


def _params(query: Query, resolver: _TypeResolver, where: str) -> tuple[Param, ...]:
    ordered = sorted(query.params, key=lambda p: p.number)
    if [p.number for p in ordered] != list(range(1, len(ordered) + 1)):
        raise GenerationError(f"{where}: parameters must be numbered $1..$n without gaps")
    raw = [
        naming.identifier(p.column.name, "param") if p.column.name else f"dollar_{p.number}"
        for p in ordered
    ]
    names = naming.unique(naming.parameter_name(name) for name in raw)
    for p in ordered:
        if p.column.is_sqlc_slice:
            _check_slice(query, p.number, p.column.name, where)
    return tuple(
        Param(
            name,
            resolver.resolve(p.column, f"{where}, parameter ${p.number}"),
            # sqlc.arg(id_param) renames the parameter, not the column it goes to.
            p.column.original_name or p.column.name,
        )
        for name, p in zip(names, ordered, strict=True)
    )


def _check_slice(query: Query, number: int, name: str, where: str) -> None:
    """sqlc.slice() becomes one $n: PostgreSQL compares a list with it only in `= ANY($n)`."""
    if not re.search(rf"\bANY\s*\(\s*\${number}\s*\)", query.text, re.IGNORECASE):
        raise GenerationError(
            f"{where}: sqlc.slice({name}) works in PostgreSQL only as "
            f"`= ANY(sqlc.slice({name}))`; `IN (sqlc.slice(...))` would compare with one value"
        )


def _pydantic_params(params: tuple[Param, ...]) -> tuple[Param, ...]:
    """Params fields escaped where they would override a BaseModel attribute."""
    names = naming.unique(naming.pydantic_field_name(p.name) for p in params)
    return tuple(
        replace(p, name=name, alias=p.name if name != p.name else "")
        for name, p in zip(names, params, strict=True)
    )


def _copy_statement(query: Query, params: tuple[Param, ...], where: str) -> str:
    """:copyfrom sends rows with COPY, to the table and columns of the INSERT."""
    table = query.insert_into_table
    if table is None or not all(p.column for p in params):
        raise GenerationError(
            f"{where}: :copyfrom needs `INSERT INTO table (columns) "
            "VALUES ($1, ...)` with one plain parameter per column"
        )
    target = ".".join(_quote(part) for part in (table.schema, table.name) if part)
    columns = ", ".join(_quote(p.column) for p in params)
    return f"COPY {target} ({columns}) FROM STDIN"


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _result_class(
    query: Query,
    request: Request,
    resolver: _TypeResolver,
    models: tuple[ModelClass, ...],
    where: str,
) -> ModelClass:
    """The table's model when the columns are exactly its columns, else a Row class."""
    embeds = {(m.table.schema, m.table.name): m for m in models if m.table}
    fields = _fields(query.columns, resolver, where, embeds)
    for model in models:
        if _is_model_row(model, fields, query.columns, request.default_schema):
            return model
    return ModelClass(f"{query.name}Row", tuple(fields))


def _is_model_row(
    model: ModelClass, fields: list[Field], columns: tuple[Column, ...], default_schema: str
) -> bool:
    if len(model.fields) != len(fields) or model.table is None:
        return False
    for model_field, field, column in zip(model.fields, fields, columns, strict=True):
        if column.table is None or model_field.name != field.name:
            return False
        table = (column.table.schema or default_schema, column.table.name)
        if table != (model.table.schema, model.table.name) or model_field.type != field.type:
            return False
    return True


def _modules(by_file: dict[str, list[QueryPlan]]) -> tuple[QueryModule, ...]:
    """One module per queries file, named after it: `queries.sql` -> `queries.py`."""
    modules: dict[str, QueryModule] = {}
    for source, queries in sorted(by_file.items()):
        stem = source.rsplit("/", 1)[-1].removesuffix(".sql")
        name = naming.module_name(naming.identifier(stem, "queries"))
        if name in ("models", "__init__"):
            raise GenerationError(f"queries file {source} would overwrite {name}.py; rename it")
        if name in modules:
            raise GenerationError(
                f"queries files {modules[name].source} and {source} would both be {name}.py; "
                "rename one of them"
            )
        _check_method_names(source, queries)
        modules[name] = QueryModule(name, source, tuple(queries))
    return tuple(modules.values())


def _check_method_names(source: str, queries: list[QueryPlan]) -> None:
    """Two queries of one module whose names convert alike would overwrite each other's
    method, SQL constant and classes: `GetHTTPStatus` and `GetHttpStatus`."""
    seen: dict[str, str] = {}
    for query in queries:
        for name in (query.method, query.constant):
            if name in seen and seen[name] != query.name:
                raise GenerationError(
                    f"queries {seen[name]} and {query.name} ({source}) would both be named "
                    f"{name}; rename one of them"
                )
            seen[name] = query.name


def _check_model_names(
    enums: tuple[EnumClass, ...],
    models: tuple[ModelClass, ...],
    uses_inet: bool,
    uses_exec_result: bool,
) -> None:
    seen: set[str] = set()
    names = [e.name for e in enums] + [m.name for m in models]
    names += ["Inet"] * uses_inet + ["ExecResult"] * uses_exec_result
    for name in names:
        if name in seen:
            raise GenerationError(
                f"two objects would both be named {name} in models.py; "
                "rename one, or set emit_exact_table_names"
            )
        seen.add(name)
