"""Lesson 11: run a durable task again three ways (retry, replay, fork), and a tool to steer it.

Its shelves: `engine/` is what the lesson builds, `demo/` what `main.py` and the
tests run on it, `tools/` the commands around it; `sql/` holds the lesson's SQL
and `db/` the code sqlc generates from it.
"""
