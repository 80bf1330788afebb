"""How the course's engine compares with each peer, and the curriculum's targets, met or not.

The targets (shared/CURRICULUM.md, "Performance targets"), each a ratio within one run:

- lesson 04 drains no-op tasks at >= 1.5x PgQueuer (psycopg) at the same batch size;
- and at >= 25 % of the batched pgbench ceiling under the same vacuum settings;
- its worker's memory stays flat over a 100,000-task burn-down;
- lesson 08: enqueue-to-start latency p50 < 2 ms and p99 < 10 ms;
- durable orders (a durable task with two child tasks) complete at >= 3x the rate of
  DBOS two-step workflows.

Every ratio is stated with the machine's speed in the same run and pass, the pgbench
ceiling of lesson 04's SQL (`machine_speed`): a ratio between two systems bound by
different things moves with it (benchmarks/README.md, "Why a ratio moves with the
machine"). `regression_section` sets each lesson's durable rate against the lesson
before it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from ..harness.cases import DURABLE
from ..harness.rows import Row
from ..harness.vacuum import Vacuum
from .tables import grid_markdown, memory_verdict, percent, rate_figure, ratio, spread

OURS = "lesson 04"
PGQUEUER = "PgQueuer"
PROCRASTINATE = "Procrastinate"
CEILING = "pgbench ceiling"
NOTIFY_LESSON = "lesson 08"
PGQUEUER_FACTOR = 1.5
CEILING_FRACTION = 0.25
DBOS_FACTOR = 3.0
LATENCY_P50 = 0.002  # seconds
LATENCY_P99 = 0.010
# A lesson whose durable rate is below this fraction of the lesson before it is flagged.
REGRESSION_FRACTION = 0.9


def is_course(row: Row) -> bool:
    return row.system.startswith("lesson ")


def machine_speed(rows: Sequence[Row], vacuum: Vacuum) -> str:
    """The pgbench ceiling of the same run and pass, at each batch: the machine's speed."""
    ceilings = sorted(
        (row for row in rows if row.kind == "ceiling" and row.vacuum == vacuum and row.rate),
        key=lambda row: row.batch or 0,
    )
    if not ceilings:
        return "machine's speed not measured (no pgbench ceiling in this run)"
    return "pgbench ceiling " + ", ".join(
        f"{spread(row.rates, unit='/s')} at batch {row.batch}" for row in ceilings
    )


def compare_rows(rows: Sequence[Row]) -> None:
    """Fill each row's comparison column; each ratio with the machine's speed beside it."""
    for row in rows:
        _compare_row(rows, row)
        if row.comparison and row.kind not in ("memory", "ceiling"):
            row.comparison += f" [{machine_speed(rows, row.vacuum)}]"


def _compare_row(rows: Sequence[Row], row: Row) -> None:
    if row.kind == "memory":
        row.comparison = f"memory {memory_verdict(row)}"
    elif row.kind == "latency" and not is_course(row):
        row.comparison = "; ".join(
            f"{ours.system} p50 is {ratio(ours.p50, row.p50)} this"
            for ours in rows
            if ours.kind == "latency"
            and is_course(ours)
            and ours.vacuum == row.vacuum
            and ours.case == row.case
        )
    elif row.kind == "ceiling":
        ours = _find(rows, OURS, "burn-down", row.vacuum, batch=row.batch)
        if ours is not None:
            row.comparison = f"{OURS} reaches {percent(ours.rate, row.rate)} of this"
    elif row.kind == "burn-down" and not is_course(row):
        batch = row.batch if row.system != PROCRASTINATE else None
        ours = _find(rows, OURS, "burn-down", row.vacuum, batch=batch)
        if ours is not None:
            row.comparison = f"{OURS} (batch {ours.batch}) / this = {ratio(ours.rate, row.rate)}"
    elif row.kind == "burn-down":
        row.comparison = "; ".join(_against_peers(rows, row))
    elif row.kind == DURABLE and is_course(row):
        row.comparison = "; ".join(
            f"{ratio(row.rate, peer.rate)} {peer.system}"
            for peer in _durable_peers(rows, row.vacuum)
        )
    elif row.kind == DURABLE:
        row.comparison = "; ".join(
            f"{ours.system} / this = {ratio(ours.rate, row.rate)}"
            for ours in rows
            if ours.kind == DURABLE and is_course(ours) and ours.vacuum == row.vacuum
        )


def _durable_peers(rows: Sequence[Row], vacuum: Vacuum) -> list[Row]:
    return [
        row for row in rows if row.kind == DURABLE and not is_course(row) and row.vacuum == vacuum
    ]


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
    """The curriculum's targets, each stated plainly as met or not, with its figures
    (median, then the runs' count and range) and the machine's speed beside each ratio."""
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
                f"{rate_figure(ours, 'tasks/s')} vs {rate_figure(theirs, 'tasks/s')} "
                f"= {factor:.2f}x"
            )
            for other in rows:
                if (
                    other.kind == "burn-down"
                    and other.system.startswith(PGQUEUER + " (")
                    and other.vacuum == vacuum
                    and other.batch == batch
                    and other.rate
                ):
                    line += (
                        f" (against {other.system}, {rate_figure(other, 'tasks/s')}: "
                        f"{ours.rate / other.rate:.2f}x)"
                    )
            lines.append(f"{line} [{machine_speed(rows, vacuum)}]")
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
                f"{rate_figure(ours, 'tasks/s')} of {rate_figure(ceiling, 'tasks/s')} "
                f"= {fraction:.0%}"
            )
    lines.append("")
    lines.append("The worker's memory stays flat over a 100,000-task burn-down:")
    for row in rows:
        if row.kind == "memory" and is_course(row):
            flat = memory_verdict(row).startswith("flat")
            lines.append(
                f"- {_verdict(flat)}: {row.system}, {row.case}, {row.settings}: peak "
                f"{(row.peak or 0) / 2**20:.1f} MiB, grew {(row.growth or 0) / 2**20:+.1f} MiB "
                f"from the first to the last quarter ({_runs(row.runs)})"
            )
    notified = [row for row in rows if row.kind == "latency" and row.system == NOTIFY_LESSON]
    lines.append("")
    lines.append(
        f"{NOTIFY_LESSON}: enqueue-to-start latency p50 < {LATENCY_P50 * 1000:g} ms and "
        f"p99 < {LATENCY_P99 * 1000:g} ms:"
    )
    for row in notified:
        if row.p50 is None or row.p99 is None:
            continue
        met = row.p50 < LATENCY_P50 and row.p99 < LATENCY_P99
        lines.append(
            f"- {_verdict(met)}: {row.case}, {row.vacuum.value} vacuum, {row.settings}: "
            f"p50 {_milliseconds(row.p50s)}, p99 {_milliseconds(row.p99s)} ({_runs(row.runs)})"
        )
    if not notified:
        lines.append(
            f"- not measured: {NOTIFY_LESSON} (LISTEN/NOTIFY) has not landed; its worker joins "
            "`course_systems()` in benchmarks/compare.py when it does"
        )
    lines.append("")
    lines.append(f"Durable orders >= {DBOS_FACTOR:g}x DBOS two-step workflows:")
    durable = [row for row in rows if row.kind == DURABLE and is_course(row)]
    for ours in durable:
        for peer in _durable_peers(rows, ours.vacuum):
            if ours.rate is None or peer.rate is None:
                continue
            factor = ours.rate / peer.rate
            lines.append(
                f"- {_verdict(factor >= DBOS_FACTOR)}: {ours.vacuum.value} vacuum, "
                f"{ours.system} against {peer.system}: {rate_figure(ours, 'orders/s')} vs "
                f"{rate_figure(peer, 'workflows/s')} = {factor:.2f}x "
                f"[{machine_speed(rows, ours.vacuum)}]"
            )
    if not durable:
        lines.append("- not measured (--orders 0)")
    latency = [row for row in rows if row.kind == "latency" and row.system == OURS]
    if latency:
        lines.append("")
        lines.append(
            f"Lesson 04's latency, for comparison (the target is {NOTIFY_LESSON}'s; lesson 04 "
            "polls):"
        )
        for row in latency:
            lines.append(
                f"- {row.case}, {row.vacuum.value} vacuum: p50 {_milliseconds(row.p50s)}, "
                f"p99 {_milliseconds(row.p99s)} ({_runs(row.runs)})"
            )
    return "\n".join(lines)


def regression_section(rows: Sequence[Row]) -> str:
    """Each lesson's durable rate against the lesson before it in the same pass and case.

    Flagged when its median is more than 10 % below the other's; whether the two
    ranges of runs overlap says how far the machine's noise could explain it.
    """
    table = [
        [
            "Lesson",
            "Orders/s: median (min-max)",
            "Lesson before",
            "Its orders/s",
            "Change",
            "Ranges overlap",
            "Verdict",
            "Machine's speed (same pass)",
        ]
    ]
    passes = list(dict.fromkeys(row.vacuum for row in rows))
    for vacuum in passes:
        durable = [
            row for row in rows if row.kind == DURABLE and is_course(row) and row.vacuum == vacuum
        ]
        for before, row in itertools.pairwise(durable):
            if row.rate is None or before.rate is None or row.case != before.case:
                continue
            change = row.rate / before.rate - 1
            if min(len(row.rates), len(before.rates)) == 1:
                overlap = "n/a (1 run)"
            elif min(row.rates) <= max(before.rates) and min(before.rates) <= max(row.rates):
                overlap = "yes"
            else:
                overlap = "no"
            slower = row.rate < REGRESSION_FRACTION * before.rate
            table.append(
                [
                    f"{row.system} ({vacuum.value})",
                    spread(row.rates),
                    before.system,
                    spread(before.rates),
                    f"{change:+.0%}",
                    overlap,
                    f"SLOWER by more than {1 - REGRESSION_FRACTION:.0%}" if slower else "ok",
                    machine_speed(rows, vacuum),
                ]
            )
    if len(table) == 1:
        return "Not measured (no two lessons' durable orders in this run)."
    runs = sorted({row.runs for row in rows if row.kind == DURABLE and is_course(row)})
    counts = " or ".join(str(count) for count in runs)
    note = (
        f"Each lesson's orders per second (the median of {counts} run"
        f"{'s' if runs != [1] else ''}, with the smallest and largest) against the lesson "
        f"before it, on the same case; flagged when more than "
        f"{1 - REGRESSION_FRACTION:.0%} slower. Lessons 07 and 08 run their own "
        "`process_order` on two queues (a waiting parent holds its slot); lessons 09 on "
        "run lesson 09's order on one queue (a waiting parent is suspended), each with "
        "its own engine, worker processes and children (lesson 12: a stand-in email)."
    )
    return note + "\n\n" + grid_markdown(table)


def _runs(count: int) -> str:
    return f"{count} run{'s' if count != 1 else ''}"


def _milliseconds(values: Sequence[float]) -> str:
    return spread(values, scale=1000, digits=1, unit=" ms")


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
