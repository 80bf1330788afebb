"""A lesson's engine as its tables grow: one claim, wake-ups, durable orders.

Three measurements of `scale_growth.py` (lesson 15's benchmark), on any lesson from 09
on (`lesson_engine.py`); the fourth, deleting finished work, is in `retention.py`, and
replays in `replay.py`.

- **One claim** (`ClaimAtSize`): the lesson's own `Querier.claim_tasks`, timed alone in
  this process, on a queue kept at N queued no-op tasks, and its plan (EXPLAIN ANALYZE,
  BUFFERS, through auto_explain, so the plan is that of the very call the poller makes).
- **Wake-ups** (`WakeUps`): N durable tasks suspended in a sleep whose wake-up times are
  spread over a window, drained by the lesson's own worker processes; each task's
  lateness is its claim's time minus its wake-up time, both on the database's clock.
- **Durable orders**: the harness's durable case, lesson 09's order (a durable task,
  two children) run by the lesson's own worker processes (`lesson_orders.EngineOrders`,
  in its schema `ORDERS_SCHEMA`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from lessons.common.database import connect, reset_schema
from lessons.common.stats import percentile

from ..harness.measure import watch_burn_down
from ..harness.processes import started_together
from .lesson04 import UNFINISHED_SQL
from .lesson_engine import BENCH_CODE_VERSION, LESSON_VARIABLE, LessonEngine
from .noop import TASK_NAME

# What the worker processes get as `--functions` (it reads the lesson from LESSON_VARIABLE).
SCALE_FUNCTIONS = f"{__package__}.scale_functions"

CLAIM_SCHEMA = "bench_scale_claim"
WAKE_SCHEMA = "bench_scale_wake"
ORDERS_SCHEMA = "bench_scale_orders"
QUEUE = "scale"
# Notifications wake the workers; polling is only the fallback (the lessons' default).
POLL_INTERVAL = 5.0
# A sleeper's recorded call: ctx.sleep(60), whatever its wake-up time says.
SLEEP_SECONDS = 60.0
# Unfinished, for the wake-ups: anything queued or running, or a sleeper due within the
# hour (the others wake up a day later). Partial indexes answer each part, so the poll
# every 5 ms costs little.
SLEEPERS_DUE_SQL = (
    f"{UNFINISHED_SQL} OR EXISTS (SELECT FROM tasks WHERE status = 'suspended'"
    f" AND queue = '{QUEUE}' AND wake_at < now() + interval '1 hour')"
)


def checkpoint(conn: psycopg.Connection[Any]) -> None:
    """Write the fill's pages out now, so that no checkpoint does it during the timing.

    CHECKPOINT needs the pg_checkpoint role (or a superuser): without it, carry on.
    """
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        conn.execute("CHECKPOINT")


def explained(conn: psycopg.Connection[Any], call: Callable[[], object]) -> str:
    """The plan of the statements `call` runs on `conn`, as EXPLAIN (ANALYZE, BUFFERS) has it.

    auto_explain, loaded in this session only and at NOTICE level, sends the plan of each
    statement to this client as it runs: the plan of the lesson's own call, with its own
    parameters and its own (generic) plan, not of a statement rebuilt for EXPLAIN.
    """
    notices: list[str] = []

    def keep(diagnostic: psycopg.errors.Diagnostic) -> None:
        notices.append(diagnostic.message_primary or "")

    try:
        conn.execute("LOAD 'auto_explain'")
    except psycopg.Error as error:
        return f"(no plan: auto_explain could not be loaded: {str(error).strip()})"
    settings = {
        "log_analyze": "on",
        "log_buffers": "on",
        "log_timing": "on",
        "log_nested_statements": "off",
        "log_level": "notice",
        "log_min_duration": "0",
    }
    for name, value in settings.items():
        conn.execute(f"SET auto_explain.{name} = {value}")
    conn.add_notice_handler(keep)
    try:
        call()
    finally:
        conn.execute("SET auto_explain.log_min_duration = -1")
        conn.remove_notice_handler(keep)
    return "\n\n".join(notices)


@dataclass(frozen=True)
class ClaimTimes:
    seconds: list[float]  # of each timed claim, on this process's clock
    tasks: int  # claimed by the timed claims, in all
    plan: str  # of one more claim, after the timed ones

    @property
    def p50(self) -> float:
        return percentile(self.seconds, 0.5)

    @property
    def p99(self) -> float:
        return percentile(self.seconds, 0.99)

    @property
    def tasks_per_claim(self) -> float:
        return self.tasks / len(self.seconds)


@dataclass(frozen=True)
class ClaimAtSize:
    """One ClaimTasks call at a time, timed, on a queue kept at `queued` no-op tasks.

    As in the flow-control benchmark (`flow_control.ClaimLoop`): after each claim,
    untimed, on another connection, the claimed tasks are marked completed by the
    lesson's own FinishAttempts and as many new tasks are enqueued, so every claim
    finds `queued` tasks. The claiming connection is set up as the lesson's poller's
    (one generic plan); the first `warm_up` claims are not timed.
    """

    engine: LessonEngine
    queued: int
    claims: int
    max_tasks: int = 10
    warm_up: int = 20

    def run(self) -> ClaimTimes:
        reset_schema(CLAIM_SCHEMA, self.engine.schema_sql)
        with connect(schema=CLAIM_SCHEMA) as conn, connect(schema=CLAIM_SCHEMA) as claims:
            self.engine.plan_claims_once(claims)
            worker_id = self.engine.register_worker(conn, name="claim loop", queue=QUEUE)
            enqueue_noops(conn, self.queued)
            # A queue in use has statistics and a visibility map; a table just filled has
            # neither, and its first readers would write every page's hint bits.
            conn.execute("VACUUM (ANALYZE) tasks")
            checkpoint(conn)
            seconds: list[float] = []
            claimed = 0
            for number in range(self.warm_up + self.claims):
                started = time.perf_counter()
                tasks = self._claim(claims, worker_id)
                took = time.perf_counter() - started
                if number >= self.warm_up:
                    seconds.append(took)
                    claimed += len(tasks)
                self._complete_and_replace(conn, worker_id, tasks)
            last: list[Any] = []
            plan = explained(claims, lambda: last.extend(self._claim(claims, worker_id)))
            self._complete_and_replace(conn, worker_id, last)
        return ClaimTimes(seconds=seconds, tasks=claimed, plan=plan)

    def _claim(self, conn: psycopg.Connection[Any], worker_id: int) -> list[Any]:
        return self.engine.claim(
            conn,
            worker_id=worker_id,
            queue=QUEUE,
            task_names=[TASK_NAME],
            durable_task_names=[],
            max_tasks=self.max_tasks,
        )

    def _complete_and_replace(
        self, conn: psycopg.Connection[Any], worker_id: int, tasks: list[Any]
    ) -> None:
        if tasks:
            self.engine.finish_completed(conn, worker_id, tasks)
            enqueue_noops(conn, len(tasks))


def enqueue_noops(conn: psycopg.Connection[Any], count: int) -> None:
    """`count` queued no-op tasks in one statement: the rows enqueue() writes, without
    its round trip per task (enqueueing is not what is measured)."""
    conn.execute(
        "INSERT INTO tasks (queue, task_name, display_name, input)"
        " SELECT %s, %s, %s, '{}'::jsonb FROM generate_series(1, %s)",
        (QUEUE, TASK_NAME, TASK_NAME, count),
    )


@dataclass(frozen=True)
class Lateness:
    seconds: list[float]  # of each sleeper: its claim's time minus its wake-up time
    window: float  # seconds from the first wake-up time to the last
    drained_in: float  # seconds from the first wake-up time to the last claim
    lead: float  # seconds between the fill's commit and the first wake-up time

    @property
    def p50(self) -> float:
        return percentile(self.seconds, 0.5)

    @property
    def p99(self) -> float:
        return percentile(self.seconds, 0.99)

    @property
    def worst(self) -> float:
        return max(self.seconds)

    @property
    def rate(self) -> float:
        """Sleepers resumed and completed per second, from the first wake-up time on."""
        return len(self.seconds) / self.drained_in


@dataclass(frozen=True)
class WakeUps:
    """`sleepers` durable tasks suspended in a sleep, woken by the lesson's worker processes.

    The sleepers are written straight into the tables, as the lesson's own sleep leaves
    them (the task suspended at attempt 1 with its wake_at, pinned to the workers' code
    version where the lesson pins; its history one sleep event with the same wake_at), in
    one transaction. The first `due` of them wake up at times spread evenly over `window`
    seconds, the first one `lead` seconds after the transaction begins: the workers are
    running and idle by then, and the fill's notification (a suspended task with a
    wake-up time) tells their pollers when the next one is due. The others, if any, wake
    up a day later: they stay suspended, in the claim's index, through the measurement.
    Each sleeper's run replays its sleep, which is over, and completes. Lateness is the
    claim's `started_at` minus the event's wake_at.
    """

    engine: LessonEngine
    sleepers: int
    due: int
    window: float
    processes: int
    slots: int

    @property
    def lead(self) -> float:
        # The fill's transaction must commit before the first wake-up time: it takes
        # about 1.5 s per 100,000 sleepers here (`_lateness` checks that it did).
        return 3.0 + self.sleepers * 3e-5

    def run(self) -> Lateness:
        reset_schema(WAKE_SCHEMA, self.engine.schema_sql)
        with self._workers() as pids, connect(schema=WAKE_SCHEMA) as conn:
            committed = self._fill(conn)
            watch_burn_down(
                conn,
                tasks=self.due,
                unfinished_sql=SLEEPERS_DUE_SQL,
                first_start_sql="SELECT min(started_at) FROM tasks",
                consumer_pids=pids,
                timeout=self.window + 600.0,
            )
            return self._lateness(conn, committed)

    def _fill(self, conn: psycopg.Connection[Any]) -> Any:
        """Write the sleepers; the commit's time, on the database's clock."""
        pinned = self.engine.pins_code_versions
        version_column = ", code_version" if pinned else ""
        version_value = ", %(version)s" if pinned else ""
        event_kind = self.engine.module("db.models").EventKind("sleep")
        key = self.engine.module("engine.durable").event_key(
            event_kind, "sleep", {"seconds": SLEEP_SECONDS}
        )
        with conn.transaction():
            conn.execute(
                f"""
                WITH sleepers AS (
                    INSERT INTO tasks (queue, task_name, display_name, input, status, durable,
                                       attempt, wake_at{version_column})
                    SELECT %(queue)s, 'sleep_once', 'sleep_once', %(input)s, 'suspended', true,
                           1, now() + CASE
                               WHEN n < %(due)s
                                   THEN make_interval(secs => %(lead)s + %(window)s * n / %(due)s)
                               ELSE interval '1 day'
                           END
                           {version_value}
                    FROM generate_series(0, %(count)s - 1) AS n
                    RETURNING id, wake_at
                )
                INSERT INTO task_events (task_id, event_number, kind, name, input, key, wake_at,
                                         attempt)
                SELECT id, 1, 'sleep', 'sleep', %(input)s, %(key)s, wake_at, 1 FROM sleepers
                """,
                {
                    "queue": QUEUE,
                    "input": Jsonb({"seconds": SLEEP_SECONDS}),
                    "lead": self.lead,
                    "window": self.window,
                    "count": self.sleepers,
                    "due": self.due,
                    "version": BENCH_CODE_VERSION,
                    "key": key,
                },
            )
        row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        return row[0]

    def _lateness(self, conn: psycopg.Connection[Any], committed: Any) -> Lateness:
        rows = conn.execute(
            "SELECT extract(epoch FROM t.started_at - e.wake_at)::float8, t.status::text"
            " FROM tasks AS t JOIN task_events AS e ON e.task_id = t.id AND e.event_number = 1"
            " WHERE t.task_name = 'sleep_once' AND e.wake_at < now() + interval '1 hour'"
        ).fetchall()
        not_completed = [status for _, status in rows if status != "completed"]
        if len(rows) != self.due or not_completed:
            raise AssertionError(
                f"{len(rows)} sleepers due of {self.due}, {len(not_completed)} not completed"
            )
        span = conn.execute(
            "SELECT extract(epoch FROM max(e.wake_at) - min(e.wake_at))::float8,"
            " extract(epoch FROM max(t.started_at) - min(e.wake_at))::float8,"
            " extract(epoch FROM min(e.wake_at) - %s)::float8"
            " FROM tasks AS t JOIN task_events AS e ON e.task_id = t.id AND e.event_number = 1"
            " WHERE t.status = 'completed'",
            (committed,),
        ).fetchone()
        assert span is not None
        window, drained_in, lead = span
        if lead <= 0:
            raise AssertionError(
                f"the sleepers were written {-lead:.1f} s after the first was due: "
                "their lateness would count the fill's own time"
            )
        return Lateness([row[0] for row in rows], window, drained_in, lead)

    @contextmanager
    def _workers(self) -> Iterator[list[int]]:
        workers = [
            self.engine.worker_process(
                schema=WAKE_SCHEMA,
                queues=[QUEUE],
                functions=SCALE_FUNCTIONS,
                slots=self.slots,
                poll_interval=POLL_INTERVAL,
                heartbeat_interval=1.0,
                inactivity_threshold=10.0,
                listen=True,
                environment={LESSON_VARIABLE: self.engine.package},
            )
            for _ in range(self.processes)
        ]
        with started_together(workers):
            yield [worker.pid for worker in workers]
