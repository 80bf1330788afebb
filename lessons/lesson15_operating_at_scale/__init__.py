"""Lesson 15: operating a Postgres engine at scale: retention in small batches, an index
for every foreign key, continue-as-new for long histories, and what a DBA watches.

Its shelves: `engine/` is what the lesson builds, `demo/` what `main.py` and the
tests run on it, `tools/` the commands around it; `sql/` holds the lesson's SQL
and `db/` the code sqlc generates from it.
"""
