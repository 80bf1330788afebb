"""Watching a burn-down: when it ends, and how much memory the consumers use meanwhile.

Rates are measured on the database's clock: from the first task's start (a timestamp
the queue itself records, which no later update of the task moves), or from a start
the caller read itself (the commit that let the workers go), to the moment a poll,
every few milliseconds, finds nothing left to finish (`clock_timestamp()` of that
poll). Both ends are the server's clock, so the figure does not depend on where the
benchmark runs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psutil  # type: ignore[import-untyped]
import psycopg

POLL_INTERVAL = 0.005
RSS_INTERVAL = 0.1
MiB = 2**20
# Memory that grows less than this between the first and the last quarter of a
# burn-down is called flat: allocator noise, not a leak.
FLAT_TOLERANCE = 4 * MiB


@dataclass(frozen=True)
class MemoryTrace:
    """Resident memory of each consumer process, sampled through a run."""

    # (seconds since the first sample, RSS in bytes of each process)
    samples: list[tuple[float, list[int]]] = field(default_factory=list)

    @property
    def peak_bytes(self) -> int:
        """The largest RSS any one process reached."""
        return max((max(rss) for _, rss in self.samples if rss), default=0)

    def growth_bytes(self) -> int:
        """How much more the largest process held in the last quarter of the run than the first.

        A worker's memory grows while it warms up (imports, connections, caches);
        a leak keeps growing after that. Comparing the peak of the last quarter with
        the peak of the first quarter separates the two.
        """
        if len(self.samples) < 4:
            return 0
        quarter = max(1, len(self.samples) // 4)
        first = max(max(rss) for _, rss in self.samples[:quarter] if rss)
        last = max(max(rss) for _, rss in self.samples[-quarter:] if rss)
        return last - first

    def is_flat(self, tolerance_bytes: int = FLAT_TOLERANCE) -> bool:
        return self.growth_bytes() <= tolerance_bytes


@dataclass(frozen=True)
class BurnDown:
    tasks: int
    seconds: float
    memory: MemoryTrace

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds


class _MemorySampler:
    def __init__(self, pids: Sequence[int]) -> None:
        self.processes = [psutil.Process(pid) for pid in pids]
        self.trace = MemoryTrace()
        self.started = time.monotonic()
        self.next_sample = self.started

    def sample_if_due(self) -> None:
        now = time.monotonic()
        if now < self.next_sample:
            return
        self.next_sample = now + RSS_INTERVAL
        rss = []
        for process in self.processes:
            # A drain-mode consumer exits on its own at the end.
            with contextlib.suppress(psutil.NoSuchProcess):
                rss.append(process.memory_info().rss)
        self.trace.samples.append((now - self.started, rss))


def watch_burn_down(
    conn: psycopg.Connection[Any],
    *,
    tasks: int,
    unfinished_sql: str,
    consumer_pids: Sequence[int],
    first_start_sql: str | None = None,
    started_at: datetime | None = None,
    timeout: float = 600.0,
) -> BurnDown:
    """Poll until nothing is left to finish; return the rate from the start to then.

    The start is `started_at`, on the database's clock, or else what `first_start_sql`
    returns once everything is done: one of the two.
    """
    if (first_start_sql is None) == (started_at is None):
        raise ValueError("give the start as first_start_sql or as started_at, one of them")
    sampler = _MemorySampler(consumer_pids)
    query = f"SELECT ({unfinished_sql}), clock_timestamp()"
    deadline = time.monotonic() + timeout
    while True:
        sampler.sample_if_due()
        row = conn.execute(query).fetchone()
        assert row is not None
        unfinished, now = bool(row[0]), row[1]
        if not unfinished:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"the burn-down of {tasks} tasks did not end in {timeout} s")
        time.sleep(POLL_INTERVAL)
    first = started_at if first_start_sql is None else _timestamp(conn, first_start_sql)
    if first is None:
        raise RuntimeError("the queue records no start: did any task run?")
    return BurnDown(tasks=tasks, seconds=(now - first).total_seconds(), memory=sampler.trace)


def latencies(conn: psycopg.Connection[Any], latency_sql: str) -> list[float]:
    """Enqueue-to-start latencies in seconds, from a query returning one per task."""
    return [float(row[0]) for row in conn.execute(latency_sql).fetchall()]


def _timestamp(conn: psycopg.Connection[Any], query: str) -> datetime | None:
    row = conn.execute(query).fetchone()
    return row[0] if row else None
