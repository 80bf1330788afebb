"""Putting tasks on the queue (now, later, once per idempotency key), cancelling them,
waiting for their results, and pushing external events; the flow-control settings (a
queue's concurrency limit, rate limits); and schedules."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from ..db.models import AtLimit, CatchUp, ConcurrencyLimit, RateLimit, Schedule, Task, TaskStatus
from ..db.queries import Querier
from .schedules import ScheduleRule
from .shared import DEFAULT_MAX_RETRIES, DEFAULT_QUEUE, FINISHED_STATUSES, first_line, to_json

# How long an idempotency key names its task: a repeat within a day finds the
# first task; one after that makes a new task.
DEFAULT_IDEMPOTENCY_RETENTION = 24 * 3600.0


def enqueue(
    conn: psycopg.Connection[Any],
    task_name: str,
    input: Any,
    *,
    queue: str = DEFAULT_QUEUE,
    display_name: str | None = None,
    priority: int = 0,
    max_retries: int = DEFAULT_MAX_RETRIES,
    execution_timeout: float | None = None,
    schedule_timeout: float | None = None,
    durable: bool = False,
    concurrency_key: str | None = None,
    rate_limit: str | None = None,
    rate_units: int = 1,
    idempotency_key: str | None = None,
    idempotency_retention: float = DEFAULT_IDEMPOTENCY_RETENTION,
    run_at: datetime | None = None,
    delay: float | None = None,
) -> int:
    """Add a task to `queue` and return its id.

    It takes a connection, not a pool, so that a caller can enqueue inside its
    own transaction: the task then exists if and only if that transaction commits.
    An input that is not JSON is refused here, before anything is written.

    - `priority`: higher runs first; equal priorities run in enqueueing order.
    - `max_retries`: how many times a failed attempt is tried again.
    - `execution_timeout`: seconds an attempt may run before it is failed.
    - `schedule_timeout`: seconds the task may wait for its first start before
      it is failed without running.
    - `durable`: run it with a durable function, which keeps a history.
    - `concurrency_key`: the tenant, user or account the task belongs to; the
      queue's concurrency limit (`set_concurrency_limit`) applies per key. With
      `cancel_newest` or `cancel_in_progress`, the key's row stays locked until
      the caller's transaction ends: keep that transaction short.
    - `rate_limit`, `rate_units`: the task starts only when the rate limit
      (`set_rate_limit`) has `rate_units` units left in its window.
    - `idempotency_key`: the caller's name for this task ("buy:cart-7"). While
      a task with that key exists, for `idempotency_retention` seconds after it
      was enqueued (a day by default), an enqueue with the key makes no task
      and returns that one's id: a double click, or a retry after a lost
      reply, enqueues once. The first enqueue's arguments win; a repeat's are
      not compared.
    - `run_at` (a time) or `delay` (seconds from now, on the database's
      clock): the task starts then, not before. It waits suspended, like a
      sleeping durable task, and its schedule timeout counts from then.

    A task the queue's limit rejects at once (`cancel_newest`, its key full) is
    still created, cancelled by the concurrency limit, so that its id says
    what happened to it.
    """
    if max_retries < 0:
        raise ValueError(f"max_retries cannot be negative, not {max_retries}")
    for name, seconds in (("execution", execution_timeout), ("schedule", schedule_timeout)):
        if seconds is not None and seconds <= 0:
            raise ValueError(f"the {name} timeout must be positive, not {seconds}")
    if run_at is not None and delay is not None:
        raise ValueError("give run_at or delay, not both")
    if delay is not None and delay < 0:
        raise ValueError(f"a delay cannot be negative, not {delay} s")
    if run_at is not None and run_at.tzinfo is None:
        raise ValueError("run_at must say its time zone (a naive datetime is ambiguous)")
    if idempotency_retention <= 0:
        raise ValueError(f"idempotency_retention must be positive, not {idempotency_retention}")
    to_json(input, f"the input of {task_name}")
    queries = Querier(conn)
    if rate_limit is not None:
        check_rate_units(queries, rate_limit, rate_units)

    def create() -> Task | None:
        return queries.create_task(
            queue=queue,
            task_name=task_name,
            display_name=display_name or task_name,
            input_=input,
            priority=priority,
            max_retries=max_retries,
            execution_timeout_seconds=execution_timeout,
            schedule_timeout_seconds=schedule_timeout,
            durable=durable,
            parent_id=None,  # only a durable task's context spawns children
            concurrency_key=concurrency_key,
            rate_limit=rate_limit,
            rate_units=rate_units if rate_limit is not None else None,
            idempotency_key=idempotency_key,
            idempotency_retention_seconds=(
                idempotency_retention if idempotency_key is not None else None
            ),
            start_at=run_at,
            start_after_seconds=delay,
        )

    # A keyed task's strategy and its insert are one transaction (a savepoint, if
    # `conn` is in one of its own), so the key's lock, when the strategy takes it,
    # lasts until the task is there. A keyless task needs none: one statement.
    try:
        with conn.transaction() if concurrency_key is not None else nullcontext():
            if concurrency_key is not None:
                apply_limit_strategy(queries, queue, concurrency_key, idempotency_key)
            task = create_once(queries, create, idempotency_key, what=f"the input of {task_name}")
    except psycopg.errors.CheckViolation as error:
        if not str(error).startswith("no partition of relation"):
            raise
        raise NoRangeForTask(
            f"the task got an id that no range of task ids holds ({first_line(error)}): "
            "retention adds the ranges ahead of the ids, every retention_interval, "
            "partitions_ahead ranges' worth (see set_partitioning); is a worker with "
            "retention running?"
        ) from error
    if task is None:  # the queue's limit was removed since apply_limit_strategy looked
        raise ValueError(f"queue {queue!r} has no concurrency limit any more")
    return task.id


class NoRangeForTask(Exception):
    """An enqueue whose task's id falls past the ranges of task ids there are:
    nothing was written (lesson 15: the tasks table is partitioned by id ranges,
    which retention adds ahead)."""


def create_once(
    queries: Querier,
    create: Callable[[], Task | None],
    idempotency_key: str | None,
    *,
    what: str,
) -> Task | None:
    """`create()` (a CreateTask): the new task, or the one that had its idempotency key.

    A key taken already: CreateTask returns no row, and RepeatEnqueue, a
    statement of its own that sees the task the key's first enqueue made,
    returns that task. A key past its retention still names its old task
    until it is released: RepeatEnqueue then returns no row either, and the
    key is released and the task created, once more (another enqueue may have
    taken the key in between, and then it is that one's task which comes
    back). None: a keyed task on a queue with no concurrency limit. `what`
    names the input in a refusal.
    """
    for _ in range(2):
        try:
            created = create()
        except psycopg.DataError as error:
            # JSON that jsonb still refuses: a string holding U+0000.
            raise ValueError(f"{what} cannot be stored: {first_line(error)}") from error
        if created is not None or idempotency_key is None:
            return created
        repeated = queries.repeat_enqueue(idempotency_key=idempotency_key)
        if repeated is not None:
            return repeated
        if not queries.release_expired_idempotency_key(idempotency_key=idempotency_key):
            # No row came back for a reason other than an expired key: a keyed
            # task whose queue has no limit.
            return None
    raise RuntimeError(f"idempotency key {idempotency_key} could not be released")


def check_rate_units(queries: Querier, rate_limit: str, rate_units: int) -> None:
    """Refuse a task that names no rate limit there is, or that could never start."""
    limit = queries.get_rate_limit(name=rate_limit)
    if limit is None:
        raise ValueError(f"there is no rate limit {rate_limit!r}: set it with set_rate_limit")
    if not 0 < rate_units <= limit.units:
        raise ValueError(
            f"a task takes 1 to {limit.units} units of rate limit {rate_limit!r}, not {rate_units}"
        )


def apply_limit_strategy(
    queries: Querier, queue: str, concurrency_key: str, idempotency_key: str | None
) -> None:
    """Before a keyed task is created: refuse a queue with no limit, and for the
    cancelling strategies lock the key and cancel what must be cancelled, unless
    the enqueue repeats one (its idempotency key names a task): cancel_in_progress
    would cancel the very task it repeats. (CreateTask then returns that task.)"""
    limit = queries.get_concurrency_limit(queue=queue)
    if limit is None:
        raise ValueError(
            f"queue {queue!r} has no concurrency limit: set one with set_concurrency_limit "
            "before enqueueing tasks with a concurrency key"
        )
    if limit.at_limit == AtLimit.WAIT:
        return
    # The key's tasks are counted (cancel_newest) or cancelled
    # (cancel_in_progress, see cancel_task) under its lock, so two enqueues of
    # the key at once take their turns and the second sees the first's task.
    queries.lock_concurrency_key(queue=queue, key=concurrency_key)
    # Under the key's lock: an enqueue of the key committing now has committed,
    # and its task is seen.
    repeat = idempotency_key is not None and (
        queries.get_task_by_idempotency_key(idempotency_key=idempotency_key) is not None
    )
    if limit.at_limit == AtLimit.CANCEL_IN_PROGRESS and not repeat:
        queries.cancel_superseded_tasks(
            queue=queue, key=concurrency_key, keep=limit.max_per_key - 1
        )


def set_concurrency_limit(
    conn: psycopg.Connection[Any],
    queue: str,
    max_per_key: int,
    *,
    at_limit: AtLimit = AtLimit.WAIT,
    hold_while_suspended: bool = False,
) -> ConcurrencyLimit:
    """At most `max_per_key` tasks of `queue` with the same concurrency key run at once.

    `at_limit` says what happens to a task enqueued while its key is full (wait,
    cancel_newest, cancel_in_progress), and `hold_while_suspended` whether a
    suspended durable task keeps its slot (see schema.sql). A change applies to
    the tasks enqueued after it; a lower limit stops no running task.
    """
    if max_per_key <= 0:
        raise ValueError(f"max_per_key must be positive, not {max_per_key}")
    limit = Querier(conn).set_concurrency_limit(
        queue=queue,
        max_per_key=max_per_key,
        at_limit=at_limit,
        hold_while_suspended=hold_while_suspended,
    )
    if limit is None:  # INSERT ... RETURNING always returns the row
        raise RuntimeError(f"setting the concurrency limit of {queue} returned no row")
    return limit


def set_rate_limit(
    conn: psycopg.Connection[Any], name: str, units: int, per_seconds: float
) -> RateLimit:
    """A rate limit: at most `units` units granted in any window of `per_seconds`."""
    if units <= 0 or per_seconds <= 0:
        raise ValueError(
            f"a rate limit needs positive units and duration, not {units} per {per_seconds} s"
        )
    limit = Querier(conn).set_rate_limit(name=name, units=units, per_seconds=per_seconds)
    if limit is None:  # INSERT ... RETURNING always returns the row
        raise RuntimeError(f"setting rate limit {name} returned no row")
    return limit


# How often a cancellation that deadlocked with a result writer is tried again
# (see cancel_task in schema.sql): the server ends one of the two, and either
# side trying again succeeds.
CANCEL_TRIES = 5


def cancel(
    conn: psycopg.Connection[Any], task_id: int, *, cancelled_by: str, reason: str
) -> TaskStatus:
    """Cancel a task, and every unfinished task below it; return its status after that.

    A task that has not started, or a plain task, is cancelled at once
    (`cancelled`): a running attempt of it is fenced out, and its worker told
    to stop. A durable task that has run goes on (its status stays as it was,
    its cancellation requested): its durable function meets `Cancelled` at
    its next operation, runs its compensation, and the task ends `cancelled`.
    A finished task stays as it was: its status comes back. `cancelled_by` and
    `reason` are kept with the task, for people reading it.

    One transaction (a savepoint, if `conn` is in one of its own), which locks
    the task's row and its children's: behind a frozen worker holding one, it
    waits until the server ends that worker's transaction.
    """
    if not cancelled_by or not reason:
        raise ValueError("a cancellation says who asked for it and why")
    for tries in range(1, CANCEL_TRIES + 1):
        try:
            with conn.transaction():
                status = Querier(conn).cancel_task(
                    id=task_id, cancelled_by=cancelled_by, reason=reason
                )
            break
        except psycopg.errors.DeadlockDetected:
            if tries == CANCEL_TRIES:
                raise
    if status is None:
        raise LookupError(f"there is no task {task_id}")
    return TaskStatus(status)


def set_schedule(
    conn: psycopg.Connection[Any],
    name: str,
    task_name: str,
    input: Any,
    *,
    cron: str | None = None,
    every: float | None = None,
    time_zone: str = "UTC",
    queue: str = DEFAULT_QUEUE,
    durable: bool = False,
    catch_up: CatchUp = CatchUp.LATEST,
    grace: float = 60.0,
) -> Schedule:
    """Enqueue `task_name` at every tick of a cron expression, or `every` seconds.

    `cron` has five fields (minute hour day month weekday), or six with the
    seconds first, read in `time_zone`; `every` counts from now. Each tick's
    task gets `{"schedule": name, "tick_at": the tick (ISO 8601), "input": input}`.
    `catch_up` says what becomes of the ticks missed while no worker ran
    (fired more than `grace` seconds late): all fired, the latest only, or none
    (see schema.sql). Setting a schedule that exists changes it, and starts it
    afresh from now.
    """
    rule = ScheduleRule.parse(cron=cron, every=every, time_zone=time_zone)
    if grace <= 0:
        raise ValueError(f"grace must be positive, not {grace} s")
    to_json(input, f"the input of schedule {name}")
    queries = Querier(conn)
    now = queries.database_now()
    if now is None:  # a SELECT without FROM always returns its row
        raise RuntimeError("the database did not say what time it is")
    schedule = queries.set_schedule(
        name=name,
        cron=cron,
        every_seconds=every,
        time_zone=time_zone,
        queue=queue,
        task_name=task_name,
        input_=input,
        durable=durable,
        catch_up=catch_up,
        grace_seconds=grace,
        next_tick_at=rule.next_tick_after(now),
    )
    if schedule is None:  # INSERT ... RETURNING always returns the row
        raise RuntimeError(f"setting schedule {name} returned no row")
    return schedule


def delete_schedule(conn: psycopg.Connection[Any], name: str) -> bool:
    """Stop a schedule for good; False if there was none by that name."""
    return Querier(conn).delete_schedule(name=name) > 0


def wait_for_task(
    pool: ConnectionPool, task_id: int, *, timeout: float = 10.0, poll_interval: float = 0.05
) -> Task:
    """Poll until the task is completed, failed or cancelled, and return it."""
    deadline = time.monotonic() + timeout
    while True:
        with pool.connection() as conn:
            task = Querier(conn).get_task(id=task_id)
        if task is None:
            raise LookupError(f"there is no task {task_id}")
        if task.status in FINISHED_STATUSES:
            return task
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task_id} is still {task.status} after {timeout} s")
        time.sleep(poll_interval)


@dataclass(frozen=True)
class PushedEvent:
    """An external event, once pushed: its id, and the tasks whose waits it ended.

    `repeated`: an earlier push with the same idempotency key made this event,
    and this push changed nothing (it woke nobody).
    """

    id: int
    woke_task_ids: list[int]
    repeated: bool


def push_event(
    conn: psycopg.Connection[Any], key: str, payload: Any, *, idempotency_key: str | None = None
) -> PushedEvent:
    """Push an external event: it ends the waits for `key` that are open now.

    A wait is open from the moment its task recorded it (`ctx.wait_for_event`)
    until an event ends it or its deadline passes. So an event ends the waits
    for its key recorded before it was pushed, and only those; a wait that
    begins later does not see it. A wait already ended by another event keeps
    that one: the first event wins. The event is kept either way, in
    `external_events`.

    A client that may push the same event twice (it retries when it gets no
    reply, as webhooks do) names each push with an `idempotency_key` of its
    own: a push that repeats an earlier one's key is that event again. It
    returns the same event, `repeated`, and ends no wait, not even one opened
    since. A repeat must carry the same key and payload, or it is refused
    (`ValueError`). A key is taken only once the push that gave it commits: a
    second push with it waits until then.

    The event, the ends of the waits and the wake-ups of their tasks are one
    transaction (a savepoint, if `conn` is in one of its own).

    Unlike the engine's, this transaction has no limits (see
    `transactions.py`): it is the caller's, on the caller's connection. Behind
    a worker frozen with a wait's row locked, it waits until the server ends
    that worker's transaction, within half the worker's inactivity threshold.
    """
    to_json(payload, f"the payload of event {key}")
    with conn.transaction():
        queries = Querier(conn)
        try:
            event = queries.push_event(key=key, payload=payload, idempotency_key=idempotency_key)
        except psycopg.DataError as error:
            # JSON that jsonb still refuses: a string holding the character U+0000.
            raise ValueError(
                f"the payload of event {key} cannot be stored: {first_line(error)}"
            ) from error
        if event is None:  # only a repeat of another event returns no row
            raise ValueError(
                f"idempotency key {idempotency_key} was pushed before with another key "
                "or payload: a retry must push the same event"
            )
        if event.pushes > 1:  # an earlier push made it, and delivered it
            return PushedEvent(id=event.id, woke_task_ids=[], repeated=True)
        waiting = sorted(set(queries.deliver_event(external_event_id=event.id, key=key)))
        if waiting:
            queries.wake_tasks(ids=waiting)
    return PushedEvent(id=event.id, woke_task_ids=waiting, repeated=False)


def move_to_version(
    conn: psycopg.Connection[Any], *, from_version: str, to_version: str
) -> list[int]:
    """Move the unfinished durable tasks of code version `from_version` to `to_version`.

    Your statement that the new code replays their histories: run
    `history_tool check --functions NEW_MODULE --version FROM` first, which
    replays each of them against the new code and says which would break. A
    running attempt goes on where it runs; each task's next claim (after a
    suspension, a retry, a lost worker) is on a worker of `to_version`.
    Returns the ids of the tasks moved.
    """
    if from_version == to_version:
        raise ValueError(f"the tasks of version {from_version} are there already")
    moved = Querier(conn).move_tasks_to_version(from_version=from_version, to_version=to_version)
    return sorted(task.id for task in moved)


def drain_version(conn: psycopg.Connection[Any], code_version: str) -> None:
    """Retire `code_version` from new work: its workers finish the durable tasks
    pinned to it, and start no new ones, which go to the other versions' workers."""
    Querier(conn).drain_version(code_version=code_version)


def undrain_version(conn: psycopg.Connection[Any], code_version: str) -> bool:
    """Let a draining version start new durable tasks again (a rollback). False if
    it was not draining."""
    return Querier(conn).undrain_version(code_version=code_version) > 0


def set_retention(
    conn: psycopg.Connection[Any], *, keep_finished_for: float, archive: bool = False
) -> None:
    """How long what has finished is kept (seconds), for every worker's retention.

    Past it, a finished task that is no one's child goes with its whole tree,
    histories included, once no unfinished task needs any of it (see
    retention.py); so do external events no wait holds, and dead workers' rows.
    `archive`: copy each task and its history into `archived_tasks` first.
    """
    if keep_finished_for <= 0:
        raise ValueError(f"keep_finished_for must be positive, not {keep_finished_for}")
    Querier(conn).set_retention_policy(keep_finished_for_seconds=keep_finished_for, archive=archive)


def set_partitioning(
    conn: psycopg.Connection[Any], *, partition_size: int, partitions_ahead: int = 2
) -> int:
    """Cut task ids into ranges of `partition_size` from the next id on, and keep
    `partitions_ahead` ranges' worth ready (retention adds them as ids are used).

    Each range of ids has its partitions of tasks, task_events and event_waits,
    dropped whole by retention once all they hold may go (schema.sql). Ranges
    no task has an id from yet are made again at the new size; a range in use
    keeps its own. Enqueues wait for it, a moment: it locks the three tables.
    Returns how many ranges were made.
    """
    if partition_size <= 0 or partitions_ahead <= 0:
        raise ValueError(
            "partition_size and partitions_ahead must be positive, "
            f"not {partition_size} and {partitions_ahead}"
        )
    with conn.transaction():
        made = Querier(conn).set_partitioning(
            partition_size=partition_size, partitions_ahead=partitions_ahead
        )
    return made or 0
