"""The one percentile definition (nearest rank) and the median, pinned to their values."""

from __future__ import annotations

import random

import pytest

from lessons.common.stats import median, percentile

ONE_TO_150 = [float(value) for value in range(1, 151)]


def test_p99_of_150_values_is_the_149th() -> None:
    # 0.99 x 150 = 148.5: the nearest rank rounds up, to 149. (Rounding half to even
    # would say 148; numpy's linear interpolation, 148.51.)
    assert percentile(ONE_TO_150, 0.99) == 149.0


def test_p50_of_150_values_is_the_75th() -> None:
    assert percentile(ONE_TO_150, 0.50) == 75.0


@pytest.mark.parametrize(
    ("count", "fraction", "expected"),
    [
        (100, 0.50, 50.0),
        (100, 0.99, 99.0),
        (100, 1.00, 100.0),
        (100, 0.07, 7.0),  # 0.07 x 100 is 7.000000000000001 in floating point
        (10, 0.50, 5.0),
        (10, 0.99, 10.0),
        (3, 0.50, 2.0),
        (1, 0.99, 1.0),
        (1000, 0.999, 999.0),
    ],
)
def test_percentile_of_one_to_n(count: int, fraction: float, expected: float) -> None:
    assert percentile([float(value) for value in range(1, count + 1)], fraction) == expected


def test_percentile_does_not_depend_on_the_order_of_the_values() -> None:
    shuffled = ONE_TO_150.copy()
    random.Random(8).shuffle(shuffled)
    assert percentile(shuffled, 0.99) == 149.0


def test_percentile_is_always_one_of_the_values() -> None:
    values = [0.4, 3.7, 1.1, 250.0]
    assert percentile(values, 0.5) == 1.1
    assert percentile(values, 0.99) == 250.0


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_percentile_refuses_a_fraction_outside_0_to_1(fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        percentile(ONE_TO_150, fraction)


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_median_averages_the_two_middle_values_of_an_even_count() -> None:
    assert median([1.0, 2.0, 3.0, 4.0]) == 2.5
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median(ONE_TO_150) == 75.5


def test_median_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        median([])
