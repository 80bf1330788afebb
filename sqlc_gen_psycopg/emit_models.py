"""models.py: one enum class per PostgreSQL enum, one class per table."""

from sqlc_gen_psycopg.layout import INDENT, Group, expression, render
from sqlc_gen_psycopg.options import Options
from sqlc_gen_psycopg.plan import EnumClass, ModelClass, Plan
from sqlc_gen_psycopg.source import ModuleWriter, docstring, string_literal
from sqlc_gen_psycopg.typemap import Import

_INET_COMMENT = "# psycopg loads inet as an address, or as an interface when it has a netmask."
_INET_ALIAS = Group(
    "Inet: TypeAlias = (",
    (
        expression(
            "ipaddress.IPv4Address | ipaddress.IPv6Address"
            " | ipaddress.IPv4Interface | ipaddress.IPv6Interface"
        ),
    ),
    ")",
    optional_brackets=True,
)

# Members named like these are what an enum's labels say (`o`, `i`), yet ruff's E741 flags
# them as easily mistaken for 0 and 1; the comment silences that one line.
_AMBIGUOUS = dict.fromkeys(("O", "I"), "  # noqa: E741")

_EXEC_RESULT = ModelClass(
    name="ExecResult",
    fields=(),
    comment="What an :execresult query reports: rows affected and the command's status.",
    in_models=True,
)


def emit_models(plan: Plan, options: Options, sqlc_version: str) -> str:
    writer = ModuleWriter(sqlc_version, options.line_length)
    if plan.uses_inet:
        writer.use(Import("ipaddress"), Import("typing", "TypeAlias"))
        alias = render(_INET_ALIAS, "", options.line_length)
        writer.add([_INET_COMMENT, *alias], spaced=False)
    for enum_class in plan.enums:
        writer.use(Import("enum"))
        if not options.emit_str_enum:
            # sqlc-gen-python's (str, enum.Enum), which ruff would turn into StrEnum.
            writer.noqa.add("UP042")
        writer.add(_enum_lines(enum_class, options), spaced=True)
    for model in plan.models:
        writer.add(class_lines(model, options, writer, in_models=True), spaced=True)
    if plan.uses_exec_result:
        writer.add(_exec_result_lines(options, writer), spaced=True)
    return writer.text()


def _enum_lines(enum_class: EnumClass, options: Options) -> list[str]:
    # StrEnum members are str, so they compare and format as their label.
    base = "enum.StrEnum" if options.emit_str_enum else "str, enum.Enum"
    lines = [f"class {enum_class.name}({base}):"]
    doc = docstring(enum_class.comment.splitlines(), INDENT)
    if doc:
        lines += [*doc, ""]
    lines += [
        f"{INDENT}{member} = {_string(label)}{_AMBIGUOUS.get(member, '')}"
        for member, label in enum_class.members
    ]
    return lines


def _string(value: str) -> str:
    """A one-line string literal in ruff's preferred (double) quotes."""
    if "\n" in value or "\\" in value:
        return string_literal(value)
    if '"' in value and "'" not in value:
        return f"'{value}'"
    return '"' + value.replace('"', '\\"') + '"'


def class_header(name: str, options: Options, writer: ModuleWriter) -> list[str]:
    """A dataclass with slots and keyword-only fields, or a pydantic model."""
    if options.emit_pydantic_models:
        writer.use(Import("pydantic"))
        return [f"class {name}(pydantic.BaseModel):"]
    writer.use(Import("dataclasses"))
    return ["@dataclasses.dataclass(slots=True, kw_only=True)", f"class {name}:"]


def class_lines(
    model: ModelClass, options: Options, writer: ModuleWriter, *, in_models: bool
) -> list[str]:
    header = class_header(model.name, options, writer)
    lines = list(header)
    doc = docstring(model.comment.splitlines(), INDENT)
    if doc:
        lines += [*doc, ""]
    if options.emit_pydantic_models and any(
        f.type and not f.type.base.pydantic_native for f in model.fields
    ):
        # Psycopg's Range and overridden types are not types pydantic validates.
        config = "model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)"
        lines += [f"{INDENT}{config}", ""]
    for field in model.fields:
        if field.comment:
            lines += [f"{INDENT}# {line}".rstrip() for line in field.comment.splitlines()]
        if field.embed is not None:
            annotation = field.embed.name if in_models else f"models.{field.embed.name}"
        else:
            assert field.type is not None
            annotation = field.type.annotation(in_models=in_models, param=model.is_params)
            writer.use(*field.type.imports(param=model.is_params))
        # A long annotation is wrapped in brackets, as ruff does.
        wrapped = Group(f"{field.name}: (", (expression(annotation),), ")", optional_brackets=True)
        default = f" = pydantic.Field(alias={_string(field.alias)})" if field.alias else ""
        lines += render(wrapped, INDENT, options.line_length, default)
    if len(lines) == len(header):
        # A table without columns (all dropped) still needs a class body.
        lines.append(f"{INDENT}pass")
    return lines


def _exec_result_lines(options: Options, writer: ModuleWriter) -> list[str]:
    lines = class_lines(_EXEC_RESULT, options, writer, in_models=True)
    return [*lines, f"{INDENT}rowcount: int", f"{INDENT}statusmessage: str | None"]
