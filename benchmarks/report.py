"""Results as rows, and rows as a table: plain text for the terminal, Markdown for the README."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from lessons.common.stats import median

from .measure import FLAT_TOLERANCE, MiB
from .vacuum import Vacuum


@dataclass
class Row:
    """One case of one system under one vacuum setting, over several runs."""

    system: str
    case: str
    settings: str
    vacuum: Vacuum
    # "burn-down", "ceiling", "latency", "memory" or "durable": what the comparisons match on.
    kind: str = "burn-down"
    # Tasks claimed at once: the worker's slots, the dequeue batch, pgbench's batch.
    batch: int | None = None
    # Tasks (durable: orders, workflows) per second of each run.
    rates: list[float] = field(default_factory=list)
    # Enqueue-to-start latency of each run, seconds (latency cases).
    p50s: list[float] = field(default_factory=list)
    p99s: list[float] = field(default_factory=list)
    # Peak RSS of the largest consumer process, and its growth, of each run (bytes).
    peaks: list[int] = field(default_factory=list)
    growths: list[int] = field(default_factory=list)
    # Filled in once every row is measured: how this row compares with others.
    comparison: str = ""

    @property
    def rate(self) -> float | None:
        return median(self.rates) if self.rates else None

    @property
    def p50(self) -> float | None:
        return median(self.p50s) if self.p50s else None

    @property
    def p99(self) -> float | None:
        return median(self.p99s) if self.p99s else None

    @property
    def peak(self) -> int | None:
        return max(self.peaks) if self.peaks else None

    @property
    def growth(self) -> int | None:
        return max(self.growths) if self.growths else None

    @property
    def runs(self) -> int:
        return max(len(self.rates), len(self.p50s), len(self.peaks))


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
