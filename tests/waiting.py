"""Waiting for a condition, never for a guessed amount of time.

Tests that involve other threads or processes must not sleep and hope the work
is done: they wait until what they expect is observable, with a deadline that
is generous (a noisy machine may be slow) but finite (a broken engine must fail
the test, not hang it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T | None],
    *,
    timeout: float = 20.0,
    interval: float = 0.02,
    message: str | Callable[[], str] = "the condition did not become true",
) -> T:
    """Call `predicate` until it returns something truthy, and return that.

    Raises `TimeoutError` with `message` (or what `message()` says at that
    moment) when `timeout` seconds pass first. The predicate is always called
    once more after the deadline, so a slow last poll cannot fail the wait.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            result = predicate()
            if result:
                return result
            text = message() if callable(message) else message
            raise TimeoutError(f"after {timeout} s: {text}")
        time.sleep(interval)
