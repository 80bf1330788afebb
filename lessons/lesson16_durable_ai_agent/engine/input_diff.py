"""What changed between two JSON values, said the way a person reads a code review.

A non-determinism error used to show two JSON blobs, and left the reader to
find the one key that differs in two lines of a hundred characters. This
module names each difference by its path in the value, one line each:

    amount_cents: 4200 -> 4620
    currency: added "EUR"
    coupon: removed (was "WELCOME")
    items[1].sku: "MUG" -> "CUP"

Objects are compared key by key, arrays index by index, anything else by
value. A value whose type changed (an object that became an array) is one
difference, at its path.
"""

from __future__ import annotations

import json
from typing import Any

# More differences than this are summed up in a last line: the first ones are
# what a reader needs to recognise the change.
MAX_LINES = 20


def describe_changes(recorded: Any, new: Any) -> list[str]:
    """One line per difference from `recorded` to `new` (both JSON values); [] when equal."""
    lines: list[str] = []
    _compare("", recorded, new, lines)
    if len(lines) > MAX_LINES:
        hidden = len(lines) - MAX_LINES
        lines = [*lines[:MAX_LINES], f"... and {hidden} more"]
    return lines


def _compare(path: str, recorded: Any, new: Any, lines: list[str]) -> None:
    if isinstance(recorded, dict) and isinstance(new, dict):
        for key in sorted(recorded.keys() | new.keys()):
            child = f"{path}.{key}" if path else str(key)
            if key not in new:
                lines.append(f"{child}: removed (was {_show(recorded[key])})")
            elif key not in recorded:
                lines.append(f"{child}: added {_show(new[key])}")
            else:
                _compare(child, recorded[key], new[key], lines)
    elif isinstance(recorded, list) and isinstance(new, list):
        for index in range(max(len(recorded), len(new))):
            child = f"{path}[{index}]"
            if index >= len(new):
                lines.append(f"{child}: removed (was {_show(recorded[index])})")
            elif index >= len(recorded):
                lines.append(f"{child}: added {_show(new[index])}")
            else:
                _compare(child, recorded[index], new[index], lines)
    elif type(recorded) is not type(new) or recorded != new:
        # `type(...) is not` as well: JSON's 1 and true, or 1 and 1.0, differ in
        # the history's canonical text although Python finds them equal.
        lines.append(f"{path or '(the whole input)'}: {_show(recorded)} -> {_show(new)}")


def _show(value: Any) -> str:
    """A value as JSON, cut short when it is long: the path says where to look."""
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return text if len(text) <= 60 else f"{text[:57]}..."
