"""Lesson 02: a simple task queue on PostgreSQL."""
