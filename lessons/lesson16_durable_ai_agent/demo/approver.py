"""The person in the loop: reads each draft the agent asks to send, and approves it.

Each risky tool call opens a wait for an event `approval:<email key>`
(lesson 10): the open waits are this person's inbox. `Approver` looks at it
every few milliseconds, on a thread of its own, reads the draft from the mail
service, and pushes the decision (`client.push_event`), which ends the wait
and wakes the agent. A wait is answered once: a fork that drafts the same
email opens a wait of its own, and is asked again.
"""

from __future__ import annotations

import threading
from typing import Any

from psycopg_pool import ConnectionPool

from ..db.queries import Querier
from ..engine.client import push_event
from .world import World

APPROVAL = "approval:"


class Approver:
    """`with Approver(pool, world, "Ben"): ...` approves every draft while the block runs."""

    def __init__(
        self, pool: ConnectionPool, world: World, name: str, *, interval: float = 0.02
    ) -> None:
        self.pool = pool
        self.world = world
        self.name = name
        self.interval = interval
        # What was approved, in order: the draft, and the wait that asked.
        self.approved: list[dict[str, Any]] = []
        self._answered: set[tuple[int, int]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read_the_inbox, name="approver")

    def __enter__(self) -> Approver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _read_the_inbox(self) -> None:
        while not self._stop.wait(self.interval):
            with self.pool.connection() as conn:
                for wait in Querier(conn).list_event_waits():
                    asked = (wait.task_id, wait.event_number)
                    if wait.ended_at is not None or not wait.key.startswith(APPROVAL):
                        continue
                    if asked in self._answered:
                        continue
                    key = wait.key.removeprefix(APPROVAL)
                    drafts = [d for d in self.world.mail_records("draft") if d["key"] == key]
                    push_event(conn, wait.key, {"approved": True, "by": self.name})
                    self._answered.add(asked)
                    self.approved.append({"task_id": wait.task_id, "draft": drafts[0]})
