"""How the course's engine compares with each peer, and the curriculum's targets, met or not.

The targets (shared/CURRICULUM.md, "Performance targets"), each a ratio within one run:

- lesson 04 drains no-op tasks at >= 1.5x PgQueuer (psycopg) at the same batch size;
- and at >= 25 % of the batched pgbench ceiling under the same vacuum settings;
- its worker's memory stays flat over a 100,000-task burn-down.
"""

from __future__ import annotations

from collections.abc import Sequence

from .report import Row, memory_verdict, percent, ratio
from .vacuum import Vacuum

OURS = "lesson 04"
PGQUEUER = "PgQueuer"
PROCRASTINATE = "Procrastinate"
CEILING = "pgbench ceiling"
PGQUEUER_FACTOR = 1.5
CEILING_FRACTION = 0.25


def is_course(row: Row) -> bool:
    return row.system.startswith("lesson ")


def compare_rows(rows: Sequence[Row]) -> None:
    """Fill each row's comparison column."""
    for row in rows:
        if row.kind == "memory":
            row.comparison = f"memory {memory_verdict(row)}"
        elif row.kind == "latency" and not is_course(row):
            ours = _find(rows, OURS, "latency", row.vacuum, case=row.case)
            if ours is not None:
                row.comparison = f"{OURS} p50 is {ratio(ours.p50, row.p50)} this"
        elif row.kind == "ceiling":
            ours = _find(rows, OURS, "burn-down", row.vacuum, batch=row.batch)
            if ours is not None:
                row.comparison = f"{OURS} reaches {percent(ours.rate, row.rate)} of this"
        elif row.kind == "burn-down" and not is_course(row):
            batch = row.batch if row.system != PROCRASTINATE else None
            ours = _find(rows, OURS, "burn-down", row.vacuum, batch=batch)
            if ours is not None:
                row.comparison = (
                    f"{OURS} (batch {ours.batch}) / this = {ratio(ours.rate, row.rate)}"
                )
        elif row.kind == "burn-down":
            row.comparison = "; ".join(_against_peers(rows, row))


def _against_peers(rows: Sequence[Row], ours: Row) -> list[str]:
    parts = []
    for peer in rows:
        if peer.kind != "burn-down" or is_course(peer) or peer.vacuum != ours.vacuum:
            continue
        if peer.system == PROCRASTINATE or peer.batch == ours.batch:
            parts.append(f"{ratio(ours.rate, peer.rate)} {peer.system}")
    ceiling = _find(rows, CEILING, "ceiling", ours.vacuum, batch=ours.batch)
    if ceiling is not None:
        parts.append(f"{percent(ours.rate, ceiling.rate)} of the ceiling")
    return parts


def targets_section(rows: Sequence[Row]) -> str:
    """The curriculum's targets, each stated plainly as met or not, with its figures."""
    lines = []
    passes = list(dict.fromkeys(row.vacuum for row in rows))
    batches = sorted({row.batch for row in rows if row.kind == "ceiling" and row.batch})
    lines.append(f"Lesson 04 >= {PGQUEUER_FACTOR}x PgQueuer (psycopg) at the same batch size:")
    for vacuum in passes:
        for batch in batches:
            ours = _find(rows, OURS, "burn-down", vacuum, batch=batch)
            theirs = _find(rows, PGQUEUER, "burn-down", vacuum, batch=batch)
            if ours is None or theirs is None or ours.rate is None or theirs.rate is None:
                continue
            factor = ours.rate / theirs.rate
            line = (
                f"- {_verdict(factor >= PGQUEUER_FACTOR)}: {vacuum.value} vacuum, batch {batch}: "
                f"{ours.rate:,.0f} vs {theirs.rate:,.0f} tasks/s = {factor:.2f}x"
            )
            for other in rows:
                if (
                    other.kind == "burn-down"
                    and other.system.startswith(PGQUEUER + " (")
                    and other.vacuum == vacuum
                    and other.batch == batch
                    and other.rate
                ):
                    line += f" (against {other.system}: {ours.rate / other.rate:.2f}x)"
            lines.append(line)
    lines.append("")
    lines.append(f"Lesson 04 >= {CEILING_FRACTION:.0%} of the batched pgbench ceiling:")
    for vacuum in passes:
        for batch in batches:
            ours = _find(rows, OURS, "burn-down", vacuum, batch=batch)
            ceiling = _find(rows, CEILING, "ceiling", vacuum, batch=batch)
            if ours is None or ceiling is None or ours.rate is None or ceiling.rate is None:
                continue
            fraction = ours.rate / ceiling.rate
            verdict = _verdict(fraction >= CEILING_FRACTION)
            lines.append(
                f"- {verdict}: {vacuum.value} vacuum, batch {batch}: "
                f"{ours.rate:,.0f} of {ceiling.rate:,.0f} tasks/s = {fraction:.0%}"
            )
    lines.append("")
    lines.append("Lesson 04's worker memory stays flat over a 100,000-task burn-down:")
    for row in rows:
        if row.kind == "memory" and row.system == OURS:
            flat = memory_verdict(row).startswith("flat")
            lines.append(
                f"- {_verdict(flat)}: {row.case}, {row.settings}: peak "
                f"{(row.peak or 0) / 2**20:.1f} MiB, grew {(row.growth or 0) / 2**20:+.1f} MiB "
                "from the first to the last quarter"
            )
    latency = [row for row in rows if row.kind == "latency" and row.system == OURS]
    if latency:
        lines.append("")
        lines.append(
            "Latency (the p50 < 2 ms, p99 < 10 ms target is lesson 08's; lesson 04 polls):"
        )
        for row in latency:
            lines.append(
                f"- {row.case}, {row.vacuum.value} vacuum: p50 {(row.p50 or 0) * 1000:.1f} ms, "
                f"p99 {(row.p99 or 0) * 1000:.1f} ms"
            )
    return "\n".join(lines)


def _verdict(met: bool) -> str:
    return "MET" if met else "NOT MET"


def _find(
    rows: Sequence[Row],
    system: str,
    kind: str,
    vacuum: Vacuum,
    *,
    batch: int | None = None,
    case: str | None = None,
) -> Row | None:
    for row in rows:
        if (
            row.system == system
            and row.kind == kind
            and row.vacuum == vacuum
            and (batch is None or row.batch == batch)
            and (case is None or row.case == case)
        ):
            return row
    return None
