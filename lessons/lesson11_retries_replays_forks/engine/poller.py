"""The poller: a thread that claims tasks for the free slots and hands them on.

A task is claimed by one `UPDATE ... RETURNING` statement that marks it
running, so no two workers ever get the same task. The claim's LIMIT is the
number of free slots, so a task is never claimed only to wait in this process
while another worker sits idle. And it claims only tasks whose function this
worker has (a durable function for a durable task, a plain one for a plain
task): a task no worker can run waits on the queue for one that can (a new
kind of task during a rolling deploy) instead of failing.

The poller claims when told there may be work (`wake()`: the listener heard a
notification, or has just reconnected), or when `poll_interval` has passed
without one: polling stays as the fallback for notifications that never
arrive. A suspended task due to wake up is not new work, and nobody announces
it, so an idle poller waits no longer than the next wake-up time it can see.

When to claim is a trade-off, and `ClaimPolicy` makes it explicit: claiming the
moment one slot is free starts each task as early as possible, but when the
worker is saturated each claim then carries a task or two, a round trip each,
and the poller hands out nothing while it waits for the answer. Waiting until
a share of the slots is free makes fewer, bigger claims, at the cost of a
short delay (`linger`, at most) for the task that could have started at once.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg_pool import ConnectionPool

from ..db.models import Task
from ..db.queries import Querier
from .claims import Claim, ClaimedAttempts
from .slots import Slots

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClaimPolicy:
    """How many free slots the poller waits for before it claims again.

    After a claim that came back *full* (as many tasks as it asked for: more
    may be waiting, the worker is saturated), the poller waits until
    `share_free` of the slots are free, or until `linger` seconds have passed
    since the first one was, whichever comes first. After a claim that was not
    full (the queue had fewer tasks than free slots: the worker keeps up), it
    claims as soon as one slot is free, so an idle worker starts a new task
    without delay. `linger=0` claims at once always, as lesson 03 did.

    The defaults were measured in lesson 04's README ("When to claim").
    """

    # The fraction of the slots a saturated poller waits for (0 < share_free <= 1).
    share_free: float = 0.5
    # The most a saturated poller waits for them, in seconds, once a slot is free.
    linger: float = 0.005

    def __post_init__(self) -> None:
        if not 0 < self.share_free <= 1:
            raise ValueError(f"share_free must be in (0, 1], not {self.share_free}")
        if self.linger < 0:
            raise ValueError(f"linger must not be negative, not {self.linger}")

    def slots_to_wait_for(self, total_slots: int) -> int:
        """How many free slots a saturated poller waits for: at least one."""
        return max(1, math.ceil(self.share_free * total_slots))


DEFAULT_CLAIM_POLICY = ClaimPolicy()


class Poller:
    """Claims tasks of one queue, one slot each, and passes each to `start_task`."""

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        worker_id: int,
        queue: str,
        poll_interval: float,
        slots: Slots,
        claimed: ClaimedAttempts,
        claim_policy: ClaimPolicy,
        task_names: Callable[[], list[str]],
        durable_task_names: Callable[[], list[str]],
        start_task: Callable[[Task], None],
    ) -> None:
        self.pool = pool
        self.worker_id = worker_id
        self.queue = queue
        # How long to wait before asking again when the queue was empty, unless
        # a notification, or the next wake-up time, comes first. Only a fallback.
        self.poll_interval = poll_interval
        self.slots = slots
        # Every attempt a claim returns is recorded here, for the heartbeat.
        self.claimed = claimed
        # How many free slots to wait for before claiming, once saturated.
        self.claim_policy = claim_policy
        # The names of the plain and of the durable tasks this worker can run,
        # asked before every claim.
        self.task_names = task_names
        self.durable_task_names = durable_task_names
        # Runs a claimed task, whose slot is already taken, and gives the slot back.
        self.start_task = start_task
        self._stopping = threading.Event()
        # Set when there may be new work: by wake(), and by stop(). The loop
        # waits on it, for poll_interval at most.
        self._work_may_be_waiting = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"poller-{queue}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """There may be new work: claim now, without waiting for the next poll."""
        self._work_may_be_waiting.set()

    def stop(self) -> None:
        """Claim nothing more. Tasks already handed on go on running."""
        self._stopping.set()
        self._work_may_be_waiting.set()  # the loop may be waiting for work
        self.slots.close()  # or for a free slot
        self._thread.join()

    def _loop(self) -> None:
        saturated = False
        while not self._stopping.is_set():
            free_slots = self._wait_for_slots(saturated)
            if free_slots == 0:
                break  # stopping
            # Cleared *before* the claim: a notification that arrives while the
            # claim runs sets it again, and the wait below returns at once. Clear
            # it after the claim, and that notification would be lost.
            self._work_may_be_waiting.clear()
            try:
                tasks = self.claim_tasks(free_slots)
            except psycopg.Error:
                # The database may be restarting; try again at the next poll.
                log.exception("could not claim tasks from queue %r", self.queue)
                tasks = []
            # A full claim says more tasks may be waiting than there were slots.
            saturated = len(tasks) == free_slots
            for task in tasks:
                self.slots.take()
                self.start_task(task)
            if not tasks and not self._stopping.is_set():
                # Nothing to do: wait for a notification, or until the next
                # wake-up time, or poll_interval at most. (stop() sets the flag
                # after _stopping, so if it came after the clear() above, this
                # wait returns at once.)
                self._work_may_be_waiting.wait(self._time_until_next_poll())

    def _time_until_next_poll(self) -> float:
        """The poll interval, or less when a suspended task of this queue is due sooner."""
        try:
            with self.pool.connection() as conn:
                seconds = Querier(conn).seconds_until_next_wake_up(
                    queue=self.queue,
                    task_names=self.task_names(),
                    durable_task_names=self.durable_task_names(),
                    max_seconds=self.poll_interval,
                )
        except psycopg.Error:
            return self.poll_interval  # the database may be restarting
        return seconds if seconds is not None else self.poll_interval

    def _wait_for_slots(self, saturated: bool) -> int:
        """Free slots to claim for: one will do, unless the last claim was full."""
        if not saturated:
            return self.slots.wait_for_free()
        return self.slots.wait_for_free(
            at_least=self.claim_policy.slots_to_wait_for(self.slots.total),
            linger=self.claim_policy.linger,
        )

    def claim_tasks(self, max_tasks: int) -> list[Task]:
        with self.claimed.claiming():
            with self.pool.connection() as conn:
                tasks = Querier(conn).claim_tasks(
                    worker_id=self.worker_id,
                    queue=self.queue,
                    task_names=self.task_names(),
                    durable_task_names=self.durable_task_names(),
                    max_tasks=max_tasks,
                )
            # Only now, the claim committed, are they this worker's to run.
            self.claimed.received(
                Claim.of(task.id, task.attempt, task.started_at) for task in tasks
            )
        if tasks:
            log.info("claimed %d task(s): %s", len(tasks), [task.id for task in tasks])
        return tasks
