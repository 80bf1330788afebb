"""Lesson 13: stopping and starting on purpose: cancellation with compensation, idempotent
starts, delayed starts and schedules.

Its shelves: `engine/` is what the lesson builds, `demo/` what `main.py` and the
tests run on it, `tools/` the commands around it; `sql/` holds the lesson's SQL
and `db/` the code sqlc generates from it.
"""
