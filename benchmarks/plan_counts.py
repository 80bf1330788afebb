"""Issue 21: how often the server plans each statement of a lesson's durable orders.

    python -m benchmarks.plan_counts [--orders N] [LESSON ...]

Each lesson's orders (lesson 09's order on the lesson's own engine, as in `make
bench-peers`: 2 worker processes x 20 slots) run on the throwaway counting server of
`order_costs.py`, with pg_stat_statements counting plans (`track_planning`); then the
statements are listed by planning time: calls, plans, planning and executor seconds,
shared buffers a call. Where `plans` is close to `calls`, the statement is planned at
every call (lesson 15's README, "Partitions and the plan cache").
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import psycopg

from .harness.counting_server import CountingServer
from .harness.durable_system import DurableLayout
from .harness.vacuum import Vacuum
from .systems.lesson_engine import LessonEngine
from .systems.lesson_orders import EngineOrders

STATEMENTS = """
SELECT calls, plans, total_plan_time / 1000, total_exec_time / 1000,
       shared_blks_hit::float8 / calls,
       left(regexp_replace(query, '\\s+', ' ', 'g'), 80)
FROM pg_stat_statements
WHERE calls >= %s
ORDER BY total_plan_time DESC
LIMIT 15
"""


def count_plans(server: CountingServer, lesson: str, orders: int) -> list[str]:
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET pg_stat_statements.track_planning = on")
        conn.execute("SELECT pg_reload_conf()")
        conn.execute("SELECT pg_stat_statements_reset()")
    layout = DurableLayout(processes=2, concurrency=20, poll_interval=0.01)
    run = EngineOrders(LessonEngine.named(lesson)).run(orders, layout, Vacuum.STOCK)
    lines = [
        f"**{lesson}**: {orders} orders, {orders / run.seconds:.0f} orders/s",
        "",
        "| calls | plans | planning s | executor s | buffers a call | statement |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    with psycopg.connect(server.url, autocommit=True) as conn:
        for calls, plans, planning, executing, buffers, query in conn.execute(
            STATEMENTS, (orders // 10,)
        ):
            lines.append(
                f"| {calls} | {plans} | {planning:.2f} | {executing:.2f} | {buffers:.1f} "
                f"| `{query}` |"
            )
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument(
        "lessons", nargs="*", default=["lesson09_durable_sleep", "lesson15_operating_at_scale"]
    )
    options = parser.parse_args(argv)
    with CountingServer.started() as server:
        # The worker processes copy the environment: they connect to this server.
        os.environ["DATABASE_URL"] = server.url
        for lesson in options.lessons:
            print("\n".join(count_plans(server, lesson, options.orders)), end="\n\n", flush=True)


if __name__ == "__main__":
    main()
