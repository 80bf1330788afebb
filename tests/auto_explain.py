"""The plans PostgreSQL ran, as auto_explain reports them: for the tests of issue 21
that check a statement's plan once its tables have grown.

auto_explain is loaded into the test's own session (`LOAD`) and sends each plan
back as a notice, in JSON, with the plan's actual rows (`log_analyze`); nothing
is written to the server's log, and no other session is touched.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import psycopg


def plans_of(
    conn: psycopg.Connection[Any], run: Callable[[], object], *, nested: bool = False
) -> list[dict[str, Any]]:
    """auto_explain's document (its "Query Text" and "Plan") of each statement `run`
    sends on `conn`, in order; with `nested`, of the statements its triggers run too."""
    notices: list[str] = []
    conn.add_notice_handler(lambda notice: notices.append(notice.message_primary or ""))
    conn.execute("LOAD 'auto_explain'")
    for setting in (
        "auto_explain.log_min_duration = 0",
        "auto_explain.log_analyze = on",
        f"auto_explain.log_nested_statements = {'on' if nested else 'off'}",
        "auto_explain.log_format = json",
        "auto_explain.log_level = notice",
    ):
        conn.execute(f"SET {setting}")
    try:
        run()
    finally:
        conn.execute("SET auto_explain.log_min_duration = -1")
    return [json.loads(text[text.index("{") :]) for text in notices if "{" in text]


def scans_that_ran(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of `plan` that read a relation (its "Relation Name") and ran."""
    if plan.get("Relation Name") and float(plan.get("Actual Loops", 0)) > 0:
        yield plan
    for child in plan.get("Plans", []):
        yield from scans_that_ran(child)
