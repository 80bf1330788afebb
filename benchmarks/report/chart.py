"""The comparison as a picture: throughput per vacuum pass, latency, durable work (PNG).

Each throughput bar is a median, its error bar the slowest and the fastest run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib  # type: ignore[import-not-found, unused-ignore]

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

from ..harness.rows import Row
from ..harness.vacuum import Vacuum

# One colour per system, the same in every panel: the course's lessons in blues and
# greens, the peers in warm colours, the ceiling in grey.
SYSTEM_COLOURS = {
    "lesson 04": "#1f77b4",
    "lesson 07": "#17becf",
    "lesson 08": "#2ca02c",
    "lesson 09": "#98df8a",
    "lesson 10": "#aec7e8",
    "lesson 11": "#9edae5",
    "lesson 12": "#6baed6",
    "lesson 13": "#3182bd",
    "lesson 14": "#31a354",
    "lesson 15": "#006d2c",
    "PgQueuer": "#ff7f0e",
    "PgQueuer (5 consumers in 1 process)": "#ffbb78",
    "Procrastinate": "#9467bd",
    "DBOS (queue)": "#d62728",
    "DBOS (started directly)": "#ff9896",
    "pgbench ceiling": "#7f7f7f",
}
OTHER_COLOURS = ("#8c564b", "#e377c2", "#bcbd22", "#c49c94")
# Log-scale panels leave this much room above the tallest bar for the legend.
LEGEND_ROOM = 12


def colour(system: str) -> str:
    if system in SYSTEM_COLOURS:
        return SYSTEM_COLOURS[system]
    return OTHER_COLOURS[sum(map(ord, system)) % len(OTHER_COLOURS)]


def draw_chart(rows: Sequence[Row], path: Path) -> None:
    passes = list(dict.fromkeys(row.vacuum for row in rows if row.kind == "burn-down"))
    latency_rows = [row for row in rows if row.kind == "latency" and row.vacuum is Vacuum.STOCK]
    durable_rows = [row for row in rows if row.kind == "durable" and row.rate]
    panels = len(passes) + (1 if latency_rows else 0) + (1 if durable_rows else 0)
    columns = min(2, panels)
    lines = -(-panels // columns)
    figure, axes = plt.subplots(lines, columns, figsize=(7.5 * columns, 6 * lines), squeeze=False)
    cells = [axis for line in axes for axis in line]
    for axis, vacuum in zip(cells, passes, strict=False):
        _throughput(axis, [row for row in rows if row.vacuum is vacuum], vacuum)
    next_cell = len(passes)
    if latency_rows:
        _latency(cells[next_cell], latency_rows)
        next_cell += 1
    if durable_rows:
        _durable(cells[next_cell], durable_rows)
        next_cell += 1
    for axis in cells[next_cell:]:
        axis.set_visible(False)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _throughput(axis: Any, rows: Sequence[Row], vacuum: Vacuum) -> None:
    """Grouped bars: one group per batch size, one bar per system; log scale."""
    measured = [row for row in rows if row.kind in ("burn-down", "ceiling") and row.rate]
    batches = sorted({row.batch for row in measured if row.batch and row.kind == "ceiling"})
    systems = list(dict.fromkeys(row.system for row in measured if row.batch in batches))
    # The task count of most cases; a system measured on another count says so.
    counts = [row.case.split()[-1] for row in measured]
    usual_count = max(set(counts), key=counts.count) if counts else ""
    width = 0.8 / max(1, len(systems))
    for index, system in enumerate(systems):
        positions, heights, ranges = [], [], []
        for group, batch in enumerate(batches):
            for row in measured:
                if row.system == system and row.batch == batch and row.rate:
                    positions.append(group + index * width)
                    heights.append(row.rate)
                    ranges.append(row)
        odd = [
            row for row in measured if row.system == system and row.case.split()[-1] != usual_count
        ]
        label = f"{system} ({odd[0].settings}, {odd[0].case})" if odd else system
        bars = axis.bar(
            positions, heights, width, label=label, color=colour(system), **_run_range(ranges)
        )
        axis.bar_label(bars, labels=[f"{h:,.0f}" for h in heights], fontsize=7, rotation=90)
    others = [row for row in measured if row.batch not in batches]
    for offset, row in enumerate(others):
        position = len(batches) + offset
        bars = axis.bar(
            [position], [row.rate], width * 2, color=colour(row.system), label=row.system
        )
        axis.bar_label(bars, labels=[f"{row.rate:,.0f}"], fontsize=7, rotation=90)
    ticks = [group + 0.4 - width / 2 for group in range(len(batches))]
    labels = [f"batch {batch}" for batch in batches]
    ticks += [len(batches) + offset for offset in range(len(others))]
    labels += [f"{row.system}\n{row.settings.split(', ')[-1]}" for row in others]
    axis.set_xticks(ticks, labels)
    axis.set_yscale("log")
    axis.set_ylim(top=max(row.rate or 0 for row in measured) * LEGEND_ROOM)
    axis.set_ylabel("no-op tasks per second (log scale)")
    axis.set_title(f"Burn-down, {vacuum.value} autovacuum")
    axis.legend(fontsize=7, loc="upper left")


def _run_range(rows: Sequence[Row]) -> dict[str, Any]:
    """Error bars from each bar's median down to its slowest run and up to its fastest."""
    if all(len(row.rates) < 2 for row in rows):
        return {}
    below = [(row.rate or 0) - min(row.rates) for row in rows]
    above = [max(row.rates) - (row.rate or 0) for row in rows]
    return {"yerr": [below, above], "capsize": 2, "error_kw": {"linewidth": 0.8}}


def _latency(axis: Any, rows: Sequence[Row]) -> None:
    """p50 and p99 per system and rate; log scale, milliseconds."""
    labels = [f"{row.system}\n{row.case.removeprefix('latency at ')}" for row in rows]
    positions = list(range(len(rows)))
    p50 = [(row.p50 or 0) * 1000 for row in rows]
    p99 = [(row.p99 or 0) * 1000 for row in rows]
    axis.bar([p - 0.2 for p in positions], p50, 0.4, label="p50", color="#1f77b4")
    axis.bar([p + 0.2 for p in positions], p99, 0.4, label="p99", color="#ff7f0e")
    for position, low, high in zip(positions, p50, p99, strict=True):
        axis.annotate(f"{low:.1f}", (position - 0.2, low), ha="center", va="bottom", fontsize=7)
        axis.annotate(f"{high:.1f}", (position + 0.2, high), ha="center", va="bottom", fontsize=7)
    # Lesson 08's targets.
    axis.axhline(2, color="#1f77b4", linestyle="--", linewidth=0.8, label="p50 target, 2 ms")
    axis.axhline(10, color="#ff7f0e", linestyle="--", linewidth=0.8, label="p99 target, 10 ms")
    axis.set_xticks(positions, labels, fontsize=8)
    axis.set_yscale("log")
    axis.set_ylabel("enqueue to start, ms (log scale)")
    axis.set_title("Latency at a steady rate, stock autovacuum")
    axis.legend(fontsize=8)


def _durable(axis: Any, rows: Sequence[Row]) -> None:
    """Orders (DBOS: workflows) per second: one group per vacuum pass, one bar per system."""
    passes = list(dict.fromkeys(row.vacuum for row in rows))
    systems = list(dict.fromkeys(row.system for row in rows))
    width = 0.8 / max(1, len(systems))
    for index, system in enumerate(systems):
        positions, heights, ranges = [], [], []
        for group, vacuum in enumerate(passes):
            for row in rows:
                if row.system == system and row.vacuum is vacuum and row.rate:
                    positions.append(group + index * width)
                    heights.append(row.rate)
                    ranges.append(row)
        settings = next(row.settings for row in rows if row.system == system)
        bars = axis.bar(
            positions,
            heights,
            width,
            label=f"{system} ({settings})",
            color=colour(system),
            **_run_range(ranges),
        )
        axis.bar_label(bars, labels=[f"{h:,.0f}" for h in heights], fontsize=7)
    axis.set_xticks(
        [group + 0.4 - width / 2 for group in range(len(passes))],
        [f"{vacuum.value} autovacuum" for vacuum in passes],
    )
    axis.set_ylabel("orders (DBOS: two-step workflows) per second")
    axis.set_title(f"Durable work, {rows[0].case.split()[-1]} each")
    axis.set_ylim(0, max(max(row.rates) for row in rows) * 1.6)
    axis.legend(fontsize=6, loc="upper left")
