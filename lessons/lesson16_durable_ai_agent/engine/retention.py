"""Retention: a thread that removes what has been finished for long enough, in small batches.

Lessons 02-14 keep every row for ever: finished tasks and their histories,
external events that matched nothing, one worker row per worker start. The
tables only grow, and so do their indexes, the work of autovacuum and of
every query that is not served by a partial index. Retention removes, once
the policy's period has passed (`retention_policy`, see client.set_retention):

- whole ranges of tasks, each range's partitions of tasks, task_events and
  event_waits detached and dropped (partitions.py), first: most tasks go
  that way, without a row deleted;
- in the ranges an unfinished task pins (a subscription that runs for
  months), and in a range that takes longer than the period to fill (a
  quiet engine), the finished trees, row by row (below), so that one
  long-running task, or a slow month, does not keep the rest:
  a finished task that is no one's child, with its whole tree (its children,
  theirs...), their histories, waits and ticks: a tree goes whole, or not at
  all, and not while a task outside it still needs one of its tasks (see
  ChooseTreesToRemove), so that no unfinished task loses a child, a history
  or a fork's source; with `archive`, each task and its history is first
  copied, as JSON, into `archived_tasks` (as a range's tasks are);
- external events that no wait holds;
- the rows of workers long stopped or dead;
- ticks that a catch-up policy skipped.

Each batch is a transaction of its own, bounded like the engine's others
(`transactions.py`), that locks only finished rows (and a root another
transaction holds is passed over, SKIP LOCKED): it never makes a claim, a
result or a suspension wait. Every worker runs it; two workers share the
trees instead of waiting for each other. A tree that may not go yet is
passed over, and looked at again on the next round: each worker walks the
finished roots in the order they finished, from where its last batch
stopped, and starts again from the oldest once it reaches the newest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby

from psycopg_pool import ConnectionPool

from ..db.models import TaskPartition
from ..db.queries import ChooseTreesToRemoveRow, Querier
from .crash_points import crash_point
from .partitions import maintain_partitions
from .periodic import Periodic
from .transactions import TransactionLimits, bounded_transaction

log = logging.getLogger(__name__)

# Where a walk starts: before the oldest finished root.
WALK_START = (datetime.fromisoformat("0001-01-01T00:00:00+00:00"), 0)


@dataclass
class RetentionPass:
    """What one pass removed, for the log and the tests."""

    trees: int = 0
    tasks: int = 0
    trees_kept: int = 0
    external_events: int = 0
    workers: int = 0
    skipped_ticks: int = 0
    archived: int = 0
    kept_roots: list[int] = field(default_factory=list)
    ranges_added: int = 0
    ranges_kept: int = 0
    # The first ids of the ranges whose partitions were dropped.
    ranges_removed: list[int] = field(default_factory=list)


class Retention:
    """Removes, every `interval` seconds, on a thread of its own, what the policy lets go."""

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        worker_id: int,
        interval: float,
        limits: TransactionLimits,
        max_trees: int = 100,
        max_rows: int = 1000,
    ) -> None:
        self.pool = pool
        self.limits = limits
        # The most trees one batch removes, and rows of the other tables.
        self.max_trees = max_trees
        self.max_rows = max_rows
        # Where this worker's walk over the finished roots goes on from.
        self._walk_after = WALK_START
        self._periodic = Periodic(f"retention-{worker_id}", interval, self._run_pass_quietly)

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()

    def _run_pass_quietly(self) -> None:
        self.run_pass()

    def run_pass(self) -> RetentionPass:
        """Add the ranges needed ahead and remove the ranges that may go; then
        batches of trees in the ranges deleted row by row (pinned, or filling
        more slowly than the period) until a round of the walk is done, then
        the other tables' batches until none is full."""
        removed = RetentionPass()
        ranges = maintain_partitions(
            self.pool,
            self.limits,
            max_rows=self.max_rows,
            stopping=lambda: self._periodic.stopping,
        )
        removed.ranges_added = ranges.added
        removed.ranges_removed = ranges.removed
        removed.ranges_kept = ranges.kept
        removed.archived += ranges.archived
        with self.pool.connection() as conn:
            slow = Querier(conn).list_slow_open_partitions()
        row_by_row = ranges.pinned + slow
        while (
            row_by_row and not self._periodic.stopping and self._remove_trees(removed, row_by_row)
        ):
            pass
        for table in ("external_events", "workers", "skipped_ticks"):
            while not self._periodic.stopping and self._remove_rows(table, removed):
                pass
        if removed.ranges_added or removed.ranges_removed:
            log.info(
                "retention: %d range(s) of task ids added, %d removed, %d kept for now",
                removed.ranges_added,
                len(removed.ranges_removed),
                removed.ranges_kept,
            )
        if removed.tasks or removed.external_events or removed.workers:
            log.info(
                "retention: %d tree(s), %d task(s) removed (%d archived), %d kept for now; "
                "%d external event(s), %d worker row(s), %d skipped tick(s) removed",
                removed.trees,
                removed.tasks,
                removed.archived,
                removed.trees_kept,
                removed.external_events,
                removed.workers,
                removed.skipped_ticks,
            )
        return removed

    def _remove_trees(self, removed: RetentionPass, ranges: list[TaskPartition]) -> bool:
        """One batch of trees with roots in `ranges`; whether to go on (it was full)."""
        with self.pool.connection() as conn, bounded_transaction(conn, self.limits):
            queries = Querier(conn)
            after_finished_at, after_id = self._walk_after
            rows = queries.choose_trees_to_remove(
                range_firsts=[task_range.first_id for task_range in ranges],
                range_ends=[task_range.end_id for task_range in ranges],
                after_finished_at=after_finished_at,
                after_id=after_id,
                max_roots=self.max_trees,
            )
            trees = [list(tree) for _, tree in groupby(rows, key=lambda row: row.root_id)]
            candidates = [row.task_id for tree in trees if tree[0].removable for row in tree]
            still_finished = set(queries.lock_finished_tasks(task_ids=candidates))
            needed = set(queries.list_tasks_needed_from_outside(task_ids=candidates))
            doomed: list[int] = []
            for tree in trees:
                task_ids = [row.task_id for row in tree]
                if (
                    not tree[0].removable
                    or not still_finished.issuperset(task_ids)
                    or not needed.isdisjoint(task_ids)
                ):
                    removed.trees_kept += 1
                    removed.kept_roots.append(tree[0].root_id)
                    continue
                if tree[0].archive:
                    removed.archived += queries.archive_tree(
                        root_id=tree[0].root_id, task_ids=task_ids
                    )
                doomed += task_ids
                removed.trees += 1
            if doomed:
                removed.tasks += queries.remove_tasks(task_ids=doomed)
            crash_point("retention:before_commit")
        # A batch with fewer roots than asked for reached the newest: the next
        # batch starts a new round, from the oldest.
        if len(trees) < self.max_trees:
            self._walk_after = WALK_START
            return False
        self._walk_after = walk_position(trees[-1][0])
        return True

    def _remove_rows(self, table: str, removed: RetentionPass) -> bool:
        """One batch of one of the other tables; whether it was full."""
        with self.pool.connection() as conn, bounded_transaction(conn, self.limits):
            queries = Querier(conn)
            if table == "external_events":
                count = queries.remove_old_external_events(max_rows=self.max_rows)
                removed.external_events += count
            elif table == "workers":
                count = queries.remove_dead_workers(max_rows=self.max_rows)
                removed.workers += count
            else:
                count = queries.remove_old_skipped_ticks(max_rows=self.max_rows)
                removed.skipped_ticks += count
        return count == self.max_rows


def walk_position(row: ChooseTreesToRemoveRow) -> tuple[datetime, int]:
    """Where the walk goes on after this root: its finish time and id."""
    if row.root_finished_at is None:  # ChooseTreesToRemove takes finished roots only
        raise RuntimeError(f"root task {row.root_id} has no finish time")
    return row.root_finished_at, row.root_id
