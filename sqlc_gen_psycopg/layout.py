"""Laying out bracketed code the way ruff format does, so output needs no formatter.

A Group is a bracketed list of items. Like ruff (and black), it is put on one
line if that fits; else its contents go on one indented line; else one item
per line (with trailing commas for a comma-separated list). A magic trailing
comma forces the last form.
"""

from dataclasses import dataclass, replace

# ruff's default; the `line_length` option sets another.
DEFAULT_LINE_LENGTH = 88
INDENT = "    "


@dataclass(frozen=True, slots=True)
class Group:
    open: str
    items: tuple["Item", ...]
    close: str
    # Always one item per line (ruff keeps that because of the trailing comma).
    exploded: bool = False
    # ", " between list items; " " between the parts of an expression, such as a
    # comprehension or a conditional, which split into lines without commas.
    separator: str = ", "
    # A one-element tuple needs its comma even on one line.
    is_tuple: bool = False
    # The brackets appear only when the group is split: ruff's optional parentheses,
    # as in `return (` ... `)`.
    optional_brackets: bool = False
    # Split means one item per line, as ruff does for a def with one parameter
    # (it adds a trailing comma, which then keeps the parameter on its own line).
    explode_when_split: bool = False

    def flat(self) -> str:
        inner = self.separator.join(flat(item) for item in self.items)
        if self.is_tuple and len(self.items) == 1:
            inner += ","
        if self.optional_brackets:
            return f"{self.open.removesuffix('(')}{inner}{self.close.removeprefix(')')}"
        return f"{self.open}{inner}{self.close}"


Item = str | Group


def flat(item: Item) -> str:
    return item if isinstance(item, str) else item.flat()


def render(item: Item, indent: str, line_length: int, suffix: str = "") -> list[str]:
    """The lines of `item` starting at `indent`, followed by `suffix` (e.g. ",")."""
    if isinstance(item, str):
        return [f"{indent}{item}{suffix}"]
    one_line = f"{indent}{item.flat()}{suffix}"
    if not item.exploded and len(one_line) <= line_length:
        return [one_line]
    if not item.open and not item.close:
        # A bare expression inside someone else's brackets: one part per line.
        return _render_items(item, indent, line_length, suffix)
    inner = indent + INDENT
    if not item.exploded and not item.explode_when_split:
        contents = inner + replace(item, open="", close="", optional_brackets=False).flat()
        if len(contents) <= line_length:
            return [f"{indent}{item.open}", contents, f"{indent}{item.close}{suffix}"]
    return [
        f"{indent}{item.open}",
        *_render_items(item, inner, line_length),
        f"{indent}{item.close}{suffix}",
    ]


def _render_items(group: Group, indent: str, line_length: int, suffix: str = "") -> list[str]:
    # Optional brackets hold one expression, not a list: no trailing comma.
    comma = "," if group.separator == ", " and not group.optional_brackets else ""
    lines = []
    last = len(group.items) - 1
    for position, element in enumerate(group.items):
        # The last element carries the suffix, which counts towards its line's length.
        lines += render(element, indent, line_length, comma + suffix if position == last else comma)
    return lines


def prefixed(prefix: str, group: Group) -> Group:
    """`group` after some code on its first line, such as `return ` or `x = `."""
    return replace(group, open=prefix + group.open)


def call(function: str, *args: Item) -> Group:
    """`function(args)`."""
    return Group(f"{function}(", args, ")")


def expression(annotation: str) -> Item:
    """An annotation split the way ruff splits it: at top-level `|`, then in `[...]`."""
    operands = _split_top_level(annotation, " | ")
    if len(operands) > 1:
        rest = (with_prefix("| ", expression(operand)) for operand in operands[1:])
        return Group("", (expression(operands[0]), *rest), "", separator=" ")
    head, bracket, inner = annotation.partition("[")
    if bracket and annotation.endswith("]") and len(_split_top_level(inner[:-1], ", ")) == 1:
        return Group(f"{head}[", (expression(inner[:-1]),), "]")
    return annotation


def _split_top_level(text: str, separator: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += (char == "[") - (char == "]")
        if depth == 0 and text.startswith(separator, index):
            parts.append(text[start:index])
            start = index + len(separator)
    return [*parts, text[start:]]


def with_prefix(prefix: str, item: Item) -> Item:
    """`item` after `prefix` on its first line."""
    if isinstance(item, str):
        return prefix + item
    if not item.open and not item.close:
        return replace(item, items=(with_prefix(prefix, item.items[0]), *item.items[1:]))
    return prefixed(prefix, item)
