"""A steady rate: how every system's producer paces its enqueues (`producer.py`)."""

from __future__ import annotations

import time
from collections.abc import Callable


def steady(rate: float, seconds: float, enqueue_one: Callable[[], object]) -> float:
    """Call `enqueue_one` `rate` times a second for `seconds`; return the rate achieved.

    Task i is due at start + i / rate; a producer that falls behind catches up without
    sleeping, so the rate holds on average.
    """
    count = round(rate * seconds)
    started = time.monotonic()
    for index in range(count):
        delay = started + index / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        enqueue_one()
    return count / (time.monotonic() - started)
