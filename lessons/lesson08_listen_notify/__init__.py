"""Lesson 08: LISTEN/NOTIFY wakes workers when work arrives, and parents when a child finishes."""
