"""Reading a lesson's `sql/queries.sql` as sqlc does: named queries, `sqlc.arg()` parameters.

The pgbench ceiling runs the lesson's own query text, so when the lesson's SQL
changes, the ceiling follows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s+:(\w+)\s*$")
# sqlc.arg(name), sqlc.narg(name), and the quoted form sqlc.arg('name').
_PARAMETER = re.compile(r"sqlc\.n?arg\(\s*'?(\w+)'?\s*\)")


@dataclass(frozen=True)
class NamedQuery:
    name: str
    command: str  # :one, :many, :exec ...
    text: str  # without the comment lines, and without the final semicolon

    @property
    def parameters(self) -> list[str]:
        """Parameter names, each once, in order of first use."""
        return list(dict.fromkeys(_PARAMETER.findall(self.text)))

    def substitute(self, replacements: Mapping[str, str]) -> str:
        """The text with each `sqlc.arg(name)` replaced by `replacements[name]`."""
        missing = [name for name in self.parameters if name not in replacements]
        if missing:
            raise KeyError(
                f"query {self.name} has parameters the benchmark does not know how to fill: "
                f"{', '.join(missing)}"
            )
        return _PARAMETER.sub(lambda match: replacements[match.group(1)], self.text)


def read_queries(path: Path) -> dict[str, NamedQuery]:
    """Every named query of a sqlc queries file, by name."""
    queries: dict[str, NamedQuery] = {}
    header: tuple[str, str] | None = None
    lines: list[str] = []

    def finish() -> None:
        if header is not None:
            text = "\n".join(lines).strip().removesuffix(";").rstrip()
            queries[header[0]] = NamedQuery(name=header[0], command=header[1], text=text)

    for line in path.read_text().splitlines():
        match = _NAME.match(line.strip())
        if match:
            finish()
            header = (match.group(1), match.group(2))
            lines = []
        elif not line.strip().startswith("--"):
            # Trailing comments would hide the rest of the line once lines are joined
            # by a tool that does not split them; drop them too.
            lines.append(line.split(" -- ", 1)[0].rstrip())
    finish()
    return queries
