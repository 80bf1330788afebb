"""The history tool's deploy commands: check new code, follow patches, see and move versions.

    history_tool check --functions myapp.tasks_v2 [--version V] [--ran-since DATE] [--all]
    history_tool patches --functions myapp.tasks_v2
    history_tool versions
    history_tool move-version --from V1 --to V2
    history_tool drain V1          (and undrain V1)

`check` replays the history of every unfinished durable task (of version V,
with `--version`; and the finished ones that ran since DATE, with
`--ran-since`) against the durable functions of the module named, without
running anything (see engine/determinism_check.py), and lists each task that
would break: the event, the recorded call, the new call, and which keys of
the input changed. Its exit status is 1 when any task would break, so that it
can gate a deploy. `patches` says, for each patch the replays met, which
unfinished tasks still take its old path (the ones that keep the patch in the
code) and how many hold its marker. `versions` lists the code versions that
workers run and tasks are pinned to, queue by queue, and says which are
stranded: tasks on a queue, and no live worker of their version serving it.
`move-version` moves the unfinished tasks of one version to another, and
`drain` stops a version's workers from starting new durable tasks (see
engine/client.py).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
from collections.abc import Mapping
from typing import Any

import psycopg

from lessons.common.database import create_pool

from ..db.queries import Querier
from ..engine.client import drain_version, move_to_version, undrain_version
from ..engine.determinism_check import CheckedTask, check_tasks, tasks_to_check
from ..engine.durable import DEFAULT_HISTORY_LIMIT, DurableFunction

# The exit status of a check that found a task the new code would break.
EXIT_WOULD_BREAK = 1


def add_deploy_commands(commands: Any) -> None:
    """Add the deploy commands to the history tool's subparsers."""
    check = commands.add_parser("check", help="replay unfinished histories against new code")
    patches = commands.add_parser("patches", help="which tasks still take each patch's old path")
    for command in (check, patches):
        command.add_argument(
            "--functions", required=True, metavar="MODULE", help="the new code's module"
        )
        command.add_argument("--version", metavar="V", help="only the tasks of code version V")
        command.add_argument(
            "--history-limit",
            type=int,
            default=DEFAULT_HISTORY_LIMIT,
            metavar="EVENTS",
            help="the workers' --history-limit (default %(default)s): where a history ends, "
            "whether the run continues as new",
        )
    check.add_argument(
        "--ran-since",
        type=datetime.datetime.fromisoformat,
        metavar="DATE",
        help="also the finished tasks whose last attempt started since DATE (ISO 8601)",
    )
    check.add_argument("--all", action="store_true", help="list the tasks that replay too")
    commands.add_parser("versions", help="code versions: live workers, unfinished tasks")
    move = commands.add_parser("move-version", help="move unfinished tasks to another version")
    move.add_argument("--from", dest="from_version", required=True, metavar="V1")
    move.add_argument("--to", dest="to_version", required=True, metavar="V2")
    for command, about in (
        ("drain", "a version's workers start no new durable task"),
        ("undrain", "a draining version's workers start new durable tasks again"),
    ):
        commands.add_parser(command, help=about).add_argument("code_version", metavar="VERSION")


def durable_functions_of(module_name: str) -> Mapping[str, DurableFunction]:
    """The `DURABLE_FUNCTIONS` of a module, or ValueError with the reason."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import {module_name}: {error}") from error
    functions = getattr(module, "DURABLE_FUNCTIONS", None)
    if not isinstance(functions, Mapping):
        raise ValueError(f"module {module_name} has no DURABLE_FUNCTIONS mapping")
    return functions


def run_check(options: argparse.Namespace) -> tuple[list[str], int]:
    """`check` and `patches`: the lines to print, and the exit status."""
    functions = durable_functions_of(options.functions)
    with create_pool(options.schema, min_size=1, max_size=2) as pool:
        tasks = tasks_to_check(
            pool, ran_since=getattr(options, "ran_since", None), code_version=options.version
        )
        results = list(check_tasks(pool, functions, tasks, history_limit=options.history_limit))
        with pool.connection() as conn:
            markers = {
                row.name: row.tasks for row in Querier(conn).count_unfinished_patch_markers()
            }
    if options.command == "patches":
        return patch_lines(results, markers), 0
    broken = [result for result in results if result.breaks]
    lines = [
        f"checked {len(results)} durable task(s) against {options.functions}: "
        f"{len(broken)} would break, {len(results) - len(broken)} replay"
    ]
    for result in results:
        if result.breaks:
            lines += breaking_lines(result)
        elif options.all:
            lines.append(f"{heading(result)}: {result.detail}")
    return lines, EXIT_WOULD_BREAK if broken else 0


def heading(result: CheckedTask) -> str:
    task = result.task
    return f"task {task.id} {task.task_name} ({task.status}, version {task.code_version})"


def breaking_lines(result: CheckedTask) -> list[str]:
    """A task that would break: the event, both calls, the changed keys."""
    mismatch = result.mismatch
    if mismatch is None:
        return [f"{heading(result)}: breaks: {result.detail}"]
    lines = [
        f"{heading(result)}: breaks at event {mismatch.event_number}",
        f"  recorded: {mismatch.recorded}",
        f"  new call: {mismatch.new_call}",
    ]
    if mismatch.input_changes:
        lines.append("  input changes:")
        lines += [f"    {change}" for change in mismatch.input_changes]
    return lines


def patch_lines(results: list[CheckedTask], markers: Mapping[str, int]) -> list[str]:
    """Each patch: the unfinished tasks on its old path, and how many hold its marker."""
    old_paths: dict[str, list[int]] = {}
    for result in results:
        for patch in result.old_paths_taken:
            old_paths.setdefault(patch, []).append(result.task.id)
    names = sorted(old_paths.keys() | markers.keys())
    if not names:
        return ["no patch met: no unfinished task takes a patch's old path or holds a marker"]
    lines = []
    for name in names:
        waiting = sorted(old_paths.get(name, []))
        old = (
            f"old path taken by {len(waiting)} unfinished task(s): {', '.join(map(str, waiting))}"
            if waiting
            else "no unfinished task takes the old path: it may be deprecated"
        )
        lines.append(f"patch {name}: {old}; marker held by {markers.get(name, 0)} task(s)")
    return lines


def version_rows(queries: Querier) -> list[list[str]]:
    """`versions`: a heading, and a row per code version and queue, saying which are stranded."""
    rows = [["version", "queue", "live workers", "unfinished tasks", "last heartbeat", "state"]]
    for version in queries.list_code_versions():
        if version.unfinished_tasks and not version.live_workers:
            state = "STRANDED: tasks and no live worker"
        elif version.draining:
            state = "draining"
        else:
            state = "serving" if version.live_workers else "idle"
        beat = version.last_heartbeat_at
        rows.append(
            [
                version.code_version,
                version.queue,
                str(version.live_workers),
                str(version.unfinished_tasks),
                f"{beat.astimezone(datetime.UTC):%Y-%m-%d %H:%M:%S} UTC" if beat else "never",
                state,
            ]
        )
    return rows


def move_lines(conn: psycopg.Connection[Any], from_version: str, to_version: str) -> list[str]:
    moved = move_to_version(conn, from_version=from_version, to_version=to_version)
    return [f"moved {len(moved)} unfinished task(s) from version {from_version} to {to_version}"]


def drain_lines(conn: psycopg.Connection[Any], code_version: str, *, undo: bool) -> list[str]:
    if not undo:
        drain_version(conn, code_version)
        return [f"version {code_version} is draining: its workers start no new durable task"]
    if not undrain_version(conn, code_version):
        raise LookupError(f"version {code_version} is not draining")
    return [f"version {code_version} starts new durable tasks again"]
