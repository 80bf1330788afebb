"""Lesson 09: durable sleep; a sleeping or waiting durable task is suspended, and holds no slot.

Its shelves: `engine/` is what the lesson builds, `demo/` what `main.py` and the
tests run on it, `tools/` the commands around it; `sql/` holds the lesson's SQL
and `db/` the code sqlc generates from it.
"""
