"""The tools: commands around the engine (a worker in a process of its own, push_event)."""
