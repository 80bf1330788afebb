"""The engine: what this lesson builds. Each module imports only the ones listed before it.

- `shared`: defaults, the finished statuses, the JSON rules;
- `client`: enqueue a task, wait for its result;
- `slots`: how many tasks the worker runs at once;
- `poller`: claims tasks for the free slots;
- `worker`: starts and stops the poller, and runs each task.
"""
