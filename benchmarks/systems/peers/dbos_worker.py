"""A DBOS worker process for the benchmarks (see `dbos_case`).

    python -m benchmarks.systems.peers.dbos_worker --url URL --mode queue|direct [--workflows N]

A DBOS application whose workflow is the course's order: a step that charges (a row
in `charges`) and a step that emails (a row in `emails`), each row keyed by the
workflow, as the course's children key theirs by their task. It says ready and waits
for go; then, in queue mode, it launches and dequeues from the benchmark's queue; in
direct mode, it starts `--workflows` workflows itself from `--concurrency` threads.
It runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from typing import Any

from psycopg_pool import ConnectionPool

from ...harness.processes import wait_for_go
from .dbos_case import (
    APPLICATION,
    APPLICATION_VERSION,
    DIRECT_MODE,
    QUEUE,
    QUEUE_MODE,
    RECORD_CHARGE_SQL,
    RECORD_EMAIL_SQL,
    WORKFLOW,
)


def serve(
    url: str, conninfo: str, mode: str, executor_id: str, concurrency: int, workflows: int
) -> None:
    """A DBOS application: say ready, wait for go, then dequeue or start workflows."""
    from dbos import DBOS, DBOSConfig  # type: ignore[import-not-found, unused-ignore]

    # The steps' own connections to the shop's tables, one per workflow in flight.
    shop = ConnectionPool(conninfo, min_size=concurrency, max_size=concurrency, open=True)

    def record(statement: str, number: int) -> None:
        with shop.connection() as conn:
            conn.execute(statement, {"order_id": f"B-{number}", "workflow_id": DBOS.workflow_id})

    def charge_payment(number: int) -> None:
        record(RECORD_CHARGE_SQL, number)

    def send_confirmation_email(number: int) -> None:
        record(RECORD_EMAIL_SQL, number)

    charge_step = DBOS.step(name="charge_payment")(charge_payment)
    email_step = DBOS.step(name="send_confirmation_email")(send_confirmation_email)

    def two_steps(number: int) -> int:
        charge_step(number)
        email_step(number)
        return number

    workflow = DBOS.workflow(name=WORKFLOW)(two_steps)
    config: DBOSConfig = {
        "name": APPLICATION,
        "system_database_url": url,
        "executor_id": executor_id,
        "application_version": APPLICATION_VERSION,
        "log_level": "WARNING",
        # The tables exist already (the benchmark ran DBOS.migrate).
        "run_migrations": False,
    }
    DBOS(config=config)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    if mode == QUEUE_MODE:
        DBOS.listen_queues([QUEUE])
        wait_for_go()
        DBOS.launch()
    else:
        DBOS.launch()
        wait_for_go()
        _start_directly(workflow, workflows, concurrency)
    stopping.wait()
    DBOS.destroy()
    shop.close()


def _start_directly(workflow: Any, workflows: int, concurrency: int) -> None:
    from dbos import DBOS  # type: ignore[import-not-found, unused-ignore]

    numbers = iter(range(workflows))
    lock = threading.Lock()

    def starter() -> None:
        while True:
            with lock:
                number = next(numbers, None)
            if number is None:
                return
            DBOS.start_workflow(workflow, number).get_result()

    threads = [threading.Thread(target=starter) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="DBOS's system database (SQLAlchemy URL)")
    parser.add_argument("--conninfo", required=True, help="the same database, for the steps")
    parser.add_argument("--mode", choices=[QUEUE_MODE, DIRECT_MODE], required=True)
    parser.add_argument("--executor-id", default=f"bench-{os.getpid()}")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--workflows", type=int, default=0, help="to start (direct mode)")
    options = parser.parse_args(argv)
    serve(
        options.url,
        options.conninfo,
        options.mode,
        options.executor_id,
        options.concurrency,
        options.workflows,
    )


if __name__ == "__main__":
    main()
