"""A benchmark plan: cases, run round-robin, several times, under each vacuum setting.

Every run of every case in a pass happens before the next run of any case, so a
noisy minute on the machine hurts all systems alike instead of one of them: the
ratios between systems are what the benchmarks are for. A case may ask for fewer runs
than the plan's (`most_runs`, `runs_of`).

The embedded server is shared with the course's tests, and one of them (lesson 09's)
stops and starts it. A run that fails because the server restarted under it is run
again once the server is back (up to `RESTART_RETRIES` times), and the report says
how many were; any other failure stops the benchmark.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from lessons.common.database import connect

from .cases import Case
from .naptime import vacuum_pass
from .rows import Row
from .vacuum import Vacuum

RESTART_RETRIES = 2
SERVER_WAIT = 120.0  # seconds


@dataclass
class Outcome:
    rows: list[Row]
    # What the server-wide part of each vacuum setting was, in words.
    vacuum_notes: dict[Vacuum, str] = field(default_factory=dict)
    seconds: float = 0.0
    # Runs that failed because the server restarted under them, and were run again.
    repeated: list[str] = field(default_factory=list)


def run_plan(cases: Sequence[Case], *, passes: Sequence[Vacuum], runs: int) -> Outcome:
    started = time.monotonic()
    outcome = Outcome(rows=[])
    for vacuum in passes:
        with vacuum_pass(vacuum) as note:
            outcome.vacuum_notes[vacuum] = note
            _say(f"-- {vacuum.value} pass: {vacuum.describe()}; {note}")
            selected = [case for case in cases if vacuum in case.passes]
            rows = [case.row(vacuum) for case in selected]
            for run in range(1, runs + 1):
                for case, row in zip(selected, rows, strict=True):
                    if run > runs_of(case, runs):
                        continue
                    began = time.monotonic()
                    said = _measure(case, vacuum, row, outcome)
                    took = time.monotonic() - began
                    _say(
                        f"   run {run}/{runs}  {row.system}, {row.case}, {row.settings}: {said}"
                        f" ({took:.0f} s)"
                    )
            outcome.rows.extend(rows)
    outcome.seconds = time.monotonic() - started
    return outcome


def runs_of(case: Case, runs: int) -> int:
    """How many of the plan's `runs` a case runs: all, unless it sets `most_runs`."""
    most_runs = getattr(case, "most_runs", None)
    return runs if most_runs is None else min(runs, int(most_runs))


def _measure(case: Case, vacuum: Vacuum, row: Row, outcome: Outcome) -> str:
    """`case.measure`, run again if the server restarted under it."""
    for attempt in range(RESTART_RETRIES + 1):
        started = _server_start_time()
        try:
            return case.measure(vacuum, row)
        except Exception as error:
            if attempt == RESTART_RETRIES or _wait_for_server() == started:
                raise
            what = f"{row.system}, {row.case}, {vacuum.value}"
            _say(f"   the server restarted during {what} ({type(error).__name__}): again")
            outcome.repeated.append(what)
    raise AssertionError("unreachable")


def _server_start_time() -> datetime | None:
    try:
        with connect() as conn:
            row = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
    except Exception:
        return None
    return row[0] if row else None


def _wait_for_server() -> datetime | None:
    """Wait until the server accepts connections again; its start time (None: gave up)."""
    deadline = time.monotonic() + SERVER_WAIT
    while time.monotonic() < deadline:
        started = _server_start_time()
        if started is not None:
            return started
        time.sleep(1)
    return None


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
