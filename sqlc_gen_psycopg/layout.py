"""Laying out bracketed code the way ruff format does, so output needs no formatter.

A Group is a bracketed, comma-separated list. Like ruff (and black), it is put
on one line if that fits; else its contents go on one indented line; else one
item per line with a trailing comma. A magic trailing comma forces the last form.
"""

from dataclasses import dataclass, replace

LINE_LENGTH = 100
INDENT = "    "


@dataclass(frozen=True, slots=True)
class Group:
    open: str
    items: tuple["Item", ...]
    close: str
    # Always one item per line (ruff keeps that because of the trailing comma).
    exploded: bool = False
    # False for a bracketed expression that is not a list, e.g. a comprehension.
    trailing_comma: bool = True
    # A one-element tuple needs its comma even on one line.
    is_tuple: bool = False

    def flat(self) -> str:
        inner = ", ".join(flat(item) for item in self.items)
        if self.is_tuple and len(self.items) == 1:
            inner += ","
        return f"{self.open}{inner}{self.close}"


Item = str | Group


def flat(item: Item) -> str:
    return item if isinstance(item, str) else item.flat()


def render(item: Item, indent: str, suffix: str = "") -> list[str]:
    """The lines of `item` starting at `indent`, followed by `suffix` (e.g. ",")."""
    if isinstance(item, str):
        return [f"{indent}{item}{suffix}"]
    one_line = f"{indent}{item.flat()}{suffix}"
    if not item.exploded and _fits(one_line):
        return [one_line]
    inner = indent + INDENT
    if not item.exploded:
        contents = inner + Group("", item.items, "", is_tuple=item.is_tuple).flat()
        if _fits(contents):
            return [f"{indent}{item.open}", contents, f"{indent}{item.close}{suffix}"]
    lines = [f"{indent}{item.open}"]
    for element in item.items:
        lines += render(element, inner, "," if item.trailing_comma else "")
    lines.append(f"{indent}{item.close}{suffix}")
    return lines


def _fits(line: str) -> bool:
    return len(line) <= LINE_LENGTH


def prefixed(prefix: str, group: Group) -> Group:
    """`group` after some code on its first line, such as `return ` or `x = `."""
    return replace(group, open=prefix + group.open)
