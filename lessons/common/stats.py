"""Medians and percentiles: one definition for the lessons and the benchmarks alike.

A percentile here is the **nearest-rank** percentile: the p-th percentile of n values
is the value of rank ceil(p * n) in ascending order (rank 1 is the smallest). It is
always one of the measured values, never an interpolation between two, and at least
a fraction p of the values are at or below it: "p99 = 3 ms" means that 99 % of the
tasks started within 3 ms. With 150 values, p99 is the 149th smallest (148.5 rounds
up); numpy's default, linear interpolation, would give a value between the 148th and
the 149th.

The median is the usual one (`statistics.median`): the middle value, or the mean of
the two middle values of an even count, so the median of two runs is their mean.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("the median of no values")
    return statistics.median(values)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile: the smallest value with `fraction` of values at or below it.

    `fraction` is in (0, 1]: 0.5 for p50, 0.99 for p99.
    """
    if not values:
        raise ValueError("a percentile of no values")
    if not 0 < fraction <= 1:
        raise ValueError(f"a percentile is a fraction in (0, 1], not {fraction}")
    ordered = sorted(values)
    # Round away floating-point error first: 0.07 * 100 is 7.000000000000001, whose
    # ceiling would make p7 of 100 values the 8th instead of the 7th.
    rank = max(1, math.ceil(round(fraction * len(ordered), 9)))
    return ordered[rank - 1]
