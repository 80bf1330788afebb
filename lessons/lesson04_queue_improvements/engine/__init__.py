"""The engine: what this lesson builds. Each module imports only the ones listed before it.

- `shared`: defaults, the finished statuses, NonRetryableError, the JSON rules;
- `client`: enqueue a task, wait for its result;
- `attempts`, `claims`, `slots`, `periodic`: what the worker's parts share;
- `result_writer`, `heartbeat`, `sweeper`, `poller`: the worker's peers;
- `worker`: starts and stops the peers, and runs each attempt.
"""
