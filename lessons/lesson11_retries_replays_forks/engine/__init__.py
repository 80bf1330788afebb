"""The engine: what this lesson builds. Each module imports only the ones listed before it.

- `shared`: defaults, the finished statuses, NonRetryableError, the JSON rules;
- `crash_points`: the moments a test can have this process killed or frozen at;
- `transactions`: the limits every multi-statement engine transaction runs under;
- `client`: enqueue a task, wait for its result, push an external event;
- `statement_retries`: a durable operation's statements, tried again through a blip;
- `reruns`: replay a finished durable task, or fork it at an event;
- `attempts`, `claims`, `slots`, `periodic`, `wake_ups`: what the worker's parts share;
- `durable`: the context a durable function records its history through;
- `result_writer`, `heartbeat`, `sweeper`, `listener`, `poller`: the worker's peers;
- `worker`: starts and stops the peers, and runs each attempt.
"""
