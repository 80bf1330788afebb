"""Lesson 06: each event stores a key of its call, so a changed function is caught."""
