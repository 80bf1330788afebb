"""What lessons 12 to 15 add to the pages, read where the lesson has it.

Each lesson's additions are read with the queries generated against that
lesson's schema (viewer/sql/lessonNN/), and only for a lesson that has them:
lesson 12's concurrency keys and rate limits, lesson 13's cancellations,
idempotency keys and schedules, lesson 14's code versions, lesson 15's
continue-as-new chain and ranges of task ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from .db.lesson12.queries import GetTaskFlowControlRow, ListConcurrencyKeysRow, ListRateLimitsRow
from .db.lesson12.queries import Querier as FlowControlQueries
from .db.lesson13.queries import GetTaskCancellationRow, ListSchedulesRow
from .db.lesson13.queries import Querier as CancellationQueries
from .db.lesson14.queries import Querier as VersionQueries
from .db.lesson15.queries import GetTaskContinuationRow, ListTaskPartitionsRow
from .db.lesson15.queries import Querier as ScaleQueries
from .lessons import ViewedLesson

# The busiest concurrency keys the overview lists, and the workers whose version it shows.
MAX_KEYS_LISTED = 20
MAX_WORKERS_LISTED = 50


@dataclass
class OverviewAdditions:
    concurrency_keys: list[ListConcurrencyKeysRow] | None = None
    rate_limits: list[ListRateLimitsRow] | None = None
    schedules: list[ListSchedulesRow] | None = None
    # Each worker's code version, and whether that version is draining.
    versions: dict[int, tuple[str, bool]] = field(default_factory=dict)
    partitions: list[ListTaskPartitionsRow] | None = None


@dataclass
class TaskAdditions:
    flow_control: GetTaskFlowControlRow | None = None
    cancellation: GetTaskCancellationRow | None = None
    code_version: str | None = None
    continuation: GetTaskContinuationRow | None = None


def read_overview_additions(
    conn: psycopg.Connection[Any], lesson: ViewedLesson
) -> OverviewAdditions:
    additions = OverviewAdditions()
    if lesson.has("flow_control"):
        flow = FlowControlQueries(conn)
        additions.concurrency_keys = flow.list_concurrency_keys(max_keys=MAX_KEYS_LISTED)
        additions.rate_limits = flow.list_rate_limits()
    if lesson.has("cancellation"):
        additions.schedules = CancellationQueries(conn).list_schedules()
    if lesson.has("versions"):
        additions.versions = {
            worker.id: (worker.code_version, worker.draining)
            for worker in VersionQueries(conn).list_worker_versions(max_workers=MAX_WORKERS_LISTED)
        }
    if lesson.has("partitions"):
        additions.partitions = ScaleQueries(conn).list_task_partitions()
    return additions


def read_task_additions(
    conn: psycopg.Connection[Any], lesson: ViewedLesson, task_id: int
) -> TaskAdditions:
    additions = TaskAdditions()
    if lesson.has("flow_control"):
        additions.flow_control = FlowControlQueries(conn).get_task_flow_control(id=task_id)
    if lesson.has("cancellation"):
        additions.cancellation = CancellationQueries(conn).get_task_cancellation(id=task_id)
    if lesson.has("versions"):
        additions.code_version = VersionQueries(conn).get_task_version(id=task_id)
    if lesson.has("partitions"):
        additions.continuation = ScaleQueries(conn).get_task_continuation(id=task_id)
    return additions
