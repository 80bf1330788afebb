"""Lesson 14: changing code safely: patch markers, pinned worker versions, and a
determinism check that replays the histories in flight against new code before a deploy.

Its shelves: `engine/` is what the lesson builds, `demo/` what `main.py` and the
tests run on it, `tools/` the commands around it; `sql/` holds the lesson's SQL
and `db/` the code sqlc generates from it.
"""
