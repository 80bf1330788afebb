"""Lesson 03: limiting how many tasks a worker runs at once."""
