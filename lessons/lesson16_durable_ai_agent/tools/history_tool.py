"""See and steer durable tasks from the command line.

    python -m lessons.lesson16_durable_ai_agent.tools.history_tool list
    python -m lessons.lesson16_durable_ai_agent.tools.history_tool history 1
    python -m lessons.lesson16_durable_ai_agent.tools.history_tool tree 1
    python -m lessons.lesson16_durable_ai_agent.tools.history_tool fork 1 --at 2
    python -m lessons.lesson16_durable_ai_agent.tools.history_tool replay 1
    python -m lessons.lesson16_durable_ai_agent.tools.history_tool flow
    python -m lessons.lesson16_durable_ai_agent.tools.history_tool cancel 1 \
        --by "support desk" --reason "the customer changed their mind"
    python -m lessons.lesson16_durable_ai_agent.tools.history_tool schedules
    python -m lessons.lesson16_durable_ai_agent.tools.history_tool check \
        --functions lessons.lesson16_durable_ai_agent.demo.tasks_v2_patched
    python -m lessons.lesson16_durable_ai_agent.tools.history_tool patches \
        --functions lessons.lesson16_durable_ai_agent.demo.tasks_v3
    python -m lessons.lesson16_durable_ai_agent.tools.history_tool versions
    python -m lessons.lesson16_durable_ai_agent.tools.history_tool move-version \
        --from v1 --to v2
    python -m lessons.lesson16_durable_ai_agent.tools.history_tool drain v1
    python -m lessons.lesson16_durable_ai_agent.tools.history_tool stats
    python -m lessons.lesson16_durable_ai_agent.tools.history_tool partitions

`list` shows the newest tasks; `history` a task's event log; `tree` a task with
its children and its forks (and theirs); `replay` and `fork` run a finished
durable task again (see engine/reruns.py); `flow` shows what holds tasks back:
each concurrency key's slots taken and tasks waiting, and each rate limit's
units left; `cancel` cancels a task and its unfinished children (see
engine/client.py: a durable task that has run compensates first); `schedules`
shows each schedule, its next tick and its latest ticks. `check`, `patches`,
`versions`, `move-version`, `drain` and `undrain` are for deploys (see
deploy_commands.py): `check` exits 1 when the new code would break a task in
flight. `stats` shows what a DBA watches: each table's live and dead rows,
its size, the share of its updates that were HOT, and autovacuum's last
pass; `partitions` each range of task ids, its tasks and its size, and
whether retention is removing it. The database is found like everywhere in
the course (DATABASE_URL, else the embedded server), and `--schema` says which
schema holds the tables: this lesson's unless told otherwise.

What cannot be done (an unknown task, an event outside the history, a task that
is still running, or one with a child that is) is one line on stderr and exit
code 1. A command line that
does not parse, or a database that cannot be reached, is exit code 2.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Sequence
from typing import Any

import psycopg

from lessons.common.cli import EXIT_NO_DATABASE, Lesson
from lessons.common.database import DatabaseUnavailable, connect

from ..db.models import EventKind, Schedule, Task, TaskStatus
from ..db.queries import ListHistoryRow, Querier
from ..engine.client import cancel
from ..engine.reruns import RerunRefused, fork, replay
from ..engine.shared import first_line
from .deploy_commands import (
    add_deploy_commands,
    drain_lines,
    move_lines,
    run_check,
    version_rows,
)

EXIT_REFUSED = 1

# `list` shows this many tasks unless told otherwise.
DEFAULT_LIST_LENGTH = 20

# The columns of `history`. "until" is when a sleep ends, or a wait's deadline,
# counted from when the event was recorded: +5 s, +24 h.
HISTORY_HEADING = [
    "event",
    "kind",
    "name",
    "key",
    "child task",
    "attempt",
    "recorded at",
    "until",
    "copied from",
]


def main(argv: Sequence[str] | None = None) -> int:
    options = parser().parse_args(argv)
    status = 0
    try:
        if options.command in ("check", "patches"):
            # Replays need a pool, as a worker's durable context does.
            lines, status = run_check(options)
        else:
            with connect(schema=options.schema) as conn:
                lines = run_command(conn, options)
    except (RerunRefused, LookupError) as refusal:
        return fail(str(refusal), EXIT_REFUSED)
    except DatabaseUnavailable as error:
        return fail(str(error), EXIT_NO_DATABASE)
    except ValueError as error:  # a schema name that cannot be one
        return fail(str(error), EXIT_NO_DATABASE)
    except psycopg.errors.UndefinedTable:
        return fail(
            f"schema {options.schema} has no tasks table: run this lesson's main.py first, "
            "or name another schema with --schema",
            EXIT_NO_DATABASE,
        )
    except psycopg.Error as error:  # the server went away, or refused a statement
        return fail(f"the database refused: {first_line(error)}", EXIT_NO_DATABASE)
    print("\n".join(lines))
    return status


def parser() -> argparse.ArgumentParser:
    tool = argparse.ArgumentParser(
        prog=f"python -m {__package__}.history_tool",
        description="See durable tasks' histories, children and forks; replay and fork them.",
    )
    tool.add_argument(
        "--schema",
        default=Lesson.of(__file__).schema,
        help="the schema that holds the tables (default: %(default)s)",
    )
    commands = tool.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="the newest tasks: status, attempts, age")
    listing.add_argument(
        "--limit", type=positive, default=DEFAULT_LIST_LENGTH, metavar="N", help="how many"
    )
    flow = commands.add_parser("flow", help="concurrency keys and rate limits: what is taken")
    flow.add_argument(
        "--limit", type=positive, default=DEFAULT_LIST_LENGTH, metavar="N", help="how many keys"
    )
    commands.add_parser("schedules", help="each schedule, its next tick, its latest ticks")
    commands.add_parser("stats", help="each table's rows, dead rows, size, HOT updates, vacuum")
    commands.add_parser("partitions", help="each range of task ids: its tasks, size and state")
    add_deploy_commands(commands)
    for command, about in (
        ("cancel", "cancel a task and its unfinished children"),
        ("history", "a task's event log"),
        ("tree", "a task, its children and its forks"),
        ("replay", "delete a finished task's history and run it again from scratch"),
        ("fork", "a new task with a copy of the history before event N, run from N on"),
    ):
        commands.add_parser(command, help=about).add_argument(
            "task", type=int, help="the task's id"
        )
    commands.choices["cancel"].add_argument(
        "--by", required=True, metavar="WHO", help="who cancels it, kept with the task"
    )
    commands.choices["cancel"].add_argument(
        "--reason", required=True, metavar="WHY", help="why, kept with the task"
    )
    commands.choices["fork"].add_argument(
        "--at",
        type=int,
        required=True,
        metavar="N",
        help="the first event the fork runs again; the events before it are copied",
    )
    return tool


def positive(text: str) -> int:
    """An argparse type: a whole number, 1 or more."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number, 1 or more, not {text!r}")
    return int(text)


def run_command(conn: psycopg.Connection[Any], options: argparse.Namespace) -> list[str]:
    queries = Querier(conn)
    match options.command:
        case "list":
            return list_lines(queries, options.limit)
        case "history":
            return history_lines(queries, options.task)
        case "tree":
            return tree_lines(queries, options.task)
        case "replay":
            return replay_lines(conn, options.task)
        case "fork":
            return fork_lines(conn, options.task, options.at)
        case "flow":
            return flow_lines(queries, options.limit)
        case "cancel":
            return cancel_lines(conn, options.task, options.by, options.reason)
        case "schedules":
            return schedule_lines(queries)
        case "stats":
            return stats_lines(queries)
        case "partitions":
            return partition_lines(queries)
        case "versions":
            rows = version_rows(queries)
            if len(rows) == 1:
                return ["no code version: no live worker, no durable task pinned"]
            return table(rows, right_aligned={2, 3})
        case "move-version":
            return move_lines(conn, options.from_version, options.to_version)
        case "drain" | "undrain":
            return drain_lines(conn, options.code_version, undo=options.command == "undrain")
    raise AssertionError(f"unknown command {options.command}")  # argparse refuses it first


def fail(message: str, exit_code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return exit_code


def list_lines(queries: Querier, limit: int) -> list[str]:
    rows = [["task", "name", "durable", "status", "attempts", "age", "forked from"]]
    for task in queries.list_recent_tasks(max_tasks=limit):
        rows.append(
            [
                str(task.id),
                task.task_name,
                "yes" if task.durable else "",
                task.status,
                str(task.attempt),
                duration(task.age_seconds),
                lineage(task.forked_from_task_id, task.forked_at_event),
            ]
        )
    if len(rows) == 1:
        return ["no tasks yet"]
    return table(rows, right_aligned={0, 4, 5})


def history_lines(queries: Querier, task_id: int) -> list[str]:
    task = existing_task(queries, task_id)
    lines = [describe(task), *details(task)]
    events = queries.list_history(task_id=task.id)
    if not events:
        lines.append("no events" if task.durable else "not durable: it keeps no history")
        return lines
    rows = [HISTORY_HEADING]
    for event in events:
        if event.kind == EventKind.CANCELLATION:
            rows.append(["", "", "(what follows is the compensation)", "", "", "", "", "", ""])
        rows.append(
            [
                str(event.event_number),
                event.kind,
                event.name,
                event.key[:8],
                child_of(event),
                str(event.attempt),
                clock_time(event.recorded_at),
                f"+{duration((event.wake_at - event.recorded_at).total_seconds())}"
                if event.wake_at
                else "",
                f"task {event.copied_from_task_id}" if event.copied_from_task_id else "",
            ]
        )
    return [*lines, *table(rows, right_aligned={0, 5})]


def tree_lines(queries: Querier, task_id: int) -> list[str]:
    task = existing_task(queries, task_id)
    lines = [describe(task) + (f"; {lineage_of(task)}" if task.forked_from_task_id else "")]
    return lines + branches(queries, task, indent="")


def branches(queries: Querier, task: Task, *, indent: str) -> list[str]:
    """The children and forks of `task`, drawn below it; forks with their own branches."""
    items: list[tuple[str, Task | None]] = [
        (child_line(event), None)
        for event in queries.list_history(task_id=task.id)
        if event.child_task_id is not None
    ]
    items += [
        (f"fork at event {forked.forked_at_event}: {describe(forked)}", forked)
        for forked in queries.list_forks(task_id=task.id)
    ]
    lines: list[str] = []
    for number, (label, forked) in enumerate(items, start=1):
        last = number == len(items)
        lines.append(f"{indent}{'└── ' if last else '├── '}{label}")
        if forked is not None:
            lines += branches(queries, forked, indent=indent + ("    " if last else "│   "))
    return lines


def replay_lines(conn: psycopg.Connection[Any], task_id: int) -> list[str]:
    done = replay(conn, task_id)
    lines = [
        f"task {task_id} ({done.task.task_name}) is queued to run from scratch; "
        f"{count(len(done.cleared), 'event')} deleted."
    ]
    children = [event.child_task_id for event in done.cleared if event.child_task_id]
    if children:
        lines.append(
            f"The children they recorded ({tasks(children)}) stay as they are: "
            "the next run spawns new ones."
        )
    return lines


def fork_lines(conn: psycopg.Connection[Any], task_id: int, at_event: int) -> list[str]:
    forked = fork(conn, task_id, at_event=at_event)
    copied = Querier(conn).list_history(task_id=forked.id)
    reused = [event.child_task_id for event in copied if event.child_task_id]
    if at_event == 1:
        start = "It copies no events, and runs from event 1 on"
    elif at_event == 2:
        start = "It starts with a copy of event 1, and runs from event 2 on"
    else:
        start = (
            f"It starts with a copy of events 1 to {at_event - 1}, "
            f"and runs from event {at_event} on"
        )
    return [
        f"task {forked.id} ({forked.task_name}) is a fork of task {task_id} at event "
        f"{at_event}, queued on {forked.queue}.",
        start + (f"; it reuses child {tasks(reused)}." if reused else "."),
    ]


def flow_lines(queries: Querier, max_keys: int) -> list[str]:
    keys = queries.list_concurrency_keys(max_keys=max_keys)
    lines = ["concurrency keys (busiest first):"]
    if keys:
        rows = [["queue", "key", "running", "limit", "queued"]] + [
            [key.queue, key.key, str(key.running), str(key.max_per_key), str(key.queued)]
            for key in keys
        ]
        lines += table(rows, right_aligned={2, 3, 4})
    else:
        lines.append("  none")
    limits = queries.list_rate_limit_windows()
    lines.append("rate limits:")
    if limits:
        rows = [["name", "units", "per", "left now"]] + [
            [limit.name, str(limit.units), duration(limit.per_seconds), str(limit.units_left)]
            for limit in limits
        ]
        lines += table(rows, right_aligned={1, 2, 3})
    else:
        lines.append("  none")
    return lines


def existing_task(queries: Querier, task_id: int) -> Task:
    task = queries.get_task(id=task_id)
    if task is None:
        raise LookupError(f"there is no task {task_id}")
    return task


def describe(task: Task) -> str:
    """`task 4 process_order (durable): completed on attempt 1`."""
    kind = " (durable)" if task.durable else ""
    if task.status in (
        TaskStatus.COMPLETED,
        TaskStatus.FAILED,
        TaskStatus.CANCELLED,
        TaskStatus.RUNNING,
    ):
        state = f"{task.status} on attempt {task.attempt}"
    elif task.attempt:
        state = f"{task.status} after attempt {task.attempt}"
    else:
        state = str(task.status)
    return f"task {task.id} {task.task_name}{kind}: {state}"


def details(task: Task) -> list[str]:
    """What `history` says about a task below its first line."""
    lines = [f"enqueued {task.inserted_at.astimezone(datetime.UTC):%Y-%m-%d %H:%M:%S} UTC"]
    if task.forked_from_task_id:
        lines.append(lineage_of(task))
    if task.attempts_before_replay:
        lines.append(f"replayed after attempt {task.attempts_before_replay}")
    if task.cancel_requested_at is not None:
        when = f"{task.cancel_requested_at.astimezone(datetime.UTC):%Y-%m-%d %H:%M:%S} UTC"
        lines.append(f"cancelled by {task.cancelled_by} at {when}: {task.cancel_reason}")
    if task.code_version is not None:
        lines.append(f"code version {task.code_version}")
    if task.continued_from_task_id is not None:
        lines.append(f"continues task {task.continued_from_task_id} (continue-as-new)")
    if task.continued_as_task_id is not None:
        lines.append(f"continued as task {task.continued_as_task_id}")
    if task.idempotency_key is not None:
        lines.append(
            f"idempotency key {task.idempotency_key}, enqueued {count(task.enqueues, 'time')}"
        )
    failed = task.status in (TaskStatus.FAILED, TaskStatus.CANCELLED)
    error = (task.output or {}).get("error") if failed else None
    if error:
        lines.append(f"error: {error.get('type')}: {error.get('message')}")
    return lines


def stats_lines(queries: Querier) -> list[str]:
    """`stats`: a row per table, biggest first."""
    header = ["table", "partitions", "live rows", "dead rows", "size", "indexes", "HOT updates"]
    rows = [[*header, "autovacuum"]]
    for sizes in queries.table_sizes():
        hot = f"{100 * sizes.hot_updates / sizes.updates:.0f} %" if sizes.updates else "-"
        vacuumed = sizes.last_autovacuum
        rows.append(
            [
                sizes.table_name,
                str(sizes.partitions) if sizes.partitions else "-",
                str(sizes.live_rows),
                str(sizes.dead_rows),
                size(sizes.total_bytes),
                size(sizes.index_bytes),
                hot,
                clock_time(vacuumed) if vacuumed is not None else "never",
            ]
        )
    return table(rows, right_aligned={1, 2, 3, 4, 5, 6})


def partition_lines(queries: Querier) -> list[str]:
    """`partitions`: a row per range of task ids, oldest first, and the next id."""
    rows = [["task ids", "created", "tasks", "size", "state"]]
    for task_range in queries.list_partitions():
        removing = task_range.removing_since
        rows.append(
            [
                f"{task_range.first_id}-{task_range.end_id - 1}",
                clock_time(task_range.created_at),
                str(task_range.live_tasks),
                size(task_range.total_bytes),
                f"being removed since {clock_time(removing)}" if removing is not None else "",
            ]
        )
    next_id = queries.next_task_id()
    return [*table(rows, right_aligned={2, 3}), f"the next task's id: {next_id}"]


def size(byte_count: int) -> str:
    """Bytes as people read them: 8 kB, 1.2 MB, 3.4 GB."""
    for unit, length in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if byte_count >= length:
            return f"{byte_count / length:.1f} {unit}"
    return f"{byte_count} B"


def rule_of(schedule: Schedule) -> str:
    """When a schedule ticks: its cron expression, or `every 1 h`."""
    if schedule.every is not None:
        return f"every {duration(schedule.every.total_seconds())}"
    return schedule.cron or ""


def cancel_lines(conn: psycopg.Connection[Any], task_id: int, by: str, reason: str) -> list[str]:
    before = existing_task(Querier(conn), task_id)
    if before.status in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED):
        return [f"task {task_id} had finished ({before.status}): nothing to cancel"]
    if before.cancel_requested_at is not None:
        return [f"task {task_id} is being cancelled already, by {before.cancelled_by}"]
    status = cancel(conn, task_id, cancelled_by=by, reason=reason)
    if status == TaskStatus.CANCELLED:
        return [f"task {task_id} ({before.task_name}) is cancelled, and its unfinished children"]
    return [
        f"task {task_id} ({before.task_name}) is {status}, and compensates before it ends",
        "cancelled (a durable task that has run); its unfinished children are cancelled",
    ]


def schedule_lines(queries: Querier) -> list[str]:
    schedules = queries.list_schedules()
    if not schedules:
        return ["no schedules"]
    rows = [["schedule", "when", "zone", "task", "catch-up", "next tick"]] + [
        [
            schedule.name,
            rule_of(schedule),
            schedule.time_zone,
            schedule.task_name,
            f"{schedule.catch_up} (grace {duration(schedule.grace.total_seconds())})",
            clock_time(schedule.next_tick_at),
        ]
        for schedule in schedules
    ]
    lines = table(rows, right_aligned=set())
    ticks = queries.list_recent_ticks(max_ticks=DEFAULT_LIST_LENGTH)
    if ticks:
        lines.append("latest ticks:")
        rows = [["schedule", "tick", "outcome", "task", "worker"]] + [
            [
                tick.schedule,
                clock_time(tick.tick_at),
                tick.outcome,
                str(tick.task_id or ""),
                str(tick.worker_id),
            ]
            for tick in ticks
        ]
        lines += table(rows, right_aligned={3, 4})
    return lines


def lineage_of(task: Task) -> str:
    return "forked from " + lineage(task.forked_from_task_id, task.forked_at_event)


def lineage(forked_from_task_id: int | None, forked_at_event: int | None) -> str:
    if forked_from_task_id is None:
        return ""
    return f"task {forked_from_task_id} at event {forked_at_event}"


def child_of(event: ListHistoryRow) -> str:
    if event.child_task_id is None:
        return ""
    return f"{event.child_task_id} ({event.child_status})"


def count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def tasks(ids: Sequence[int]) -> str:
    """`task 2` or `tasks 2, 3`."""
    return f"task{'' if len(ids) == 1 else 's'} {', '.join(map(str, ids))}"


def child_line(event: ListHistoryRow) -> str:
    """`event 2 echo: task 5 (completed), copied from task 1`, a branch of `tree`."""
    copied = f", copied from task {event.copied_from_task_id}" if event.copied_from_task_id else ""
    return f"event {event.event_number} {event.name}: task {child_of(event)}{copied}"


def clock_time(moment: datetime.datetime) -> str:
    """Time of day in UTC, to the millisecond: events of one run are that close."""
    return moment.astimezone(datetime.UTC).strftime("%H:%M:%S.%f")[:-3]


def duration(seconds: float) -> str:
    """Seconds as people read them: 5 s, 3 min, 24 h, 2 d."""
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * length:
            return f"{seconds // length:.0f} {unit}"
    return f"{seconds:.0f} s"


def table(rows: list[list[str]], *, right_aligned: set[int]) -> list[str]:
    """Rows as lines of aligned columns, two spaces apart; the first row is the heading."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(width) if column in right_aligned else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


if __name__ == "__main__":
    sys.exit(main())
