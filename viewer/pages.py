"""What each page shows, read from the database: plain data for the templates.

Every function here takes a connection and returns what one page (or its live
part) needs; none writes. The task page's timeline is where the engine's
mechanisms become visible: attempts, suspensions, children, waits, copies.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from .db.lesson11.queries import (
    GetTaskDetailsRow,
    ListDescendantsRow,
    ListForkTreeRow,
    ListRunningTasksRow,
    ListTasksRow,
    ListTimelineRow,
    ListWorkersRow,
    Querier,
)

# How much of each page: the newest tasks, workers and events, the first descendants.
# A page that shows fewer than there are says so.
MAX_TASKS_LISTED = 100
MAX_WORKERS_LISTED = 50
MAX_RUNNING_LISTED = 500
MAX_TREE_NODES = 500
MAX_TIMELINE_EVENTS = 500

# The longest JSON document a page shows in full; longer ones are cut, and say so.
MAX_JSON_CHARACTERS = 4000

# The statuses a task list may be filtered by, in the order a task meets them;
# a lesson's own statuses beyond these (cancelled, from lesson 13) are added.
STATUSES = ("queued", "running", "suspended", "completed", "failed")

# Event kinds that suspend the task until their wake_at (or until what they wait for).
SUSPENDING_KINDS = {"sleep", "child_wait", "wait"}


@dataclass(frozen=True)
class TaskFilters:
    """The task list's filters; None passes every task."""

    status: str | None = None
    task_name: str | None = None
    queue: str | None = None
    durable: bool | None = None

    @classmethod
    def from_query(cls, query: dict[str, str], statuses: Sequence[str]) -> TaskFilters:
        """Filters from a query string; a value the list cannot filter by is a ValueError."""
        status = query.get("status") or None
        if status is not None and status not in statuses:
            raise ValueError(f"no status {status!r}: choose one of {', '.join(statuses)}")
        durable = query.get("durable") or None
        if durable not in (None, "yes", "no"):
            raise ValueError("durable is yes or no")
        return cls(
            status=status,
            task_name=query.get("name") or None,
            queue=query.get("queue") or None,
            durable=None if durable is None else durable == "yes",
        )


@dataclass(frozen=True)
class WorkerView:
    worker: ListWorkersRow
    running: list[ListRunningTasksRow]

    @property
    def state(self) -> str:
        """alive, stopped, or lost (its lease ran out without a stop)."""
        if self.worker.stopped_at is not None:
            return "stopped"
        return "alive" if self.worker.alive else "lost"

    @property
    def heartbeat(self) -> str:
        """Its last heartbeat, and how long ago while that means something: a stopped
        worker says when it stopped instead (a count that grows for ever would change
        the overview at every poll, for nothing)."""
        if self.worker.stopped_at is not None:
            return f"stopped at {clock(self.worker.stopped_at)}"
        since = duration(self.worker.seconds_since_heartbeat, precise=True)
        return f"{clock(self.worker.last_heartbeat_at)} ({since} ago)"


@dataclass(frozen=True)
class Overview:
    queues: dict[str, dict[str, int]]
    workers: list[WorkerView]


@dataclass(frozen=True)
class TimelineItem:
    """One line of a task's timeline: an event, or what happened between two."""

    kind: str
    text: str
    event: ListTimelineRow | None = None


@dataclass
class TaskPage:
    task: GetTaskDetailsRow
    timeline: list[TimelineItem] = field(default_factory=list)
    descendants: list[ListDescendantsRow] = field(default_factory=list)
    forks: list[ListForkTreeRow] = field(default_factory=list)

    @property
    def attempt(self) -> str:
        """The attempt, against the attempts its retries allow: a replay gives it a
        fresh budget, and an attempt the database's outage ended does not count."""
        task = self.task
        allowed = task.max_retries + 1
        if not task.attempts_before_replay and not task.infrastructure_attempts:
            return f"{task.attempt} of at most {allowed}"
        counted = task.attempt - task.attempts_before_replay - task.infrastructure_attempts
        text = f"{task.attempt}: {counted} of the {allowed} it may make"
        if task.attempts_before_replay:
            text += " since its replay"
        if task.infrastructure_attempts:
            text += (
                f", not counting {task.infrastructure_attempts} that the database being "
                "out of reach ended"
            )
        return text

    @property
    def error(self) -> dict[str, Any] | None:
        """The error document of a failed attempt, while the task's output holds one."""
        output = self.task.output
        error = output.get("error") if isinstance(output, dict) else None
        return error if isinstance(error, dict) else None


def read_overview(conn: psycopg.Connection[Any]) -> Overview:
    queries = Querier(conn)
    queues: dict[str, dict[str, int]] = {}
    for depth in queries.queue_depths():
        queues.setdefault(depth.queue, {})[depth.status] = depth.tasks
    running: dict[int, list[ListRunningTasksRow]] = {}
    for task in queries.list_running_tasks(max_tasks=MAX_RUNNING_LISTED):
        if task.worker_id is not None:
            running.setdefault(task.worker_id, []).append(task)
    workers = [
        WorkerView(worker=worker, running=running.get(worker.id, []))
        for worker in queries.list_workers(max_workers=MAX_WORKERS_LISTED)
    ]
    return Overview(queues=queues, workers=workers)


def read_tasks(conn: psycopg.Connection[Any], filters: TaskFilters) -> list[ListTasksRow]:
    return Querier(conn).list_tasks(
        status=filters.status,
        task_name=filters.task_name,
        queue=filters.queue,
        durable=filters.durable,
        max_tasks=MAX_TASKS_LISTED,
    )


def read_task(conn: psycopg.Connection[Any], task_id: int) -> TaskPage | None:
    """The task page's data; None when there is no such task."""
    queries = Querier(conn)
    task = queries.get_task_details(id=task_id)
    if task is None:
        return None
    newest_first = queries.list_timeline(task_id=task_id, max_events=MAX_TIMELINE_EVENTS)
    return TaskPage(
        task=task,
        timeline=timeline(task, newest_first[::-1]),
        descendants=queries.list_descendants(task_id=task_id, max_tasks=MAX_TREE_NODES),
        forks=queries.list_fork_tree(task_id=task_id, max_tasks=MAX_TREE_NODES),
    )


def timeline(task: GetTaskDetailsRow, events: list[ListTimelineRow]) -> list[TimelineItem]:
    """The events in order, with the attempts and suspensions between them made visible.

    An attempt's number changes only when an attempt ended without finishing (it
    raised and was retried, or its worker was lost and another took it over):
    resuming after a suspension goes on in the same attempt. So a new number
    between two events marks a retry or a reassignment, and a suspending event
    followed by another event marks a suspension the task came back from. A
    fork's history starts with copies, which keep the attempt they were recorded
    on in the source task: where the copies end, the fork's own run begins.
    """
    items: list[TimelineItem] = []
    if task.attempts_before_replay:
        items.append(
            TimelineItem(
                kind="replay",
                text=f"replayed after attempt {task.attempts_before_replay}: its history was "
                "deleted, and it runs again from scratch",
            )
        )
    if events and events[0].event_number > 1:
        items.append(
            TimelineItem(
                kind="cut",
                text=f"events 1 to {events[0].event_number - 1} are not shown, only the "
                f"newest {len(events)} (history_tool history {task.id} lists them all)",
            )
        )
    previous: ListTimelineRow | None = None
    for event in events:
        if (
            previous is None
            or event.attempt != previous.attempt
            or (previous.copied_from_task_id is not None) != (event.copied_from_task_id is not None)
        ):
            items.append(TimelineItem(kind="attempt", text=attempt_text(event, previous)))
        elif previous.kind in SUSPENDING_KINDS:
            items.append(
                TimelineItem(
                    kind="resumed",
                    text="went on once the wait was over (suspended meanwhile, if it had to wait)",
                )
            )
        items.append(TimelineItem(kind=event.kind, text=event_text(event), event=event))
        previous = event
    items.append(TimelineItem(kind="now", text=now_text(task, previous)))
    return items


def attempt_text(event: ListTimelineRow, previous: ListTimelineRow | None) -> str:
    if event.copied_from_task_id is not None:
        return (
            f"copied from task {event.copied_from_task_id}, where attempt {event.attempt} "
            "recorded it: the history this fork starts from"
        )
    if previous is not None and previous.copied_from_task_id is not None:
        return (
            f"attempt {event.attempt} of this fork: it replayed the copies above, "
            "and runs on from here"
        )
    if previous is None:
        return f"attempt {event.attempt}"
    return (
        f"attempt {event.attempt}: attempt {previous.attempt} ended without finishing "
        "(it raised and was retried, or its worker was lost and another took over); "
        "this one replays the events before and goes on"
    )


def event_text(event: ListTimelineRow) -> str:
    match event.kind:
        case "child":
            return f"spawned child task {event.child_task_id} ({event.child_status})"
        case "sleep":
            return f"sleeps for {later(event.recorded_at, event.wake_at)}"
        case "child_wait":
            return f"waits for its children, {later(event.recorded_at, event.wake_at)} at most"
        case "wait":
            if event.wait_event_id is not None:
                ended = f"ended by external event {event.wait_event_id}"
            elif event.wait_ended_at is None:
                ended = "open"
            elif event.wait_timeout_at is not None and event.wait_ended_at < event.wait_timeout_at:
                # Before its deadline, without an event: only a cancellation ends one so.
                ended = "ended before its deadline by the task's cancellation"
            else:
                ended = "timed out"
            deadline = later(event.recorded_at, event.wait_timeout_at)
            return f"waits for {event.wait_key!r}, {deadline} at most: {ended}"
        case "step":
            return "step recorded"
        case "cancellation":
            return "met its cancellation here: what follows is its compensation"
        case "patch":
            return "patch marker: new code took its changed path here, and replays will too"
    return f"{event.kind} recorded"


def now_text(task: GetTaskDetailsRow, last: ListTimelineRow | None) -> str:
    match task.status:
        case "running":
            return f"running attempt {task.attempt} on worker {task.worker_id}"
        case "suspended":
            until = f" until {clock(task.wake_at)}" if task.wake_at else ""
            return f"suspended{until}: no worker holds it, no thread waits for it"
        case "queued":
            if task.attempt == 0:
                return "queued: no attempt yet"
            return f"queued again after attempt {task.attempt}"
        case "completed" | "failed" | "cancelled":
            return f"{task.status} on attempt {task.attempt}"
    return task.status


def clock(moment: datetime.datetime | None) -> str:
    """Time of day in UTC to the millisecond: the events of one run are that close."""
    if moment is None:
        return ""
    return f"{moment.astimezone(datetime.UTC):%H:%M:%S.%f}"[:-3] + " UTC"


def later(start: datetime.datetime, end: datetime.datetime | None) -> str:
    """How long after `start` `end` is, as people read it: 250 ms, 5 s, 3 min, 24 h."""
    if end is None:
        return "no time"
    return duration((end - start).total_seconds())


def duration(seconds: float, *, precise: bool = False) -> str:
    """A duration as people read it: 250 ms, 5 s, 3 min, 24 h; `precise`, to the
    tenth of a second under a minute (heartbeats come that often)."""
    if seconds < 1 and not precise:
        return f"{max(seconds, 0) * 1000:.0f} ms"
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * length:
            return f"{seconds // length:.0f} {unit}"
    return f"{max(seconds, 0):.1f} s" if precise else f"{seconds:.0f} s"


def pretty_json(value: Any) -> str:
    """A JSON value laid out for reading, cut at MAX_JSON_CHARACTERS."""
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
    if len(text) > MAX_JSON_CHARACTERS:
        left = len(text) - MAX_JSON_CHARACTERS
        return text[:MAX_JSON_CHARACTERS] + f"\n… ({left} more characters)"
    return text
