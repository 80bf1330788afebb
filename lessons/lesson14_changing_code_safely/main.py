"""Lesson 14: changing code safely: ship a fix while orders are in flight.

    python lessons/lesson14_changing_code_safely/main.py [-v]

One deploy story, in four scenes, each checked:

1. Version 1 in production. Twenty orders are charged (in US dollars: the
   bug) and wait for a person's approval, pinned to version v1.
2. The fix, as first written (demo/tasks_v2_unsafe.py): the determinism
   check replays the twenty histories against it, lists all twenty as
   broken at event 1 with the key that changed, and exits 1. It runs nothing.
3. The fix behind a patch marker (demo/tasks_v2_patched.py): the check
   passes. Deploy: a v2 worker starts, v1 drains, its orders move to v2, the
   v1 worker stops. New orders take the new path (charged in euros, a marker
   in their history); the twenty, approved, complete on the old path. A
   check of version 3 at this point would break the twenty: too early.
4. The patch removed (demo/tasks_v3.py): no order in flight takes the old
   path any more, the check of version 3 passes, and it is deployed the same
   way; the new orders complete on it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from contextlib import ExitStack

# A Python without the course installed (`make install` puts it in .venv) would stop at
# the imports below with "No module named 'lessons'": say what to run instead.
try:
    import lessons.common.cli  # noqa: F401
except ModuleNotFoundError:
    print(
        f"error: this Python ({sys.executable}) does not have the course installed: run "
        "`make install`, then `.venv/bin/python "
        "lessons/lesson14_changing_code_safely/main.py`.",
        file=sys.stderr,
    )
    sys.exit(2)

from psycopg_pool import ConnectionPool

from lessons.common.cli import Checks, Lesson, argument_parser, configure_logging, run_lesson
from lessons.common.cli import wait_until as wait_for
from lessons.lesson14_changing_code_safely.db.models import EventKind, Task, TaskStatus
from lessons.lesson14_changing_code_safely.db.queries import Querier
from lessons.lesson14_changing_code_safely.demo.tasks import approval_event_key
from lessons.lesson14_changing_code_safely.engine.client import (
    enqueue,
    push_event,
    wait_for_task,
)
from lessons.lesson14_changing_code_safely.tools.worker_process import WorkerProcess

LESSON = Lesson.of(__file__)
DEMO = f"{LESSON.package}.demo"

SLOTS = 8
POLL_INTERVAL = 0.2
HEARTBEAT_INTERVAL = 0.1
INACTIVITY_THRESHOLD = 1.0

ORDERS_IN_FLIGHT = 20
NEW_ORDERS = 5


def order(order_id: str) -> dict[str, object]:
    """A customer in the euro zone: version 1 charges them in dollars."""
    return {"order_id": order_id, "amount_cents": 4900, "currency": "EUR"}


def worker_process(code_version: str, module: str) -> WorkerProcess:
    return WorkerProcess(
        schema=LESSON.schema,
        functions=f"{DEMO}.{module}",
        slots=SLOTS,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
        code_version=code_version,
    )


def history_tool(*arguments: str) -> subprocess.CompletedProcess[str]:
    """Run the history tool as an operator (or a CI job) would, and keep what it prints."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            f"{LESSON.package}.tools.history_tool",
            f"--schema={LESSON.schema}",
            *arguments,
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def show(result: subprocess.CompletedProcess[str], *, lines: int = 8) -> None:
    """The tool's first lines, indented, and its exit status."""
    printed = (result.stdout + result.stderr).rstrip().splitlines()
    for line in printed[:lines]:
        print(f"    {line}")
    if len(printed) > lines:
        print(f"    ... ({len(printed) - lines} more lines)")
    print(f"    (exit status {result.returncode})")


def orders(pool: ConnectionPool, ids: Sequence[int]) -> list[Task]:
    with pool.connection() as conn:
        queries = Querier(conn)
        return [task for task in queries.list_tasks() if task.id in set(ids)]


def waiting_for_approval(pool: ConnectionPool, ids: Sequence[int]) -> bool:
    """Whether every order is charged and suspended on its approval."""
    with pool.connection() as conn:
        queries = Querier(conn)
        for task_id in ids:
            task = queries.get_task(id=task_id)
            events = queries.list_task_events(task_id=task_id)
            if task is None or task.status != TaskStatus.SUSPENDED:
                return False
            if not any(event.kind == EventKind.WAIT for event in events):
                return False
    return True


def effects(pool: ConnectionPool) -> tuple[int, int, int]:
    """How many tasks, charges and emails there are: what a check must not change."""
    with pool.connection() as conn:
        queries = Querier(conn)
        return len(queries.list_tasks()), len(queries.list_charges()), len(queries.list_emails())


def first_events(pool: ConnectionPool, task_id: int) -> str:
    with pool.connection() as conn:
        events = Querier(conn).list_task_events(task_id=task_id)
    return ", ".join(f"{event.kind} {event.name}" for event in events[:2])


def approve(pool: ConnectionPool, order_ids: Sequence[str]) -> None:
    with pool.connection() as conn:
        for order_id in order_ids:
            push_event(conn, approval_event_key(order_id), {"approved_by": "ops"})


def deploy(
    pool: ConnectionPool,
    ids: Sequence[int],
    old: WorkerProcess,
    new: WorkerProcess,
    from_version: str,
    to: str,
) -> list[int]:
    """Start `new`, drain the old version, move its tasks to the new one, stop `old`.

    Returns the ids of the tasks moved."""
    new.start()
    print(f"  A {to} worker started (pid {new.pid}).")
    for arguments in (
        ("drain", from_version),
        ("move-version", "--from", from_version, "--to", to),
    ):
        print(f"  $ history_tool {' '.join(arguments)}")
        show(history_tool(*arguments), lines=1)
    old.stop()
    print(f"  The {from_version} worker stopped.")
    return [task.id for task in orders(pool, ids) if task.code_version == to]


def demonstrate() -> bool:
    checks = Checks()
    LESSON.reset()
    a_orders = [f"A-{n:02}" for n in range(1, ORDERS_IN_FLIGHT + 1)]
    b_orders = [f"B-{n:02}" for n in range(1, NEW_ORDERS + 1)]
    with LESSON.pool(max_size=4) as pool, ExitStack() as stack:
        v1 = stack.enter_context(worker_process("v1", "tasks"))
        v2 = stack.enter_context(worker_process("v2", "tasks_v2_patched"))
        v3 = stack.enter_context(worker_process("v3", "tasks_v3"))

        print(f"\n1. Version 1 in production: {ORDERS_IN_FLIGHT} orders in flight")
        v1.start()
        with pool.connection() as conn:
            a_ids = [enqueue(conn, "process_order", order(o), durable=True) for o in a_orders]
        wait_for(lambda: waiting_for_approval(pool, a_ids), "the orders to wait", timeout=60)
        with pool.connection() as conn:
            charges = {charge.order_id: charge for charge in Querier(conn).list_charges()}
        print(f"  {ORDERS_IN_FLIGHT} orders charged and waiting for approval: the history of")
        print(f"  each is [{first_events(pool, a_ids[0])}].")
        checks.check(
            all(charges[o].currency == "USD" for o in a_orders),
            "version 1 charged every order in USD, the bug to fix",
        )
        checks.check(
            all(task.code_version == "v1" for task in orders(pool, a_ids)),
            "every order in flight is pinned to version v1",
        )

        print("\n2. The fix as first written: the check before the deploy")
        before = effects(pool)
        unsafe = history_tool("check", f"--functions={DEMO}.tasks_v2_unsafe")
        print("  $ history_tool check --functions demo.tasks_v2_unsafe")
        show(unsafe)
        checks.check(
            unsafe.returncode == 1
            and f"{ORDERS_IN_FLIGHT} would break" in unsafe.stdout
            and unsafe.stdout.count("breaks at event 1") == ORDERS_IN_FLIGHT
            and unsafe.stdout.count('currency: added "EUR"') == ORDERS_IN_FLIGHT,
            f"the check lists all {ORDERS_IN_FLIGHT} orders, at event 1, with the key that "
            "changed, and exits 1",
            unsafe.stdout + unsafe.stderr,
        )
        checks.check(
            effects(pool) == before,
            "the check ran no step and spawned no child: tasks, charges and emails unchanged",
        )

        print("\n3. The fix behind a patch marker, deployed")
        patched = history_tool("check", f"--functions={DEMO}.tasks_v2_patched")
        print("  $ history_tool check --functions demo.tasks_v2_patched")
        show(patched)
        checks.check(
            patched.returncode == 0
            and f"0 would break, {ORDERS_IN_FLIGHT} replay" in patched.stdout,
            f"with the patch, all {ORDERS_IN_FLIGHT} histories replay",
            patched.stdout + patched.stderr,
        )
        moved = deploy(pool, a_ids, v1, v2, "v1", "v2")
        with pool.connection() as conn:
            b_ids = [enqueue(conn, "process_order", order(o), durable=True) for o in b_orders]
        wait_for(lambda: waiting_for_approval(pool, b_ids), "the new orders to wait", timeout=60)
        print(
            f"  {NEW_ORDERS} new orders on v2: their history is [{first_events(pool, b_ids[0])}]."
        )
        too_early = history_tool("check", f"--functions={DEMO}.tasks_v3")
        print("  $ history_tool check --functions demo.tasks_v3    (the patch removed, too early)")
        show(too_early, lines=1)
        checks.check(
            too_early.returncode == 1 and f"{ORDERS_IN_FLIGHT} would break" in too_early.stdout,
            f"removing the patch now would break the {ORDERS_IN_FLIGHT} old orders",
            too_early.stdout + too_early.stderr,
        )
        approve(pool, a_orders)
        a_done = [wait_for_task(pool, task_id, timeout=60) for task_id in a_ids]
        with pool.connection() as conn:
            queries = Querier(conn)
            charges = {charge.order_id: charge for charge in queries.list_charges()}
            markers = {
                task_id: [e for e in queries.list_task_events(task_id=task_id) if e.kind == "patch"]
                for task_id in [*a_ids, *b_ids]
            }
        print(f"  The {ORDERS_IN_FLIGHT} old orders, approved, completed on the v2 worker.")
        checks.check(
            sorted(moved) == sorted(a_ids)
            and all(task.status == TaskStatus.COMPLETED for task in a_done)
            and all(task.worker_id in v2.ids for task in a_done),
            f"the {ORDERS_IN_FLIGHT} orders moved to v2 and completed on its worker",
            str([(task.id, task.status, task.worker_id) for task in a_done]),
        )
        checks.check(
            all(not markers[task_id] for task_id in a_ids)
            and all(charges[o].currency == "USD" for o in a_orders),
            "they replayed the old path: no marker, the charge they had",
        )
        checks.check(
            all(len(markers[task_id]) == 1 for task_id in b_ids)
            and all(charges[o].currency == "EUR" for o in b_orders),
            "new orders took the new path: a marker, and charged in EUR",
        )

        print("\n4. The patch removed, once no order takes its old path")
        # Asked of the code deployed, which still has the patch's old path.
        patches = history_tool("patches", f"--functions={DEMO}.tasks_v2_patched")
        print("  $ history_tool patches --functions demo.tasks_v2_patched")
        show(patches)
        v3_check = history_tool("check", f"--functions={DEMO}.tasks_v3")
        print("  $ history_tool check --functions demo.tasks_v3")
        show(v3_check, lines=1)
        checks.check(
            "no unfinished task takes the old path" in patches.stdout
            and v3_check.returncode == 0
            and f"0 would break, {NEW_ORDERS} replay" in v3_check.stdout,
            "with no old path left in flight, the check of version 3 passes",
            patches.stdout + v3_check.stdout + v3_check.stderr,
        )
        deploy(pool, b_ids, v2, v3, "v2", "v3")
        approve(pool, b_orders)
        b_done = [wait_for_task(pool, task_id, timeout=60) for task_id in b_ids]
        versions = history_tool("versions")
        print("  $ history_tool versions")
        show(versions)
        with pool.connection() as conn:
            emails = [email.order_id for email in Querier(conn).list_emails()]
        checks.check(
            all(task.status == TaskStatus.COMPLETED for task in b_done)
            and all(task.worker_id in v3.ids for task in b_done),
            f"the {NEW_ORDERS} new orders completed on version 3, past their marker",
            str([(task.id, task.status, task.worker_id) for task in b_done]),
        )
        checks.check(
            sorted(emails) == sorted([*a_orders, *b_orders]),
            f"every one of the {ORDERS_IN_FLIGHT + NEW_ORDERS} orders was emailed once",
            str(sorted(emails)),
        )
        checks.check("STRANDED" not in versions.stdout, "no version is left stranded")
        v3.stop()
    return checks.passed


if __name__ == "__main__":
    parser = argument_parser(__doc__ or "")
    configure_logging(parser.parse_args().verbose)
    run_lesson(demonstrate)
