"""Checks of lesson 16's exercises (the durable AI agent): a budget of model calls, and a
reminder for an approval that is slow to come."""
