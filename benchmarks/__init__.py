"""Benchmarks of the course's engine, and of the peers it is compared with.

Scripts, not tests: each module with a `main` is run with `python -m benchmarks.<name>`
(`make bench`, `make bench-peers`). They measure on whatever server
`lessons.common.database` resolves (DATABASE_URL, else the embedded PostgreSQL), in
schemas of their own named `bench_*`, and never touch a lesson's schema.

The course's own modules here import without the peer libraries installed: only the
modules under `benchmarks/peers/` import PgQueuer or Procrastinate, and only when a
comparison runs.
"""
