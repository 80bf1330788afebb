"""Waking a parent: a child that finishes makes its suspended parent runnable at once.

A durable task that waits for a child is suspended (see `durable.py`). Whatever
finishes the child (the result writer, a sweep) wakes the parent in the same
transaction, so there is no moment at which a child has finished and its
parent does not know it may run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from ..db.models import TaskStatus
from ..db.queries import Querier
from .shared import FINISHED_STATUSES


class FinishedRow(Protocol):
    """What `wake_parents` needs of a task row: `Task`, or a `FinishAttemptsRow`."""

    @property
    def status(self) -> TaskStatus: ...

    @property
    def parent_id(self) -> int | None: ...


def wake_parents(queries: Querier, rows: Iterable[FinishedRow]) -> None:
    """Make the parents of the children among `rows` that have finished runnable now.

    Call it in the transaction that finished them. A child that went back to the
    queue for a retry has not finished, and wakes nobody.
    """
    parent_ids = {
        row.parent_id
        for row in rows
        if row.parent_id is not None and row.status in FINISHED_STATUSES
    }
    if parent_ids:
        queries.wake_tasks(ids=sorted(parent_ids))
