"""Lesson 16, the capstone: a durable AI agent on the course's engine, whose model calls
are recorded steps, whose tools are child tasks and whose approvals are events.

Its shelves: `engine/` is what the course built (lesson 15's, unchanged), `demo/` the
agent that `main.py` and the tests run on it, `tools/` the commands around it; `sql/`
holds the lesson's SQL and `db/` the code sqlc generates from it.
"""
