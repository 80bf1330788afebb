"""Issue 21: what each cause costs in an order's engine statements, lesson by lesson.

    python -m benchmarks.statement_costs [--fill 3000] [--rounds 1000] [--analyze] CASE ...

A case is a lesson's package and a variant of its schema (`VARIANTS`; none: "base"),
for example `lesson13_cancellation_and_schedules:no-key-triggers`.

`benchmarks.order_costs` counts an order's commits and round trips; lessons 12 to 15
make as many as lesson 09 and still run slower, on the server's CPU. This measures
where, one cause at a time. One connection (`synchronous_commit = off`: a commit's
flush would be most of each call, and noise) runs a *round* of ten statements, each
the lesson's own generated query with the arguments its engine passes:

    CreateTask (a durable parent), ClaimTasks (takes it), CreateTask (its child),
    SuspendTask (the parent waits), ClaimTasks (the child), ClaimTasks (takes
    nothing), FinishAttempts (the child), WakeTasks (the parent), ClaimTasks (the
    parent again), FinishAttempts (the parent).

`--fill` rounds fill the table, then `--rounds` are measured. Every case has a database
of its own on one throwaway server (`harness/counting_server.py`), and the cases take
their rounds in turn, so that the machine's load falls on all of them alike. Reported
per case: executor time, shared buffers hit and WAL records per round, from
pg_stat_statements, and the client's median time per statement.

A variant changes one cause in the lesson's schema (`VARIANTS`). `--analyze` runs
ANALYZE after the fill: the poller's generic plan of ClaimTasks (lesson 12's PlanOnce)
is made when the worker starts, on an empty table with no statistics, and an ANALYZE
makes it again; without `--analyze` the round runs on the plans a fresh worker has.
"""

from __future__ import annotations

import argparse
import inspect
import re
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from lessons.common.database import connect, reset_schema

from .harness.counting_server import CountingServer
from .systems.lesson_engine import LessonEngine

SCHEMA = "statement_costs"
QUEUE = "orders"
PARENT = "process_order"
CHILD = "charge_payment"
CLAIM_SIZE = 20

_KEY_TRIGGERS = (
    "DROP TRIGGER tasks_inserted_count_key_slots ON tasks;"
    "DROP TRIGGER tasks_updated_count_key_slots ON tasks;"
    "DROP TRIGGER tasks_deleted_count_key_slots ON tasks;"
)
_KEY_SLOTS_BEGIN = "    now_running integer;\nBEGIN\n"


@dataclass(frozen=True)
class Variant:
    """One cause changed: the lesson's schema text patched, then SQL run after it."""

    patch: tuple[str, str] | None = None
    after: str = ""

    def schema(self, text: str) -> str:
        if self.patch is not None:
            old, new = self.patch
            if text.count(old) != 1:
                raise ValueError(f"the schema has {text.count(old)} of {old!r}, not one")
            text = text.replace(old, new)
        return f"{text}\n{self.after}\n"


VARIANTS: dict[str, Variant] = {
    "base": Variant(),
    # Lesson 12's count_key_slots: no trigger at all, or one that returns at once.
    "no-key-triggers": Variant(after=_KEY_TRIGGERS),
    "key-trigger-returns-at-once": Variant(
        patch=(_KEY_SLOTS_BEGIN, _KEY_SLOTS_BEGIN + "    RETURN NULL;\n")
    ),
    # Lesson 13's idempotency index as it was first: not partial, a NULL entry a
    # keyless task. (CreateTask's ON CONFLICT ... WHERE infers it as well.)
    "full-idempotency-index": Variant(
        after="DROP INDEX tasks_idempotency_key_idx;"
        "CREATE UNIQUE INDEX tasks_idempotency_key_idx ON tasks (idempotency_key);"
    ),
    # Lesson 13's indexes by which a cancellation finds children.
    "no-child-indexes": Variant(
        after="DROP INDEX tasks_parent_idx; DROP INDEX task_events_child_idx;"
    ),
    # Lesson 15's trigger that stamps finished_at.
    "no-finished-at-trigger": Variant(after="DROP TRIGGER tasks_set_finished_at ON tasks;"),
    "finished-at-trigger-without-when": Variant(
        after="DROP TRIGGER tasks_set_finished_at ON tasks;"
        "CREATE TRIGGER tasks_set_finished_at BEFORE INSERT OR UPDATE OF status ON tasks"
        " FOR EACH ROW EXECUTE FUNCTION set_finished_at();"
    ),
}

# How many of each statement a round runs.
PER_ROUND = {
    "CreateTask": 2,
    "ClaimTasks": 4,
    "SuspendTask": 1,
    "FinishAttempts": 2,
    "WakeTasks": 1,
}
# The generated module's constant of each statement, to find it in pg_stat_statements.
CONSTANTS = {
    "CreateTask": "CREATE_TASK",
    "ClaimTasks": "CLAIM_TASKS",
    "SuspendTask": "SUSPEND_TASK",
    "FinishAttempts": "FINISH_ATTEMPTS",
    "WakeTasks": "WAKE_TASKS",
}


@dataclass(frozen=True)
class StatementCost:
    calls: int
    exec_ms: float  # per call
    buffers: float
    wal_records: float


@dataclass
class Case:
    package: str
    variant: str
    database: str
    engine: LessonEngine
    times: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    @property
    def title(self) -> str:
        return f"lesson {self.engine.number}, {self.variant}"


def keyword_call(method: Callable[..., Any], **known: Any) -> Any:
    """`method` with the arguments it takes of `known`, and None for the others."""
    arguments = {
        name: known.get(name)
        for name, parameter in inspect.signature(method).parameters.items()
        if parameter.kind == parameter.KEYWORD_ONLY
    }
    return method(**arguments)


def rounds(
    case: Case, conn: psycopg.Connection[Any], fill: int, measured: int, analyze: bool
) -> Iterator[str]:
    """Run the rounds, yielding after each; "filled" once the table is full."""
    engine = case.engine
    queries = engine.querier(conn)
    conn.execute("SET synchronous_commit = off")
    worker = engine.register_worker(conn, name="statement_costs", queue=QUEUE)
    engine.plan_claims_once(conn)
    enqueue = {
        "queue": QUEUE,
        "display_name": "order",
        "input_": {"order": 1},
        "priority": 0,
        "max_retries": 3,
    }

    def timed(label: str, method: Callable[..., Any], *args: Any, **known: Any) -> Any:
        start = time.perf_counter()
        result = method(*args, **known)
        case.times[label].append((time.perf_counter() - start) * 1000)
        return result

    def claim(label: str) -> list[Any]:
        claimed: list[Any] = timed(
            label,
            engine.claim,
            conn,
            worker_id=worker,
            queue=QUEUE,
            task_names=[CHILD],
            durable_task_names=[PARENT],
            max_tasks=CLAIM_SIZE,
        )
        return claimed

    for number in range(fill + measured):
        if number == fill:
            if analyze:
                conn.execute("ANALYZE")
            case.times.clear()
            yield "filled"
        create = queries.create_task
        root = timed("CreateTask", keyword_call, create, task_name=PARENT, durable=True, **enqueue)
        (parent,) = claim("ClaimTasks (one)")
        child = timed(
            "CreateTask",
            keyword_call,
            create,
            task_name=CHILD,
            durable=False,
            parent_id=parent.id,
            **enqueue,
        )
        timed(
            "SuspendTask",
            keyword_call,
            queries.suspend_task,
            wake_at=None,
            id=parent.id,
            attempt=parent.attempt,
            worker_id=worker,
            compensating=False,
        )
        (running_child,) = claim("ClaimTasks (one)")
        empty = claim("ClaimTasks (none)")
        timed("FinishAttempts", engine.finish_completed, conn, worker, [running_child])
        timed("WakeTasks", queries.wake_tasks, ids=[parent.id])
        (resumed,) = claim("ClaimTasks (one)")
        timed("FinishAttempts", engine.finish_completed, conn, worker, [resumed])
        if (parent.id, running_child.id, resumed.id, empty) != (root.id, child.id, root.id, []):
            raise AssertionError(f"{case.title}: a round claimed other tasks than its own")
        yield "round"


def _shape(query: str) -> str:
    """A statement's text without comments, constants or parameters, for matching."""
    lines = [line for line in query.splitlines() if not line.strip().startswith("--")]
    joined = " ".join(" ".join(lines).split())
    return re.sub(r"\$\d+|'[^']*'|\b\d+\b", "?", joined)[:150]


def statement_costs(meter: psycopg.Connection[Any], case: Case) -> dict[str, StatementCost]:
    rows = meter.execute(
        "SELECT query, calls, total_exec_time, shared_blks_hit, wal_records"
        " FROM pg_stat_statements WHERE toplevel"
        " AND dbid = (SELECT oid FROM pg_database WHERE datname = %s)",
        (case.database,),
    ).fetchall()
    module = case.engine.module("db.queries")
    costs = {}
    for name, constant in CONSTANTS.items():
        wanted = _shape(getattr(module, constant))
        matching = [row for row in rows if _shape(row[0]) == wanted]
        calls = sum(int(row[1]) for row in matching)
        if calls:
            costs[name] = StatementCost(
                calls,
                sum(float(row[2]) for row in matching) / calls,
                sum(float(row[3]) for row in matching) / calls,
                sum(float(row[4]) for row in matching) / calls,
            )
    return costs


def report(cases: Sequence[Case], costs: Sequence[dict[str, StatementCost]]) -> list[str]:
    lines = [
        "| case | executor ms / round | buffers / round | WAL records / round | "
        + " | ".join(f"{name} ms" for name in PER_ROUND)
        + " |",
        "|---|---:|---:|---:|" + "---:|" * len(PER_ROUND),
    ]
    for case, cost in zip(cases, costs, strict=True):

        def per_round(value: Callable[[StatementCost], float], cost: Any = cost) -> float:
            return sum(value(cost[name]) * count for name, count in PER_ROUND.items())

        lines.append(
            f"| {case.title} | {per_round(lambda c: c.exec_ms):.3f} | "
            f"{per_round(lambda c: c.buffers):.1f} | {per_round(lambda c: c.wal_records):.2f} | "
            + " | ".join(f"{cost[name].exec_ms:.3f}" for name in PER_ROUND)
            + " |"
        )
    lines += ["", "Client median per call, ms (round trip and commit included):", ""]
    labels = sorted({label for case in cases for label in case.times})
    lines.append("| case | " + " | ".join(labels) + " |")
    lines.append("|---|" + "---:|" * len(labels))
    for case in cases:
        medians = [f"{statistics.median(case.times[label]):.3f}" for label in labels]
        lines.append(f"| {case.title} | " + " | ".join(medians) + " |")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--fill", type=int, default=3000, help="rounds before the measured ones")
    parser.add_argument("--rounds", type=int, default=1000, help="rounds measured")
    parser.add_argument("--analyze", action="store_true", help="ANALYZE after the fill")
    parser.add_argument("cases", nargs="+", help=f"PACKAGE[:VARIANT]; variants: {list(VARIANTS)}")
    options = parser.parse_args(argv)
    with CountingServer.started() as server:
        cases, connections, runs = [], [], []
        for number, spec in enumerate(options.cases):
            package, _, variant = spec.partition(":")
            case = Case(package, variant or "base", f"case{number}", LessonEngine.named(package))
            with psycopg.connect(server.url, autocommit=True) as admin:
                admin.execute(f"CREATE DATABASE {case.database}")
            url = make_conninfo(server.url, dbname=case.database)
            text = VARIANTS[case.variant].schema(case.engine.schema_sql.read_text())
            with tempfile.TemporaryDirectory() as directory:
                schema_sql = Path(directory) / "schema.sql"
                schema_sql.write_text(text)
                reset_schema(SCHEMA, schema_sql, url=url)
            conn = connect(url, schema=SCHEMA)
            cases.append(case)
            connections.append(conn)
            runs.append(rounds(case, conn, options.fill, options.rounds, options.analyze))
        try:
            # Each case fills its table; then all take their measured rounds in
            # turns, the counters reset in between.
            for run in runs:
                while next(run) != "filled":
                    pass
            with psycopg.connect(server.url, autocommit=True) as meter:
                meter.execute("SELECT pg_stat_statements_reset()")
                active = list(runs)
                while active:
                    for run in list(active):
                        if next(run, None) is None:
                            active.remove(run)
                costs = [statement_costs(meter, case) for case in cases]
        finally:
            for conn in connections:
                conn.close()
    print(
        f"{options.fill} rounds to fill each table, then {options.rounds} measured"
        f"{', after ANALYZE' if options.analyze else ', on the plans of a fresh worker'}"
    )
    print()
    print("\n".join(report(cases, costs)))


if __name__ == "__main__":
    main()
