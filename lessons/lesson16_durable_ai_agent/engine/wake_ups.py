"""Waking a parent: a child that finishes makes its suspended parent runnable at once.

A durable task that waits for a child is suspended (see `durable.py`). Whatever
finishes the child (the result writer, a sweep) wakes the parent in the same
transaction, so there is no moment at which a child has finished and its
parent does not know it may run. A child spawned with an idempotency key may
be waited for by other tasks than its parent (a fork, a replay, another task
with the same business key): they are woken too.
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
    def id(self) -> int: ...

    @property
    def idempotency_key(self) -> str | None: ...

    @property
    def status(self) -> TaskStatus: ...

    @property
    def parent_id(self) -> int | None: ...


def wake_parents(queries: Querier, rows: Iterable[FinishedRow]) -> None:
    """Make the parents of the children among `rows` that have finished runnable now.

    Call it in the transaction that finished them. A child that went back to the
    queue for a retry has not finished, and wakes nobody.
    """
    finished = [row for row in rows if row.status in FINISHED_STATUSES]
    waiting = {row.parent_id for row in finished if row.parent_id is not None}
    # Only a task with an idempotency key can be another task's child too.
    shareable = [row.id for row in finished if row.idempotency_key is not None]
    if shareable:
        waiting.update(queries.list_tasks_sharing_children(child_ids=shareable))
    if waiting:
        queries.wake_tasks(ids=sorted(waiting))
