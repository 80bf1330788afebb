"""Benchmarks of the course's engine, and of the peers it is compared with.

Scripts, not tests. The entry points are the modules at the top, each run with
`python -m benchmarks.<name>`: `queue_burn_down` (`make bench`), `compare`
(`make bench-peers`), and two lessons' own, `durable_orders` (lesson 07) and
`notify_latency` (lesson 08). Below them, by role:

- `systems/`: what is measured, the course's lessons, pgbench, and in `systems/peers/`
  PgQueuer, Procrastinate and DBOS;
- `harness/`: how it is measured, child processes and the producer, the cases and
  the plan that runs them, the measurements, vacuum settings, the machine's description;
- `report/`: what is written, tables, the context of every figure, the curriculum's
  targets and the chart.

Systems and the report import the harness, never each other; nothing imports an entry
point. They measure on whatever server `lessons.common.database` resolves
(DATABASE_URL, else the embedded PostgreSQL), in schemas of their own named `bench_*`,
and never touch a lesson's schema. The course's own modules here import without the
peer libraries installed: only `systems/peers/` imports PgQueuer, Procrastinate and
DBOS (and `report/chart.py` matplotlib), and only when a comparison runs.
"""
