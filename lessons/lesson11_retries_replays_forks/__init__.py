"""Lesson 11: run a durable task again three ways (retry, replay, fork), and a tool to steer it."""
