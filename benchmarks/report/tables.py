"""Rows as a table: plain text for the terminal, Markdown for the results files."""

from __future__ import annotations

from collections.abc import Sequence

from lessons.common.stats import median

from ..harness.measure import FLAT_TOLERANCE, MiB
from ..harness.rows import Row

HEADERS = (
    "System",
    "Case",
    "Settings",
    "Vacuum",
    "Runs",
    "Per second: median (min-max)",
    "p50: median (min-max)",
    "p99: median (min-max)",
    "Peak RSS (growth)",
    "Comparison",
)


def cells(row: Row) -> tuple[str, ...]:
    return (
        row.system,
        row.case,
        row.settings,
        row.vacuum.value,
        str(row.runs),
        spread(row.rates),
        spread(row.p50s, scale=1000, digits=1, unit=" ms"),
        spread(row.p99s, scale=1000, digits=1, unit=" ms"),
        _memory(row.peak, row.growth),
        row.comparison,
    )


def spread(values: Sequence[float], *, scale: float = 1.0, digits: int = 0, unit: str = "") -> str:
    """The median of the runs, then the smallest and largest: "7,668 (5,197-10,139)"."""
    if not values:
        return ""
    middle = f"{median(values) * scale:,.{digits}f}{unit}"
    if len(values) == 1:
        return middle
    return f"{middle} ({min(values) * scale:,.{digits}f}-{max(values) * scale:,.{digits}f})"


def rate_figure(row: Row, unit: str) -> str:
    """A row's rate as a sentence states it: "7,668 tasks/s (5 runs: 5,197-10,139)"."""
    if row.rate is None:
        return "n/a"
    if len(row.rates) == 1:
        return f"{row.rate:,.0f} {unit} (1 run)"
    return (
        f"{row.rate:,.0f} {unit} ({len(row.rates)} runs: "
        f"{min(row.rates):,.0f}-{max(row.rates):,.0f})"
    )


def text_table(rows: Sequence[Row]) -> str:
    table = [HEADERS, *(cells(row) for row in rows)]
    widths = [max(len(line[column]) for line in table) for column in range(len(HEADERS))]
    lines = []
    for index, line in enumerate(table):
        lines.append(
            "  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True))
        )
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(rows: Sequence[Row]) -> str:
    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(value.replace("|", "\\|") for value in values) + " |"

    numeric = {
        "Runs",
        "Per second: median (min-max)",
        "p50: median (min-max)",
        "p99: median (min-max)",
        "Peak RSS (growth)",
    }
    separator = ["---:" if header in numeric else "---" for header in HEADERS]
    return "\n".join([line(HEADERS), line(separator), *(line(cells(row)) for row in rows)])


def memory_verdict(row: Row) -> str:
    """Flat, or not, for a row with a memory trace."""
    if row.growth is None:
        return "n/a"
    flat = row.growth <= FLAT_TOLERANCE
    return f"{'flat' if flat else 'NOT flat'} (tolerance {FLAT_TOLERANCE // MiB} MiB)"


def ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or theirs == 0:
        return "n/a"
    return f"{ours / theirs:.2f}x"


def percent(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or theirs == 0:
        return "n/a"
    return f"{100 * ours / theirs:.0f} %"


def _memory(peak: int | None, growth: int | None) -> str:
    if peak is None:
        return ""
    return f"{peak / MiB:.1f} MiB ({(growth or 0) / MiB:+.1f})"


def grid_text(table: Sequence[Sequence[str]]) -> str:
    """A table of cells (the first line its headings) as plain text, in aligned columns."""
    widths = [max(len(line[column]) for line in table) for column in range(len(table[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        for line in table
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def grid_markdown(table: Sequence[Sequence[str]]) -> str:
    """A table of cells (the first line its headings) as Markdown, figures right-aligned."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    separator = ["---"] + ["---:"] * (len(table[0]) - 1)
    return "\n".join([line(table[0]), line(separator), *(line(cells) for cells in table[1:])])
