"""Partitions: ranges of task ids, added ahead of the tasks and dropped whole once they may go.

The tasks, their histories and their waits are partitioned by ranges of task
ids (schema.sql, `task_partitions`): each range has a partition of `tasks`,
one of `task_events` and one of `event_waits`. Row-by-row retention
(retention.py) deletes each row, and each deleted row is a dead tuple that
vacuum must find, an entry to clean in every index, and WAL; dropping a
partition is one catalog change, however many rows it holds. So retention
works range by range here, and removes ranges on one worker at a time (an
advisory lock):

1. It adds ranges ahead of the tasks (`add_task_partitions`, on any worker,
   one at a time: the others leave it to the one adding), so that the next
   `partitions_ahead` ranges' worth of tasks always has somewhere to go.
2. It looks at each full range whose newest task was inserted longer ago
   than the retention period, oldest first, and chooses it for removal if
   all it holds may go, the way a tree may go (MarkPartitionForRemoval).
   A chosen range is final: its keys are gone, its tasks cannot be replayed
   or forked, and nothing else writes to finished tasks.
3. A chosen range's tasks are archived first, if the policy archives; its
   ticks go; then each of its partitions is detached, CONCURRENTLY, and
   dropped. DETACH PARTITION ... CONCURRENTLY waits for the transactions
   using the table to end, without making the ones that come after it wait:
   claims and results go on throughout. It cannot run in a transaction,
   so each step is a transaction of its own, and a pass that stops halfway
   (a crash, a lock it waited for too long) leaves the range chosen: the next
   pass finds it and goes on from where it is (a detach left pending is
   finished with FINALIZE).

A range pinned by an unfinished task, its own or a younger one that needs
one of its tasks (a subscription that runs for months), stays, and
row-by-row retention removes its finished trees meanwhile, so that the one
task that pins it does not keep the rest (PartitionIsPinned). A range kept
only by finished tasks waits: it goes whole at a later pass, or later in the
same one (a pass looks at the ranges again after a round that removed one).

The DDL here is built with psycopg.sql from the catalog's names, never from
input; sqlc generates queries, not ALTER TABLE for a name known at run time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from ..db.models import TaskPartition
from ..db.queries import Querier
from .crash_points import crash_point
from .shared import connect_like, first_line, is_transient
from .transactions import TransactionLimits, bounded_transaction

log = logging.getLogger(__name__)

# The least a detach waits for a table's other users (see maintain_partitions).
DETACH_WAIT_SECONDS = 5.0


class RangeKept(Exception):
    """Raised inside a choice's transaction to roll it back: the range may not go yet."""


@dataclass
class PartitionsPass:
    """What one pass did to the ranges."""

    added: int = 0
    # The first ids of the ranges whose partitions were dropped.
    removed: list[int] = field(default_factory=list)
    kept: int = 0
    archived: int = 0
    # The ranges an unfinished task pins (PartitionIsPinned): retention deletes
    # their finished trees row by row. Only the worker that holds the
    # partitions' lock knows them; the others leave those ranges to it.
    pinned: list[TaskPartition] = field(default_factory=list)


def maintain_partitions(
    pool: ConnectionPool,
    limits: TransactionLimits,
    *,
    max_rows: int,
    stopping: Callable[[], bool],
) -> PartitionsPass:
    """Add the ranges needed ahead, remove those that may go, and say which are pinned.

    The removals are skipped when another worker holds the partitions' lock:
    it is removing ranges already.
    """
    done = PartitionsPass(added=add_partitions(pool, limits))
    with pool.connection() as conn:
        if not Querier(conn).list_partitions_to_look_at():
            return done
    # DETACH ... CONCURRENTLY runs outside any transaction: on a connection of
    # its own, which holds the partitions' lock (a session's) for the pass.
    with closing(connect_like(pool, application_name="retention-partitions")) as ddl:
        queries = Querier(ddl)
        if not queries.try_lock_partition_maintenance():
            return done
        # A detach waits for the transactions that use the table: at most this
        # long, then it stops, to go on at the next pass. Longer than the
        # server's deadlock_timeout (1 s by default), after which an autovacuum
        # of the partition that the detach waits for gives way to it.
        ddl.execute(
            sql.SQL("SET lock_timeout = {}").format(
                sql.Literal(f"{round(max(limits.idle_seconds, DETACH_WAIT_SECONDS) * 1000)}ms")
            )
        )
        # Listed again under the lock: another worker may have removed some.
        # And again after a round that removed a range: a range is needed
        # from outside by its neighbours, younger (a fork, a shared child) or
        # older (a parent's history naming its child), and one kept for a
        # range removed since may go now.
        while not stopping() and remove_a_round(ddl, pool, limits, done, max_rows=max_rows):
            pass
    return done


def remove_a_round(
    ddl: psycopg.Connection[Any],
    pool: ConnectionPool,
    limits: TransactionLimits,
    done: PartitionsPass,
    *,
    max_rows: int,
) -> bool:
    """Look at each range that may be removed once, oldest first, and remove those
    that may go; whether one was removed. The kept and pinned ranges are this
    round's (the last round's, once no round removes one)."""
    queries = Querier(ddl)
    done.kept, done.pinned = 0, []
    removed_one = False
    for task_range in queries.list_partitions_to_look_at():
        if task_range.removing_since is None and not choose_for_removal(pool, limits, task_range):
            done.kept += 1
            if queries.partition_is_pinned(first_id=task_range.first_id, end_id=task_range.end_id):
                done.pinned.append(task_range)
            continue
        done.archived += archive_range(pool, limits, task_range, max_rows=max_rows)
        try:
            remove_range(ddl, pool, limits, task_range)
        except psycopg.Error as error:
            if not is_transient(error):
                raise
            # Chosen it stays: the next pass goes on from where this one stopped.
            log.warning(
                "retention: tasks %d to %d not removed yet: %s",
                task_range.first_id,
                task_range.end_id - 1,
                first_line(error),
            )
            return False
        done.removed.append(task_range.first_id)
        removed_one = True
        # A long pass must not let the ids run past the ranges ready.
        done.added += add_partitions(pool, limits)
    return removed_one


def add_partitions(pool: ConnectionPool, limits: TransactionLimits) -> int:
    """AddTaskPartitions, in a transaction of its own: how many ranges it added.

    Its attaches wait for the locks they need (a detach's first step, an
    operator's set_partitioning), each held for a moment, rather than give
    up and leave the ranges ahead short: no claim or result waits for them.
    """
    with pool.connection() as conn, bounded_transaction(conn, limits, wait_for_locks=True):
        return Querier(conn).add_task_partitions() or 0


def choose_for_removal(
    pool: ConnectionPool, limits: TransactionLimits, task_range: TaskPartition
) -> bool:
    """Mark the range for removal if all it holds may go; whether it was marked.

    Three statements, in this order, in one transaction: lock the range's row
    (replays and forks of its tasks hold it FOR SHARE), remove the keys that
    name its tasks (an enqueue that found one holds its key's row), then look
    at the range with a snapshot that sees what those two waited for.
    """
    try:
        with pool.connection() as conn, bounded_transaction(conn, limits):
            queries = Querier(conn)
            queries.lock_partition(first_id=task_range.first_id)
            queries.remove_partition_keys(first_id=task_range.first_id, end_id=task_range.end_id)
            if not queries.mark_partition_for_removal(first_id=task_range.first_id):
                raise RangeKept
    except RangeKept:
        return False
    log.info(
        "retention: tasks %d to %d chosen for removal", task_range.first_id, task_range.end_id - 1
    )
    crash_point("partitions:chosen")
    return True


def archive_range(
    pool: ConnectionPool, limits: TransactionLimits, task_range: TaskPartition, *, max_rows: int
) -> int:
    """With an archiving policy, copy the range's tasks into archived_tasks, in batches."""
    archived = 0
    after_id = 0
    while True:
        with pool.connection() as conn, bounded_transaction(conn, limits):
            queries = Querier(conn)
            policy = queries.get_retention_policy()
            if policy is None or not policy.archive:
                return archived
            batch = queries.archive_partition_tasks(
                first_id=task_range.first_id,
                end_id=task_range.end_id,
                after_id=after_id,
                max_rows=max_rows,
            )
        if batch is None or batch.last_id is None:
            return archived
        archived += batch.archived
        after_id = batch.last_id


def remove_range(
    ddl: psycopg.Connection[Any],
    pool: ConnectionPool,
    limits: TransactionLimits,
    task_range: TaskPartition,
) -> None:
    """Detach and drop a chosen range's partitions, then forget the range."""
    with pool.connection() as conn, bounded_transaction(conn, limits):
        Querier(conn).remove_partition_ticks(first_id=task_range.first_id, end_id=task_range.end_id)
    for table in Querier(ddl).list_partition_tables(first_id=task_range.first_id):
        parent, partition = sql.Identifier(table.parent_name), sql.Identifier(table.partition_name)
        if table.attached:
            how = sql.SQL("FINALIZE" if table.detach_pending else "CONCURRENTLY")
            ddl.execute(
                sql.SQL("ALTER TABLE {} DETACH PARTITION {} {}").format(parent, partition, how)
            )
            crash_point("partitions:detached")
        ddl.execute(sql.SQL("DROP TABLE {}").format(partition))
    Querier(ddl).forget_partition(first_id=task_range.first_id)
    log.info(
        "retention: tasks %d to %d removed with their partitions",
        task_range.first_id,
        task_range.end_id - 1,
    )
