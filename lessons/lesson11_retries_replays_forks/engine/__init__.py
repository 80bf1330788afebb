"""The engine: what this lesson builds. Each module imports only the ones listed before it.

- `shared`: defaults, the finished statuses, NonRetryableError, the JSON rules;
- `crash_points`: the named moments at which a test may kill or freeze a worker;
- `transactions`: the limits on every multi-statement transaction;
- `client`: enqueue a task, wait for its result, push an external event;
- `reruns`: replay a finished durable task, or fork it at an event;
- `attempts`, `slots`, `periodic`, `wake_ups`: what the worker's parts share;
- `durable`: the durable context, a durable function's history;
- `result_writer`, `heartbeat`, `sweeper`, `listener`, `poller`: the worker's peers;
- `worker`: starts and stops the peers, and runs each attempt.
"""
