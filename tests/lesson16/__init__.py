"""Lesson 16: the durable AI agent."""
