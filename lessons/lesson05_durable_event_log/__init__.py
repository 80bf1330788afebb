"""Lesson 05: durable tasks keep an append-only history of what they did."""
