"""A durable system as the harness sees it: what the durable-work case asks.

An order is a durable task with two child tasks, one after the other
(`systems/lesson_orders.py`). The peer's equivalent is a DBOS workflow of two steps
(`systems/peers/dbos_case.py`).

Every system runs the same way: `processes` worker processes, each running at most
`concurrency` orders (or workflows) at once, start on a fresh schema (DBOS: a fresh
database); N orders are enqueued, or, for a system that starts its work directly, are
started by the workers themselves; the rate runs from a start that no later update
moves (the course's lessons: the commit that enqueued the orders; DBOS: its first
workflow's dequeue or creation, stamped once) to the moment a poll finds all N done,
both on the database's clock (`measure.watch_burn_down`).

Lessons 07 and 08 are `LessonOrders`, lessons 09 on one `EngineOrders` each
(`systems/lesson_orders.py`), listed in `compare.course_durable_systems()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .measure import BurnDown
from .vacuum import Vacuum


@dataclass(frozen=True)
class DurableLayout:
    """Worker processes, how many orders each runs at once, and how often idle ones poll.

    For the course's workers `concurrency` is the slots of each of the two queues
    (orders, order_steps) of a worker process; for DBOS, the workflows a process
    runs at once (its queue's `worker_concurrency`, or as many starting threads).
    """

    processes: int
    concurrency: int
    poll_interval: float


class DurableSystem(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def unit(self) -> str:
        """What it completes: "orders" or "workflows"."""
        ...

    def settings(self, layout: DurableLayout) -> str: ...

    def run(self, orders: int, layout: DurableLayout, vacuum: Vacuum) -> BurnDown:
        """Complete `orders` orders from a fresh schema (or database); check each one."""
        ...
