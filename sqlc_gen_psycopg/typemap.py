"""PostgreSQL types to Python types, as psycopg 3 loads and dumps them."""

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Import:
    """`import module`, or `from module import name` when name is set."""

    module: str
    name: str = ""


class Kind(enum.Enum):
    """What the generated code must do with a value beyond passing it through."""

    PLAIN = "plain"
    # psycopg returns enums as str (it does not know their OIDs): results are
    # converted to the enum class, arrays parsed from their text form.
    ENUM = "enum"
    # psycopg needs dicts, lists... wrapped to send them as json/jsonb.
    JSON = "json"
    JSONB = "jsonb"


@dataclass(frozen=True, slots=True)
class BaseType:
    """The Python type of one value (not an array, not nullable)."""

    expr: str
    imports: tuple[Import, ...] = ()
    kind: Kind = Kind.PLAIN
    # expr names something defined in models.py (an enum, the Inet alias).
    in_models: bool = False
    # pydantic can validate it without arbitrary_types_allowed.
    pydantic_native: bool = True


@dataclass(frozen=True, slots=True)
class ColumnType:
    base: BaseType
    dims: int
    nullable: bool

    def annotation(self, *, in_models: bool, param: bool) -> str:
        """The annotation of a field (param=False) or of a method parameter."""
        expr = (
            f"models.{self.base.expr}" if self.base.in_models and not in_models else self.base.expr
        )
        if param and self.base.kind is Kind.ENUM:
            # psycopg sends a str subclass as text, so a plain label works as well.
            expr = f"{expr} | str"
        if self.is_void:
            return expr
        for _ in range(self.dims):
            # Parameters take any sequence (list[Member] is not a list[Member | str]);
            # results are the lists psycopg builds.
            expr = f"Sequence[{expr}]" if param else f"list[{expr}]"
        return f"{expr} | None" if self.nullable else expr

    @property
    def is_void(self) -> bool:
        """A void result (`SELECT pg_sleep(1)`): always None, NULL or not."""
        return self.base is VOID and not self.dims

    def imports(self, *, param: bool) -> tuple[Import, ...]:
        extra = (Import("collections.abc", "Sequence"),) if param and self.dims else ()
        return self.base.imports + extra


ANY = BaseType("Any", (Import("typing", "Any"),))
# What a function such as pg_sleep() returns: psycopg loads it as None.
VOID = BaseType("None")

_INT = BaseType("int")
_FLOAT = BaseType("float")
_STR = BaseType("str")
_DECIMAL = BaseType("decimal.Decimal", (Import("decimal"),))
_DATE = BaseType("datetime.date", (Import("datetime"),))
_TIME = BaseType("datetime.time", (Import("datetime"),))
_DATETIME = BaseType("datetime.datetime", (Import("datetime"),))
_RANGE = Import("psycopg.types.range", "Range")
_MULTIRANGE = Import("psycopg.types.multirange", "Multirange")

# An alias defined in models.py (see emit_models): four ipaddress types are too long to repeat.
INET = BaseType("Inet", (), Kind.PLAIN, in_models=True)


def _range(kind: str, element: BaseType) -> BaseType:
    imported = _MULTIRANGE if kind == "Multirange" else _RANGE
    return BaseType(f"{kind}[{element.expr}]", (*element.imports, imported), pydantic_native=False)


# Keyed by canonical name (see canonical_type_name).
BUILTIN_TYPES: dict[str, BaseType] = {
    **dict.fromkeys(("int2", "int4", "int8", "oid"), _INT),
    **dict.fromkeys(("float4", "float8"), _FLOAT),
    "numeric": _DECIMAL,
    "bool": BaseType("bool"),
    # psycopg has no loader for these and returns PostgreSQL's text form.
    **dict.fromkeys(
        (
            "text",
            "varchar",
            "bpchar",
            "name",
            "citext",
            "xml",
            "money",
            "macaddr",
            "macaddr8",
            "bit",
            "varbit",
            "tsvector",
            "tsquery",
            "point",
            "line",
            "lseg",
            "box",
            "path",
            "polygon",
            "circle",
        ),
        _STR,
    ),
    "bytea": BaseType("bytes"),
    "date": _DATE,
    **dict.fromkeys(("time", "timetz"), _TIME),
    **dict.fromkeys(("timestamp", "timestamptz"), _DATETIME),
    "interval": BaseType("datetime.timedelta", (Import("datetime"),)),
    "uuid": BaseType("uuid.UUID", (Import("uuid"),)),
    "inet": INET,
    "cidr": BaseType("ipaddress.IPv4Network | ipaddress.IPv6Network", (Import("ipaddress"),)),
    "void": VOID,
    "json": BaseType("Any", (Import("typing", "Any"),), Kind.JSON),
    "jsonb": BaseType("Any", (Import("typing", "Any"),), Kind.JSONB),
    **{
        f"{name}{suffix}": _range(kind, element)
        for name, element in (
            ("int4", _INT),
            ("int8", _INT),
            ("num", _DECIMAL),
            ("date", _DATE),
            ("ts", _DATETIME),
            ("tstz", _DATETIME),
        )
        for suffix, kind in (("range", "Range"), ("multirange", "Multirange"))
    },
}

# Other spellings sqlc passes through from the schema, to the canonical name.
_ALIASES = {
    "smallint": "int2",
    "smallserial": "int2",
    "serial2": "int2",
    "integer": "int4",
    "int": "int4",
    "serial": "int4",
    "serial4": "int4",
    "bigint": "int8",
    "bigserial": "int8",
    "serial8": "int8",
    "real": "float4",
    "float": "float8",
    "double precision": "float8",
    "decimal": "numeric",
    "boolean": "bool",
    "character varying": "varchar",
    "char": "bpchar",
    "character": "bpchar",
    "bit varying": "varbit",
    "time without time zone": "time",
    "time with time zone": "timetz",
    "timestamp without time zone": "timestamp",
    "timestamp with time zone": "timestamptz",
}


def canonical_type_name(schema: str, name: str) -> tuple[str, str]:
    """(schema, name) of a type with PostgreSQL's own schema and aliases removed.

    sqlc spells one type several ways: `int4`, `pg_catalog.int4`, `integer`; an
    enum of another schema may come as schema `other`, name `mood` or as schema
    ``, name `other.mood`.
    """
    if not schema and "." in name:
        schema, name = name.split(".", 1)
    name = name.lower()
    if schema == "pg_catalog":
        schema = ""
    return schema, _ALIASES.get(name, name)
