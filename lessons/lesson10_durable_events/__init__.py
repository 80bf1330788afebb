"""Lesson 10: durable events; a task waits for an approval or a webhook, holding no worker."""
