"""The task functions of this lesson's demonstration.

A task function takes the task's JSON input and returns a JSON output. A worker
finds it by the name it is registered under; `FUNCTIONS` lists them all, and is
what `worker_process --functions` loads.

The example is a service many tenants share. `build_report` is a tenant's
report: short work, whose run records when it started and when it finished, so
that main.py can see who was served first, and how many of a tenant's reports
ran at once. `charge_payment` calls a payment API that allows so many calls
per window of time: it runs under a rate limit.
"""

from __future__ import annotations

import time
from typing import Any

from ..db.queries import Querier
from ..engine.attempts import current_task
from ..engine.worker import TaskFunction

# The queues of the example: the tenants' reports, and the payments.
REPORTS_QUEUE = "reports"
PAYMENTS_QUEUE = "payments"

# The payment provider's limit, as its documentation would state it. The
# demonstration's own numbers, so that it runs in seconds.
PAYMENT_API = "payment_api"
PAYMENT_API_CALLS = 20
PAYMENT_API_PER_SECONDS = 2.0

# How long a report takes to build: long enough for a tenant's reports to
# overlap, so that a limit of 2 at once has something to stop.
REPORT_SECONDS = 0.005


def build_report(input: dict[str, Any]) -> dict[str, Any]:
    """Build one report of `input["tenant"]`: record the run's start, work, record its end."""
    task = current_task()
    with task.pool.connection() as conn:
        Querier(conn).record_report_start(
            task_id=task.id, attempt=task.attempt, tenant=input["tenant"]
        )
    time.sleep(REPORT_SECONDS)  # the work itself
    with task.pool.connection() as conn:
        Querier(conn).record_report_finish(task_id=task.id, attempt=task.attempt)
    return {"tenant": input["tenant"], "report": input["report"]}


def charge_payment(input: dict[str, Any]) -> dict[str, Any]:
    """Charge an order through the payment API: a row in `charges`, its ledger.

    The charge carries this task's id, unique, as the API's idempotency key: a
    second run of the task (its worker died after the call) finds the first
    run's charge instead of charging again. The rate limit counts the call
    either way: units are spent when a task starts, not when it succeeds.
    """
    task = current_task()
    with task.pool.connection() as conn:
        queries = Querier(conn)
        charge = queries.record_charge(
            order_id=input["order_id"], amount_cents=input["amount_cents"], task_id=task.id
        ) or queries.get_charge_of_task(task_id=task.id)
    if charge is None:  # one of the two queries always finds it
        raise RuntimeError(f"task {task.id} neither charged nor found its charge")
    return {"charge_id": charge.id, "amount_cents": charge.amount_cents}


FUNCTIONS: dict[str, TaskFunction] = {
    "build_report": build_report,
    "charge_payment": charge_payment,
}
