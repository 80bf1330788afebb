"""Lesson 10: durable events; a task waits for an approval or a webhook, holding no worker.

Its shelves: `engine/` is what the lesson builds, `demo/` what `main.py` and the
tests run on it, `tools/` the commands around it; `sql/` holds the lesson's SQL
and `db/` the code sqlc generates from it.
"""
