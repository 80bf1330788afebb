"""One module per queries file: SQL constants, Row/Params classes, the queriers.

Queries run on a psycopg raw cursor: it sends sqlc's SQL exactly as sqlc wrote
it, `$1..$n` placeholders included, so nothing in the SQL needs rewriting or
escaping (`%` signs, `$1` inside string literals, a parameter used twice).
"""

import ast
from dataclasses import dataclass, field, replace

from sqlc_gen_psycopg.emit_models import class_lines
from sqlc_gen_psycopg.layout import (
    INDENT,
    Group,
    Item,
    call,
    expression,
    prefixed,
    render,
    with_prefix,
)
from sqlc_gen_psycopg.naming import snake_case
from sqlc_gen_psycopg.options import Options
from sqlc_gen_psycopg.plan import (
    MULTI_COMMANDS,
    ROW_COMMANDS,
    ModelClass,
    Param,
    QueryModule,
    QueryPlan,
)
from sqlc_gen_psycopg.source import ModuleWriter, docstring, string_literal
from sqlc_gen_psycopg.typemap import ColumnType, Import, Kind

# The module's private helpers, as Groups so that they are laid out for the line length.
_OPTIONAL_SIGNATURE = (
    "def _optional",
    ("convert: Callable[[Any], _T]", "value: Any"),
    "_T | None",
)
_OPTIONAL_BODY = (
    f'{INDENT}"""Convert a value unless it is NULL."""',
    f"{INDENT}return None if value is None else convert(value)",
)
_ARRAY_SIGNATURE = (
    "def _array",
    (
        "value: Sequence[Any] | None",
        "wrap: Callable[[Any], Any] | None = None",
        "dims: int = 1",
    ),
    "list[Any] | None",
)
_ARRAY_BODY = (
    f'{INDENT}"""Copy a sequence into the nested lists psycopg sends as an array."""',
    f"{INDENT}if value is None:",
    f"{INDENT * 2}return None",
    f"{INDENT}if dims > 1:",
    f"{INDENT * 2}return [_array(item, wrap, dims - 1) for item in value]",
)
_ARRAY_RETURN = Group(
    "return [",
    (
        Group(
            "", ("item", "if wrap is None or item is None", "else wrap(item)"), "", separator=" "
        ),
        "for item in value",
    ),
    "]",
    separator=" ",
)
# The wrapper a JSON parameter goes through, and the helper that applies it
# unless the caller has wrapped the value already (Json or Jsonb).
_JSON_HELPERS = {"Json": "_json", "Jsonb": "_jsonb"}


def _json_helper(wrapper: str) -> tuple[str, ...]:
    return (
        f"def {_JSON_HELPERS[wrapper]}(value: Any) -> Any:",
        f'{INDENT}"""A value for a {wrapper.lower()} parameter, wrapped unless it is already."""',
        f"{INDENT}return value if isinstance(value, (Json, Jsonb)) else {wrapper}(value)",
    )


_TEXT_ARRAY_COMMENT = (
    "# psycopg does not know the OIDs of the schema's enums, so it returns an enum",
    "# array in PostgreSQL's text form, such as '{queued,running}'.",
)
_TEXT_ARRAY = call(
    "_TEXT_ARRAY = Transformer().get_loader",
    'postgres.types["text"].array_oid',
    "pq.Format.TEXT",
)
_ENUM_ARRAY_HEAD = (
    "def _enum_array(cls: Callable[[Any], Any], value: Any) -> Any:",
    f'{INDENT}"""Parse an enum array into (nested) lists of members."""',
    f"{INDENT}if value is None:",
    f"{INDENT * 2}return None",
    f"{INDENT}if isinstance(value, str):",
    f"{INDENT * 2}value = _TEXT_ARRAY.load(value.encode())",
)
_ENUM_ARRAY_RETURN = Group(
    "return [",
    (
        Group(
            "",
            ("_enum_array(cls, item)", "if isinstance(item, list)", "else _optional(cls, item)"),
            "",
            separator=" ",
        ),
        "for item in value",
    ),
    "]",
    separator=" ",
)

# Indentation of a method, its body, and a block inside the body.
_METHOD = INDENT
_BODY = INDENT * 2
_BLOCK = INDENT * 3

_JSON_WRAPPERS = {Kind.JSON: "Json", Kind.JSONB: "Jsonb"}


@dataclass(frozen=True, slots=True)
class _Flavor:
    """What differs between the sync and the async querier."""

    name: str
    connection: str
    cursor: str
    is_async: bool

    @property
    def def_(self) -> str:
        return "async def" if self.is_async else "def"

    @property
    def with_(self) -> str:
        return "async with" if self.is_async else "with"

    @property
    def for_(self) -> str:
        return "async for" if self.is_async else "for"

    @property
    def await_(self) -> str:
        return "await " if self.is_async else ""


_SYNC = _Flavor("Querier", "psycopg.Connection[Any]", "psycopg.RawCursor", is_async=False)
_ASYNC = _Flavor(
    "AsyncQuerier", "psycopg.AsyncConnection[Any]", "psycopg.AsyncRawCursor", is_async=True
)


@dataclass(slots=True)
class _QueryModule:
    writer: ModuleWriter
    options: Options
    source: str
    helpers: set[str] = field(default_factory=set)
    # Row converters to emit, in order of first use.
    converters: dict[str, ModelClass] = field(default_factory=dict)

    def build(self, queries: tuple[QueryPlan, ...]) -> str:
        for query in queries:
            self._add_query_definitions(query)
        for flavor, wanted in (
            (_SYNC, self.options.emit_sync_querier),
            (_ASYNC, self.options.emit_async_querier),
        ):
            if wanted:
                self.writer.add(self._querier(flavor, queries), spaced=True)
        self._add_converters()
        self._add_helpers()
        if _refers_to_models(self.writer.text()):
            self.writer.use(Import(self.options.package or ".", "models"))
        return self.writer.text()

    def _add_query_definitions(self, query: QueryPlan) -> None:
        header = f"-- name: {query.name} {query.cmd}\n"
        self.writer.add(
            [f"{query.constant} = {string_literal(header + query.sql + chr(10))}"], spaced=False
        )
        for model in (query.params_class, query.result):
            if model is not None and not model.in_models:
                self.writer.add(
                    class_lines(model, self.options, self.writer, in_models=False), spaced=True
                )

    # -- the querier classes ------------------------------------------------------------

    def _querier(self, flavor: _Flavor, queries: tuple[QueryPlan, ...]) -> list[str]:
        self.writer.use(
            Import("psycopg"), Import("psycopg.rows", "tuple_row"), Import("typing", "Any")
        )
        lines = [
            f"class {flavor.name}:",
            f'{_METHOD}"""The queries of {self.source}, run in the connection\'s current '
            'transaction."""',
            "",
            f"{_METHOD}def __init__(self, conn: {flavor.connection}) -> None:",
            f"{_BODY}self._conn = conn",
            "",
            f"{_METHOD}def _cursor(self) -> {flavor.cursor}[tuple[Any, ...]]:",
            f"{_BODY}# A raw cursor takes the $1..$n placeholders as sqlc wrote them; tuple",
            f"{_BODY}# rows keep results independent of the connection's row factory.",
            f"{_BODY}return {flavor.cursor}(self._conn, row_factory=tuple_row)",
        ]
        for query in queries:
            lines += ["", *self._method(flavor, query)]
        return lines

    def _method(self, flavor: _Flavor, query: QueryPlan) -> list[str]:
        signature = _def(
            f"{flavor.def_} {query.method}",
            self._signature(query),
            self._return_annotation(flavor, query),
        )
        lines = self._render(signature, _METHOD)
        lines += docstring(list(query.comments), _BODY)
        if query.cmd == ":copyfrom":
            return lines + self._copy_body(flavor, query)
        if query.cmd.startswith(":batch"):
            return lines + self._batch_body(flavor, query)
        return lines + self._body(flavor, query)

    def _signature(self, query: QueryPlan) -> tuple[Item, ...]:
        if query.params_class is None:
            params = tuple(
                with_prefix(f"{p.name}: ", expression(self._param_annotation(p.type)))
                for p in query.params
            )
            return ("self", "*", *params) if params else ("self",)
        if query.cmd in MULTI_COMMANDS:
            self.writer.use(Import("collections.abc", "Iterable"))
            iterable = expression(f"Iterable[{query.params_class.name}]")
            return ("self", with_prefix("params: ", iterable))
        return ("self", f"arg: {query.params_class.name}")

    def _param_annotation(self, column_type: ColumnType) -> str:
        self.writer.use(*column_type.imports(param=True))
        return column_type.annotation(in_models=False, param=True)

    def _return_annotation(self, flavor: _Flavor, query: QueryPlan) -> str:
        row = self._result_annotation(query) if query.cmd in ROW_COMMANDS else ""
        if query.cmd == ":many" and self.options.emit_streaming_many:
            # Generators, not mere iterators: close() / aclose() (or contextlib's closing /
            # aclosing) ends a stream early and frees the connection.
            if flavor.is_async:
                self.writer.use(Import("collections.abc", "AsyncGenerator"))
                return f"AsyncGenerator[{row}, None]"
            self.writer.use(Import("collections.abc", "Generator"))
            return f"Generator[{row}, None, None]"
        return {
            ":one": _or_none(row),
            ":many": f"list[{row}]",
            ":exec": "None",
            ":execrows": "int",
            ":execresult": "models.ExecResult",
            ":copyfrom": "int",
            ":batchexec": "None",
            ":batchone": f"list[{_or_none(row)}]",
            ":batchmany": f"list[list[{row}]]",
        }[query.cmd]

    def _result_annotation(self, query: QueryPlan) -> str:
        """What a result row becomes: a model or Row class, or the value of its one column."""
        if query.value is None:
            assert query.result is not None
            return self._row_class(query.result)
        self.writer.use(*query.value.imports(param=False))
        return query.value.annotation(in_models=False, param=False)

    def _from_row(self, query: QueryPlan) -> Item:
        """The expression that turns the tuple `row` into what _result_annotation says."""
        if query.value is None:
            assert query.result is not None
            return call(self._converter(query.result), "row")
        return self._result_value(query.value, "row[0]")

    @staticmethod
    def _row_class(model: ModelClass) -> str:
        return f"models.{model.name}" if model.in_models else model.name

    def _body(self, flavor: _Flavor, query: QueryPlan) -> list[str]:
        """:one, :many, :exec, :execrows, :execresult: one execute on a fresh cursor."""
        aw = flavor.await_
        items = (query.constant, self._args(query)) if query.params else (query.constant,)
        if query.cmd == ":many" and self.options.emit_streaming_many:
            return self._stream_body(flavor, items, query)
        lines = [
            f"{_BODY}{flavor.with_} self._cursor() as cur:",
            *self._render(Group(f"{aw}cur.execute(", items, ")"), _BLOCK),
        ]
        if query.cmd == ":one" and query.value is not None and query.value.is_void:
            # Nothing to return: the row holds only None.
            return lines
        if query.cmd == ":one":
            returned = replace(
                _none_or(self._from_row(query)), open="return (", close=")", optional_brackets=True
            )
            return [*lines, f"{_BLOCK}row = {aw}cur.fetchone()", *self._render(returned, _BODY)]
        if query.cmd == ":many":
            rows = _comprehension(self._from_row(query), f"{aw}cur.fetchall()")
            return lines + self._render(prefixed("return ", rows), _BLOCK)
        if query.cmd == ":execrows":
            return [*lines, f"{_BLOCK}return cur.rowcount"]
        if query.cmd == ":execresult":
            result = Group(
                "return models.ExecResult(",
                ("rowcount=cur.rowcount", "statusmessage=cur.statusmessage"),
                ")",
            )
            return lines + self._render(result, _BLOCK)
        return lines

    def _stream_body(self, flavor: _Flavor, items: tuple[Item, ...], query: QueryPlan) -> list[str]:
        """:many with emit_streaming_many: a generator over cursor.stream(), which hands
        over each row as the server sends it, so no result is ever held whole."""
        loop = Group(f"{flavor.for_} row in cur.stream(", items, "):")
        return [
            f"{_BODY}{flavor.with_} self._cursor() as cur:",
            *self._render(loop, _BLOCK),
            *self._render(with_prefix("yield ", self._from_row(query)), _BLOCK + INDENT),
        ]

    def _args(self, query: QueryPlan, prefix: str = "") -> Group:
        """The tuple of values for $1..$n."""
        if not prefix and query.params_class is not None:
            prefix = "arg."
        values = tuple(self._param_value(p, f"{prefix}{p.name}") for p in query.params)
        return Group("(", values, ")", is_tuple=True)

    def _copy_body(self, flavor: _Flavor, query: QueryPlan) -> list[str]:
        write = Group(f"{flavor.await_}copy.write_row(", (self._args(query, "p."),), ")")
        return [
            f"{_BODY}{flavor.with_} self._cursor() as cur:",
            *self._render(
                Group(f"{flavor.with_} cur.copy(", (query.constant,), ") as copy:"), _BLOCK
            ),
            f"{_BLOCK}{INDENT}for p in params:",
            *self._render(write, _BLOCK + INDENT * 2),
            # Read while the cursor is open: closing it forgets the count.
            f"{_BLOCK}return cur.rowcount",
        ]

    def _batch_body(self, flavor: _Flavor, query: QueryPlan) -> list[str]:
        """executemany() runs the statement once per parameter set, pipelined."""
        aw = flavor.await_
        args = _comprehension(self._args(query, "p."), "params", target="p")
        lines = self._render(prefixed("args = ", args), _BODY)
        returning = query.cmd != ":batchexec"
        execute = Group(
            f"{aw}cur.executemany(",
            (query.constant, "args", *(["returning=True"] if returning else [])),
            ")",
        )
        if not returning:
            return [
                *lines,
                f"{_BODY}{flavor.with_} self._cursor() as cur:",
                *self._render(execute, _BLOCK),
            ]
        value = self._from_row(query)
        result_type = self._return_annotation(flavor, query)
        inner = _BLOCK + INDENT
        if query.cmd == ":batchone":
            collect = [
                f"{inner}row = {aw}cur.fetchone()",
                *self._render(Group("results.append(", (_none_or(value),), ")"), inner),
            ]
        else:
            rows = _comprehension(value, f"{aw}cur.fetchall()")
            collect = self._render(Group("results.append(", (rows,), ")"), inner)
        return [
            *lines,
            *self._render(with_prefix("results: ", expression(result_type)), _BODY, " = []"),
            f"{_BODY}if not args:",
            f"{_BLOCK}return results",
            f"{_BODY}{flavor.with_} self._cursor() as cur:",
            *self._render(execute, _BLOCK),
            f"{_BLOCK}# executemany(returning=True) leaves one result set per parameter set.",
            f"{_BLOCK}while True:",
            *collect,
            f"{inner}if not cur.nextset():",
            f"{inner}{INDENT}return results",
        ]

    # -- values in and out --------------------------------------------------------------

    def _param_value(self, param: Param, value: str) -> Item:
        """What the driver gets for a parameter: JSON wrapped, sequences made lists."""
        kind = param.type.base.kind
        wrapper = _JSON_WRAPPERS.get(kind)
        if wrapper:
            self._need(wrapper)
            wrapper = _JSON_HELPERS[wrapper]
        if param.type.dims:
            self._need("array")
            extra = [wrapper] if wrapper else []
            if param.type.dims > 1:
                extra.append(f"dims={param.type.dims}")
            return call("_array", value, *extra)
        if wrapper and param.type.nullable:
            self._need("optional")
            return call("_optional", wrapper, value)
        if wrapper:
            return call(wrapper, value)
        return value

    def _converter(self, model: ModelClass) -> str:
        self.converters.setdefault(model.name, model)
        for f in model.fields:
            if f.embed is not None:
                self._converter(f.embed)
        return _converter_name(model)

    def _add_converters(self) -> None:
        for model in self.converters.values():
            self.writer.use(Import("typing", "Any"))
            values: list[Item] = []
            index = 0
            for f in model.fields:
                if f.embed is not None:
                    value: Item = call(_converter_name(f.embed), f"row[{index}:{index + f.width}]")
                else:
                    assert f.type is not None
                    value = self._result_value(f.type, f"row[{index}]")
                # An escaped pydantic field is given by its alias, the column's name.
                values.append(with_prefix(f"{f.alias or f.name}=", value))
                index += f.width
            returned = self._row_class(model)
            signature = _def(f"def {_converter_name(model)}", ("row: tuple[Any, ...]",), returned)
            constructor = Group(f"return {returned}(", tuple(values), ")", exploded=True)
            self.writer.add(
                [*self._render(signature, ""), *self._render(constructor, INDENT)], spaced=True
            )

    def _result_value(self, column_type: ColumnType, value: str) -> Item:
        """A field's value from psycopg's: enums become members, the rest is as loaded."""
        if column_type.base.kind is not Kind.ENUM:
            return value
        enum_class = f"models.{column_type.base.expr}"
        if column_type.dims:
            self._need("enum_array")
            return call("_enum_array", enum_class, value)
        if column_type.nullable:
            self._need("optional")
            return call("_optional", enum_class, value)
        return call(enum_class, value)

    def _need(self, helper: str) -> None:
        self.helpers.add(helper)
        if helper == "enum_array":
            self.helpers.add("optional")

    def _add_helpers(self) -> None:
        if self.helpers:
            self.writer.use(Import("typing", "Any"), Import("collections.abc", "Callable"))
        if "optional" in self.helpers:
            self.writer.use(Import("typing", "TypeVar"))
            self.writer.add(['_T = TypeVar("_T")'], spaced=False)
            signature = self._render(_def(*_OPTIONAL_SIGNATURE), "")
            self.writer.add([*signature, *_OPTIONAL_BODY], spaced=True)
        if "array" in self.helpers:
            self.writer.use(Import("collections.abc", "Sequence"))
            signature = self._render(_def(*_ARRAY_SIGNATURE), "")
            returned = self._render(_ARRAY_RETURN, INDENT)
            self.writer.add([*signature, *_ARRAY_BODY, *returned], spaced=True)
        for wrapper in sorted(_JSON_HELPERS):
            if wrapper in self.helpers:
                self.writer.use(
                    Import("psycopg.types.json", "Json"), Import("psycopg.types.json", "Jsonb")
                )
                self.writer.add(list(_json_helper(wrapper)), spaced=True)
        if "enum_array" in self.helpers:
            self.writer.use(
                Import("psycopg", "postgres"),
                Import("psycopg", "pq"),
                Import("psycopg.adapt", "Transformer"),
            )
            self.writer.add([*_TEXT_ARRAY_COMMENT, *self._render(_TEXT_ARRAY, "")], spaced=True)
            returned = self._render(_ENUM_ARRAY_RETURN, INDENT)
            self.writer.add([*_ENUM_ARRAY_HEAD, *returned], spaced=True)

    def _render(self, item: Item, indent: str, suffix: str = "") -> list[str]:
        return render(item, indent, self.options.line_length, suffix)


def _refers_to_models(code: str) -> bool:
    """Whether code uses the name `models` (text in SQL or docstrings does not count)."""
    return any(
        isinstance(node, ast.Name) and node.id == "models" for node in ast.walk(ast.parse(code))
    )


def _comprehension(element: Item, iterable: str, target: str = "row") -> Group:
    """`[element for target in iterable]`."""
    return Group("[", (element, f"for {target} in {iterable}"), "]", separator=" ")


def _def(head: str, parameters: tuple[Item, ...], returns: str) -> Group:
    """A function signature: `head(parameters) -> returns:`."""
    return Group(
        f"{head}(", parameters, f") -> {returns}:", explode_when_split=len(parameters) == 1
    )


def _none_or(value: Item) -> Group:
    """`None if row is None else value`, without brackets of its own."""
    return Group("", ("None", "if row is None", with_prefix("else ", value)), "", separator=" ")


def _or_none(annotation: str) -> str:
    """`T | None`, for :one's missing row; a nullable column's type has it already."""
    if annotation == "None" or annotation.endswith(" | None"):
        return annotation
    return f"{annotation} | None"


def _converter_name(model: ModelClass) -> str:
    return f"_{snake_case(model.name)}_from_row"


def emit_queries(module: QueryModule, options: Options, sqlc_version: str) -> str:
    writer = ModuleWriter(
        sqlc_version, options.line_length, source=module.source, package=options.package
    )
    return _QueryModule(writer, options, module.source).build(module.queries)
