"""Lesson 04: retries, priorities, timeouts, heartbeats and reassignment."""
