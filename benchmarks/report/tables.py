"""Rows as a table: plain text for the terminal, Markdown for the results files."""

from __future__ import annotations

from collections.abc import Sequence

from ..harness.measure import FLAT_TOLERANCE, MiB
from ..harness.rows import Row

HEADERS = (
    "System",
    "Case",
    "Settings",
    "Vacuum",
    "Per second (median)",
    "Runs (rates)",
    "p50",
    "p99",
    "Peak RSS (growth)",
    "Comparison",
)


def cells(row: Row) -> tuple[str, ...]:
    return (
        row.system,
        row.case,
        row.settings,
        row.vacuum.value,
        f"{row.rate:,.0f}" if row.rate is not None else "",
        _runs(row),
        _milliseconds(row.p50),
        _milliseconds(row.p99),
        _memory(row.peak, row.growth),
        row.comparison,
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

    numeric = {"Per second (median)", "Runs (rates)", "p50", "p99", "Peak RSS (growth)"}
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


def _runs(row: Row) -> str:
    """Every run's rate when there are a few, else their count and range."""
    if len(row.rates) > 3:
        return f"{len(row.rates)}: {min(row.rates):,.0f} to {max(row.rates):,.0f}"
    if len(row.rates) > 1:
        return " / ".join(f"{rate:,.0f}" for rate in row.rates)
    return str(row.runs)


def _milliseconds(seconds: float | None) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds is not None else ""


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
