"""The harness: how every system is measured, whichever it is.

Child processes and the producer, the cases (burn-down, latency, durable work) and the
plan that runs them round-robin under each vacuum setting, the measurements on the
database's clock, the rows they fill, the vacuum settings, and the description of the
machine and server. Nothing here knows a particular system: each one answers the
questions of `queue_system.py` or `durable_system.py`.
"""
