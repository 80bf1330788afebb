"""The tools: commands around the engine (a worker in a process of its own, the history
tool, push_event)."""
