"""The engine: what this lesson builds. Each module imports only the ones listed before it.

- `shared`: defaults, the finished statuses, NonRetryableError, the JSON rules;
- `crash_points`: the moments a test can have this process killed or frozen at;
- `transactions`: the limits every multi-statement engine transaction runs under;
- `schedules`: when a schedule ticks, and what becomes of the ticks it missed;
- `input_diff`: which keys of a call's input changed, for a non-determinism error;
- `versions`: the version of the code a worker runs, declared or derived;
- `client`: enqueue a task (now, later, once per idempotency key), cancel one, wait
  for its result, push an external event, set the flow-control limits and schedules,
  drain a code version and move its tasks to another;
- `statement_retries`: a durable operation's statements, tried again through a blip;
- `reruns`: replay a finished durable task, or fork it at an event;
- `attempts`, `claims`, `slots`, `periodic`, `wake_ups`: what the worker's parts share;
- `durable`: the context a durable function records its history through, patch
  markers included;
- `determinism_check`: replay the histories in flight against new code, reading only;
- `result_writer`, `heartbeat`, `sweeper`, `listener`, `poller`, `scheduler`: the
  worker's peers;
- `worker`: starts and stops the peers, and runs each attempt.
"""
