"""Running the lesson's agent in these tests: one conversation, its workers, what the
world saw.

`run_conversation` starts a conversation, runs it on a worker process (which
may be set to SIGKILL itself at a crash point, then replaced by a second
one), approves its emails as a person would, and returns what the tests
compare: the result, the model provider's bill, the mail service's records,
and the tasks of the conversation's tree.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg_pool import ConnectionPool

from lessons.lesson16_durable_ai_agent.db.models import Task, TaskStatus
from lessons.lesson16_durable_ai_agent.db.queries import Querier
from lessons.lesson16_durable_ai_agent.demo.agent import (
    conversation_tasks,
    model_events,
    new_conversation,
    start_agent,
)
from lessons.lesson16_durable_ai_agent.demo.approver import Approver
from lessons.lesson16_durable_ai_agent.demo.world import WORLD_VARIABLE, World
from lessons.lesson16_durable_ai_agent.engine.crash_points import CRASH_AT
from lessons.lesson16_durable_ai_agent.tools.worker_process import WorkerProcess
from tests.database_proxy import DatabaseProxy
from tests.waiting import wait_until

QUESTION = "How many orders a month can one worker take? Email the answer to Ana."
CONVERSATION = "orders"
FINISHED = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


def worker_process(
    schema: str, world: World, crash_at: str | None = None, database_url: str | None = None
) -> WorkerProcess:
    """A worker of the lesson's agent, with a 1 s lease, acting on `world` (through the
    database at `database_url`, when given: a proxy)."""
    environment = {WORLD_VARIABLE: str(world.directory)}
    if crash_at is not None:
        environment[CRASH_AT] = crash_at
    if database_url is not None:
        environment["DATABASE_URL"] = database_url
    return WorkerProcess(
        schema=schema,
        slots=4,
        poll_interval=0.05,
        heartbeat_interval=0.1,
        inactivity_threshold=1.0,
        # Its claims and suspensions logged: what a failed wait shows (describe_run).
        verbose=True,
        environment=environment,
    )


def finished_tasks(pool: ConnectionPool, first_task_id: int) -> list[Task] | None:
    with pool.connection() as conn:
        tasks = conversation_tasks(conn, first_task_id)
    last = tasks[-1]
    return tasks if last.status in FINISHED and last.continued_as_task_id is None else None


def wait_for_conversation(
    pool: ConnectionPool,
    first_task_id: int,
    *,
    approver: Approver | None = None,
    workers: Sequence[WorkerProcess] = (),
) -> list[Task]:
    """The conversation's tasks once it has finished. If it does not, the error says
    where it stands: every task, the waits, the approvals, the workers' logs."""
    return wait_until(
        lambda: finished_tasks(pool, first_task_id),
        timeout=60,
        message=lambda: (
            f"the conversation of task {first_task_id} did not finish\n"
            + describe_run(pool, approver, workers)
        ),
    )


def describe_run(
    pool: ConnectionPool, approver: Approver | None, workers: Sequence[WorkerProcess]
) -> str:
    """Where a run stands, for a reader of a failed test: each task of the schema with
    what it waits for (its last event), the event waits and pushed events, the rate
    limits' windows, the workers' rows, the approver's actions and the workers' logs."""
    lines: list[str] = []
    with pool.connection() as conn:
        queries = Querier(conn)
        lines.append(f"database now: {queries.database_now()}")
        lines.append("tasks:")
        for task in queries.list_tasks():
            events = queries.list_task_events(task_id=task.id)
            last = events[-1] if events else None
            waits_for = (
                "-"
                if last is None
                else f"event {last.event_number} {last.kind} {last.name!r} key={last.key!r} "
                f"child={last.child_task_id} wake_at={last.wake_at} "
                f"output={'set' if last.output is not None else None}"
            )
            lines.append(
                f"  {task.id} {task.task_name} parent={task.parent_id} {task.status} "
                f"attempt={task.attempt} worker={task.worker_id} wake_at={task.wake_at} "
                f"rate_limit={task.rate_limit} started_at={task.started_at} "
                f"continued_as={task.continued_as_task_id} last: {waits_for}"
            )
        lines.append("event waits:")
        lines.extend(f"  {wait}" for wait in queries.list_event_waits())
        lines.append("external events:")
        lines.extend(f"  {event}" for event in queries.list_external_events())
        lines.append("rate limits:")
        lines.extend(f"  {window}" for window in queries.list_rate_limit_windows())
        lines.append("workers:")
        rows = conn.execute(
            "SELECT id, last_heartbeat_at, lease_expires_at, stopped_at FROM workers ORDER BY id"
        ).fetchall()
        lines.extend(f"  {row}" for row in rows)
    if approver is not None:
        # A thread that died (an exception) approves nothing more: say so.
        alive = approver._thread.is_alive()
        lines.append(
            f"approver {approver.name} (thread alive: {alive}) approved: {approver.approved}"
        )
    for number, worker in enumerate(workers, start=1):
        lines.append(f"worker process {number} log:\n{worker.log()}")
    return "\n".join(lines)


@dataclass
class Outage:
    """The database out of the workers' reach for `seconds`, once the provider has
    billed `after_model_requests` requests: the workers go through `proxy`."""

    proxy: DatabaseProxy
    after_model_requests: int
    seconds: float

    def happen(self, world: World) -> None:
        wait_until(
            lambda: len(world.model_requests.records()) >= self.after_model_requests,
            timeout=30,
            message=f"the provider never billed {self.after_model_requests} requests",
        )
        self.proxy.cut()
        time.sleep(self.seconds)  # the outage itself
        self.proxy.restore()


@dataclass
class Conversation:
    """What one run of the agent gave, and what the world saw of it."""

    tasks: list[Task]
    bill: list[dict[str, Any]]
    mail: list[dict[str, Any]]
    # The tool calls run, by tool: child tasks of the conversation's tasks.
    children: Counter[str]
    # The model calls its histories record.
    recorded_model_calls: int

    @property
    def output(self) -> dict[str, Any]:
        output = self.tasks[-1].output
        assert isinstance(output, dict), self.tasks[-1]
        return output

    def mail_of(self, kind: str) -> list[dict[str, Any]]:
        return [record for record in self.mail if record["kind"] == kind]


def child_names(pool: ConnectionPool, tasks: list[Task]) -> Counter[str]:
    parents = {task.id for task in tasks}
    with pool.connection() as conn:
        return Counter(
            task.task_name for task in Querier(conn).list_tasks() if task.parent_id in parents
        )


def observe(pool: ConnectionPool, world: World, tasks: list[Task]) -> Conversation:
    with pool.connection() as conn:
        recorded = len(model_events(conn, [task.id for task in tasks]))
    return Conversation(
        tasks=tasks,
        bill=world.model_requests.records(),
        mail=world.mail.records(),
        children=child_names(pool, tasks),
        recorded_model_calls=recorded,
    )


def run_conversation(
    pool: ConnectionPool,
    schema: str,
    directory: Path,
    *,
    crash_at: str | None = None,
    budget: dict[str, int] | None = None,
    outage: Outage | None = None,
) -> Conversation:
    """Run one conversation to its end, its emails approved; with `crash_at`, the first
    worker SIGKILLs itself there, and a second one finishes the run; with `outage`, two
    workers run it through the outage's proxy, which cuts them off for a while."""
    world = World(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with pool.connection() as conn:
        first = start_agent(conn, new_conversation(CONVERSATION, QUESTION, budget=budget))
    url = None if outage is None else outage.proxy.url
    with (
        Approver(pool, world, "Ben") as approver,
        worker_process(schema, world, crash_at, url) as first_worker,
        worker_process(schema, world, database_url=url) as second_worker,
    ):
        first_worker.start()
        if crash_at is not None:
            exit_code = first_worker.wait(timeout=60)
            assert exit_code == -9, f"no crash at {crash_at}: {first_worker.log()}"
            second_worker.start()
        if outage is not None:
            second_worker.start()
            outage.happen(world)
        tasks = wait_for_conversation(
            pool, first, approver=approver, workers=[first_worker, second_worker]
        )
    return observe(pool, world, tasks)
