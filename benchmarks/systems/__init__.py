"""The systems measured: the course's lessons, pgbench, and the peers.

Lessons 04 and 08 as queue systems, lessons 07, 08 and 09's durable orders, the
pgbench ceiling of lesson 04's SQL, and in `peers/` PgQueuer, Procrastinate and DBOS.
Each runs its own code unchanged (a lesson's own `WorkerProcess`, a peer's own API)
and answers the harness's questions. Only `peers/` imports the peer libraries.
"""
