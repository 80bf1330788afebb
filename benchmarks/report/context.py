"""What every report says before its figures: machine, server, settings, libraries, method."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lessons.common.database import connect

from ..harness.machine import library_versions, this_machine, this_server
from ..harness.measure import POLL_INTERVAL
from ..harness.plan import Outcome
from ..harness.rows import Row
from .tables import markdown_table

METHOD = (
    f"Rates run from the first task's start, as the queue records it (the course's durable "
    "orders: the commit that enqueued them, which the waiting workers hear; DBOS: its first "
    "workflow's dequeue or creation, as it records them), to the moment a poll "
    f"(every {POLL_INTERVAL * 1000:g} ms) finds nothing left to finish, both on the database's "
    "clock; no start is one that a later update of a task moves. Every system starts from a "
    "fresh schema on the same server, with its tasks already enqueued and its consumers "
    "connected. Latency is the queue's own start time minus its own enqueue time, for tasks "
    "enqueued one per transaction by a separate producer process. Peak RSS is the largest "
    "consumer process's; growth compares the peak of the last quarter of the run with the "
    "peak of the first. Runs of all cases alternate (round-robin); each figure is the median "
    "of its runs, with the smallest and largest in brackets, and the runs' count beside it."
)


@dataclass(frozen=True)
class Context:
    lines: list[tuple[str, str]]

    @property
    def text(self) -> str:
        width = max(len(label) for label, _ in self.lines)
        return "\n".join(f"{label.ljust(width)}  {value}" for label, value in self.lines)

    @property
    def markdown(self) -> str:
        return "\n".join(f"- **{label}**: {value}" for label, value in self.lines)


def describe_context(outcome: Outcome, *, libraries: Sequence[str]) -> Context:
    with connect() as conn:
        server = this_server(conn)
    versions = library_versions(*libraries)
    lines = [
        ("Date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("Machine", this_machine().describe()),
        ("Server", server.describe()),
        ("Server settings", server.describe_settings()),
        ("Libraries", ", ".join(f"{name} {version}" for name, version in versions.items())),
    ]
    for vacuum, note in outcome.vacuum_notes.items():
        lines.append((f"Vacuum, {vacuum.value}", f"{vacuum.describe()}; {note}"))
    lines.append(("Method", METHOD))
    if outcome.repeated:
        lines.append(
            (
                "Repeated runs",
                "the server restarted (another process stopped it) during "
                + "; ".join(outcome.repeated)
                + ": each of those runs was run again once it was back",
            )
        )
    lines.append(("Duration", f"{outcome.seconds:.0f} s for the whole run"))
    return Context(lines)


def write_markdown(
    path: Path,
    title: str,
    context: Context,
    rows: Sequence[Row],
    *,
    sections: Sequence[tuple[str, str]] = (),
) -> None:
    """The report as Markdown: the context, the table, then any further sections."""
    parts = [f"# {title}", "", context.markdown, "", markdown_table(rows), ""]
    for heading, body in sections:
        parts += [f"## {heading}", "", body, ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
