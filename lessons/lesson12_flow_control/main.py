"""Lesson 12: flow control: a noisy tenant, quiet tenants, and a payment API's rate limit.

    python lessons/lesson12_flow_control/main.py [-v]

One queue of reports serves six tenants. The noisy one enqueues 2,000 reports at
once; then five quiet ones enqueue five each. Without concurrency keys the claim
takes the oldest tasks first (lesson 11's `ORDER BY priority, id`), and the quiet
tenants wait behind the whole backlog. With the tenant as each task's
concurrency key, and at most 2 running per tenant, the claim walks the tenants
round robin: the quiet tenants' reports start within the first few turns, and
no tenant ever has more than 2 running, counted from the runs' own recorded
start and finish times.

Then 60 charges go through a payment API that allows 20 calls per 2 s: the
rate limit grants no more than 20 in any window of 2 s, and reaches 20.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime

# A Python without the course installed (`make install` puts it in .venv) would stop at
# the imports below with "No module named 'lessons'": say what to run instead.
try:
    import lessons.common.cli  # noqa: F401
except ModuleNotFoundError:
    print(
        f"error: this Python ({sys.executable}) does not have the course installed: run "
        "`make install`, then `.venv/bin/python lessons/lesson12_flow_control/main.py`.",
        file=sys.stderr,
    )
    sys.exit(2)

from psycopg_pool import ConnectionPool

from lessons.common.cli import (
    Checks,
    Lesson,
    argument_parser,
    configure_logging,
    run_lesson,
    wait_until,
)
from lessons.lesson12_flow_control.db.models import ReportRun
from lessons.lesson12_flow_control.db.queries import Querier
from lessons.lesson12_flow_control.demo.tasks import (
    FUNCTIONS,
    PAYMENT_API,
    PAYMENT_API_CALLS,
    PAYMENT_API_PER_SECONDS,
    PAYMENTS_QUEUE,
    REPORTS_QUEUE,
)
from lessons.lesson12_flow_control.engine.client import (
    enqueue,
    set_concurrency_limit,
    set_rate_limit,
    wait_for_task,
)
from lessons.lesson12_flow_control.engine.worker import Worker

LESSON = Lesson.of(__file__)

# Two workers of four slots each share every queue of the demonstration.
WORKERS = 2
SLOTS = 4
# A worker that finds the rate limit spent claims again at its next poll (the
# units that come back as time passes announce themselves to nobody): a short
# poll keeps the payments close to the limit's rate.
POLL_INTERVAL = 0.05
HEARTBEAT_INTERVAL = 0.1
INACTIVITY_THRESHOLD = 1.0

NOISY_TENANT = "acme"
NOISY_REPORTS = 2_000
QUIET_TENANTS = ("bistro", "cobalt", "dune", "ember", "fjord")
QUIET_REPORTS = 5  # each
MAX_PER_TENANT = 2

CHARGES = 3 * PAYMENT_API_CALLS


@contextmanager
def workers(pool: ConnectionPool, queue: str) -> Iterator[None]:
    """WORKERS workers in this process serving `queue`, stopped (gracefully) on exit."""
    with ExitStack() as stack:
        for _ in range(WORKERS):
            stack.enter_context(
                Worker(
                    pool,
                    FUNCTIONS,
                    queue=queue,
                    slots=SLOTS,
                    poll_interval=POLL_INTERVAL,
                    heartbeat_interval=HEARTBEAT_INTERVAL,
                    inactivity_threshold=INACTIVITY_THRESHOLD,
                )
            )
        yield


def enqueue_reports(pool: ConnectionPool, *, keyed: bool) -> set[int]:
    """The noisy tenant's burst, then the quiet tenants' few, in one transaction, before
    any worker runs: the order they were enqueued in is the same in every run."""
    backlog = [NOISY_TENANT] * NOISY_REPORTS + [
        tenant for tenant in QUIET_TENANTS for _ in range(QUIET_REPORTS)
    ]
    with pool.connection() as conn, conn.transaction():
        return {
            enqueue(
                conn,
                "build_report",
                {"tenant": tenant, "report": number},
                queue=REPORTS_QUEUE,
                concurrency_key=tenant if keyed else None,
            )
            for number, tenant in enumerate(backlog, start=1)
        }


def runs_of(pool: ConnectionPool, task_ids: set[int]) -> list[ReportRun]:
    """The runs of these tasks, in the order they started."""
    with pool.connection() as conn:
        return [run for run in Querier(conn).list_report_runs() if run.task_id in task_ids]


def wait_for_quiet_tenants(pool: ConnectionPool, task_ids: set[int]) -> None:
    """Until every report of the quiet tenants among `task_ids` has finished."""
    quiet_reports = len(QUIET_TENANTS) * QUIET_REPORTS

    def finished() -> int | None:
        with pool.connection() as conn:
            return Querier(conn).count_finished_report_runs(
                first_task_id=min(task_ids), tenants=QUIET_TENANTS
            )

    wait_until(lambda: finished() == quiet_reports, "the quiet tenants' reports", timeout=60)


def print_positions(runs: list[ReportRun]) -> None:
    """Where each quiet tenant's reports came in the order of all starts."""
    for tenant in QUIET_TENANTS:
        positions = [str(place) for place, run in enumerate(runs, start=1) if run.tenant == tenant]
        print(f"  {tenant:<7} started its reports at positions {' '.join(positions)}")


def noisy_starts_before_quiet(runs: list[ReportRun], which: int) -> int:
    """How many of the noisy tenant's reports had started before the quiet tenants'
    first (`which=0`) or last (`which=-1`) report started."""
    quiet = [place for place, run in enumerate(runs) if run.tenant in QUIET_TENANTS]
    return sum(1 for run in runs[: quiet[which]] if run.tenant == NOISY_TENANT)


def most_running_at_once(runs: list[ReportRun]) -> dict[str, int]:
    """Per tenant, the most runs whose [started_at, finished_at] intervals overlap.

    A sweep over the recorded times: +1 at each start, -1 at each finish. At equal
    times a start counts before a finish, so touching intervals count as
    overlapping: if anything, this overcounts. A run's recorded interval lies
    inside the time its task held its slot (it starts after the claim and ends
    before the result is written), so the engine's count of a tenant's running
    tasks was at least this high at that moment; a count above the limit here is
    an over-admission the engine made.
    """
    most: dict[str, int] = {}
    for tenant in {run.tenant for run in runs}:
        moments: list[tuple[datetime, int]] = []
        for run in runs:
            if run.tenant == tenant and run.finished_at is not None:
                moments += [(run.started_at, 0), (run.finished_at, 1)]
        running = 0
        for _, is_finish in sorted(moments):
            running += -1 if is_finish else 1
            most[tenant] = max(most.get(tenant, 0), running)
    return most


def without_keys(pool: ConnectionPool, checks: Checks) -> None:
    print(
        f"== Without concurrency keys: {NOISY_TENANT} enqueues {NOISY_REPORTS:,} reports, ", end=""
    )
    print(f"then {len(QUIET_TENANTS)} quiet tenants {QUIET_REPORTS} each ==")
    task_ids = enqueue_reports(pool, keyed=False)
    began = time.monotonic()
    with workers(pool, REPORTS_QUEUE):
        wait_for_quiet_tenants(pool, task_ids)
    runs = runs_of(pool, task_ids)
    print(f"  {WORKERS} workers x {SLOTS} slots ran {len(runs):,} reports in ", end="")
    print(f"{time.monotonic() - began:.1f} s. The claim takes the oldest first, so:")
    print_positions(runs)
    before_first = noisy_starts_before_quiet(runs, 0)
    print(f"  {NOISY_TENANT} had started {before_first:,} reports before the first quiet one.")
    # Only the noisy tenant's last few reports, claimed at the same moment as the
    # first quiet ones by the other worker, may start after them.
    checks.check(
        before_first >= NOISY_REPORTS - WORKERS * SLOTS,
        f"without keys, the quiet tenants waited behind {NOISY_TENANT}'s backlog "
        "(head-of-line blocking)",
        f"{before_first} of {NOISY_TENANT}'s reports started before the first quiet one",
    )


def with_keys(pool: ConnectionPool, checks: Checks) -> None:
    print(
        f"\n== With the tenant as concurrency key, at most {MAX_PER_TENANT} running per tenant =="
    )
    with pool.connection() as conn:
        set_concurrency_limit(conn, REPORTS_QUEUE, MAX_PER_TENANT)
    task_ids = enqueue_reports(pool, keyed=True)
    with workers(pool, REPORTS_QUEUE):
        wait_for_quiet_tenants(pool, task_ids)
    runs = runs_of(pool, task_ids)
    noisy_ran = sum(1 for run in runs if run.tenant == NOISY_TENANT)
    print("  The same backlog, enqueued in the same order. The claim walks the tenants")
    print("  round robin; once the quiet tenants are done, the demo stops the workers")
    waiting = NOISY_REPORTS - noisy_ran
    print(f"  ({NOISY_TENANT} ran {noisy_ran} reports; its other {waiting:,} wait their turns).")
    print_positions(runs)
    before_last = noisy_starts_before_quiet(runs, -1)
    print(f"  {NOISY_TENANT} had started {before_last} reports when the last quiet one started.")
    # Fair share: six tenants take turns, so the noisy one gets about a sixth of the
    # starts while the others have work. Five times that still tells the two apart.
    checks.check(
        before_last <= len(QUIET_TENANTS) * QUIET_REPORTS,
        "with keys, every quiet report started before "
        f"{NOISY_TENANT} had started {len(QUIET_TENANTS) * QUIET_REPORTS} of its {NOISY_REPORTS:,}",
        f"{before_last} had started",
    )
    most = most_running_at_once(runs)
    print("  Most reports running at once, from the runs' recorded start and finish times:")
    print("  " + ", ".join(f"{tenant} {most[tenant]}" for tenant in (NOISY_TENANT, *QUIET_TENANTS)))
    checks.check(
        max(most.values()) <= MAX_PER_TENANT,
        f"no tenant ever had more than {MAX_PER_TENANT} reports running at once",
        f"most at once: {most}",
    )


def rate_limited_payments(pool: ConnectionPool, checks: Checks) -> None:
    per = PAYMENT_API_PER_SECONDS
    print(
        f"\n== A payment API allows {PAYMENT_API_CALLS} calls per {per:g} s: {CHARGES} charges =="
    )
    with pool.connection() as conn, conn.transaction():
        set_rate_limit(conn, PAYMENT_API, PAYMENT_API_CALLS, per)
        task_ids = {
            enqueue(
                conn,
                "charge_payment",
                {"order_id": f"P-{number}", "amount_cents": 1200},
                queue=PAYMENTS_QUEUE,
                rate_limit=PAYMENT_API,
            )
            for number in range(1, CHARGES + 1)
        }
    with workers(pool, PAYMENTS_QUEUE):
        for task_id in task_ids:
            wait_for_task(pool, task_id, timeout=60)
    # A rate-limited task's started_at is the time of its grant (see ClaimTasks).
    with pool.connection() as conn:
        queries = Querier(conn)
        grants = sorted(
            task.started_at
            for task in queries.list_tasks()
            if task.id in task_ids and task.started_at is not None
        )
        charges = [charge for charge in queries.list_charges() if charge.task_id in task_ids]
    seconds = [(grant - grants[0]).total_seconds() for grant in grants]
    windows = Counter(int(second // per) for second in seconds)
    print(
        f"  {WORKERS} workers x {SLOTS} slots; the grants, by window of {per:g} s from the first:"
    )
    for window in sorted(windows):
        start = window * per
        print(f"  {start:4.1f} s to {start + per:4.1f} s: {windows[window]} charges granted")
    # Every window (s, s + per]: the fullest starts just before some grant.
    fullest = max(sum(1 for later in seconds if first <= later < first + per) for first in seconds)
    print(f"  The fullest window of {per:g} s, sliding over every grant: {fullest} grants.")
    checks.check(
        fullest <= PAYMENT_API_CALLS,
        f"no window of {per:g} s had more than {PAYMENT_API_CALLS} calls to the payment API",
        f"{fullest} in one window",
    )
    checks.check(
        fullest == PAYMENT_API_CALLS and len(charges) == CHARGES,
        f"the limit's full rate was reached, and each of the {CHARGES} orders charged once",
        f"fullest window {fullest}, {len(charges)} charges",
    )


def demonstrate() -> bool:
    checks = Checks()
    LESSON.reset()
    # Each worker: one connection per slot (the reports write their runs) and
    # three for its peers; and one for main.py.
    with LESSON.pool(max_size=WORKERS * (SLOTS + 3) + 1) as pool:
        without_keys(pool, checks)
        with_keys(pool, checks)
        rate_limited_payments(pool, checks)
    return checks.passed


if __name__ == "__main__":
    parser = argument_parser(__doc__ or "")
    configure_logging(parser.parse_args().verbose)
    run_lesson(demonstrate)
