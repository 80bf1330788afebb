"""Lesson 12's tests."""
