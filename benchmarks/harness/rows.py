"""A row of results: one case of one system under one vacuum setting, over its runs.

A case fills its row run after run; the report reads the medians (`report/`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lessons.common.stats import median

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
