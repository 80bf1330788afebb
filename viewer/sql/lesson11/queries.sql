-- name: QueueDepths :many
-- How many tasks each queue holds in each status.
SELECT queue, status::text AS status, count(*)::bigint AS tasks
FROM tasks
GROUP BY queue, status
ORDER BY queue, status;

-- name: ListWorkers :many
-- The newest workers, with their lease as the database's clock sees it now.
SELECT
    id, name, queue, slots, started_at, last_heartbeat_at, lease_expires_at, stopped_at,
    (stopped_at IS NULL AND lease_expires_at > now())::boolean AS alive,
    extract(epoch FROM now() - last_heartbeat_at)::double precision AS seconds_since_heartbeat
FROM workers
ORDER BY id DESC
LIMIT sqlc.arg(max_workers);

-- name: ListRunningTasks :many
-- What each worker runs now (tasks_running_idx).
SELECT id, task_name, worker_id, attempt, started_at
FROM tasks
WHERE status = 'running'
ORDER BY worker_id, id
LIMIT sqlc.arg(max_tasks);

-- name: ListTasks :many
-- The newest tasks that pass the filters; a filter left NULL passes every task.
SELECT
    id, task_name, queue, status::text AS status, durable, attempt, parent_id,
    forked_from_task_id, forked_at_event, inserted_at
FROM tasks
WHERE (sqlc.narg(status)::text IS NULL OR status::text = sqlc.narg(status)::text)
  AND (sqlc.narg(task_name)::text IS NULL OR task_name = sqlc.narg(task_name)::text)
  AND (sqlc.narg(queue)::text IS NULL OR queue = sqlc.narg(queue)::text)
  AND (sqlc.narg(durable)::boolean IS NULL OR durable = sqlc.narg(durable)::boolean)
ORDER BY id DESC
LIMIT sqlc.arg(max_tasks);

-- name: GetTaskDetails :one
-- One task, with the name of the worker that runs (or last ran) it.
SELECT
    task.id, task.task_name, task.queue, task.status::text AS status, task.durable,
    task.input, task.output, task.priority, task.attempt, task.max_retries,
    task.infrastructure_attempts, task.attempts_before_replay, task.inserted_at,
    task.started_at, task.wake_at, task.parent_id, task.forked_from_task_id,
    task.forked_at_event, task.worker_id, worker.name AS worker_name
FROM tasks AS task
LEFT JOIN workers AS worker ON worker.id = task.worker_id
WHERE task.id = sqlc.arg(id);

-- name: ListTimeline :many
-- A task's newest max_events events, newest first (a live page reads them at
-- each change, and a long history would be read whole each time): each with
-- its child's status and, for a wait, the key it waits on, how it ended and
-- what it received.
SELECT
    event.event_number, event.kind::text AS kind, event.name, event.attempt,
    event.recorded_at, event.wake_at, event.input, event.output,
    event.copied_from_task_id, event.child_task_id, child.status::text AS child_status,
    wait.key AS wait_key, wait.timeout_at AS wait_timeout_at, wait.ended_at AS wait_ended_at,
    wait.external_event_id AS wait_event_id, wait.payload AS wait_payload
FROM task_events AS event
LEFT JOIN tasks AS child ON child.id = event.child_task_id
LEFT JOIN event_waits AS wait
    ON wait.task_id = event.task_id AND wait.event_number = event.event_number
WHERE event.task_id = sqlc.arg(task_id)
ORDER BY event.event_number DESC
LIMIT sqlc.arg(max_events);

-- name: ListDescendants :many
-- The task's children, their children and so on, as the histories name them
-- (task_events.child_task_id, found by the primary key), depth first; at most
-- max_tasks of them.
WITH RECURSIVE tree AS (
    SELECT
        event.child_task_id AS id, 1 AS depth, event.event_number,
        ARRAY[event.event_number] AS path
    FROM task_events AS event
    WHERE event.task_id = sqlc.arg(task_id) AND event.child_task_id IS NOT NULL
    UNION ALL
    SELECT event.child_task_id, tree.depth + 1, event.event_number,
        tree.path || event.event_number
    FROM tree
    JOIN task_events AS event ON event.task_id = tree.id
    WHERE event.child_task_id IS NOT NULL AND tree.depth < 20
)
SELECT
    tree.id, tree.depth::integer AS depth, tree.event_number, task.task_name,
    task.status::text AS status, task.attempt
FROM tree
JOIN tasks AS task ON task.id = tree.id
ORDER BY tree.path
LIMIT sqlc.arg(max_tasks);

-- name: ListForkTree :many
-- The task's forks, their forks and so on, each with the event it was forked
-- at (tasks_forked_from_idx), depth first; at most max_tasks of them.
WITH RECURSIVE tree AS (
    SELECT id, forked_at_event, 1 AS depth, ARRAY[id] AS path
    FROM tasks
    WHERE forked_from_task_id = sqlc.arg(task_id)::bigint
    UNION ALL
    SELECT fork.id, fork.forked_at_event, tree.depth + 1, tree.path || fork.id
    FROM tree
    JOIN tasks AS fork ON fork.forked_from_task_id = tree.id
    WHERE tree.depth < 20
)
SELECT
    tree.id, tree.depth::integer AS depth, tree.forked_at_event::integer AS forked_at_event,
    task.task_name, task.status::text AS status, task.attempt
FROM tree
JOIN tasks AS task ON task.id = tree.id
ORDER BY tree.path
LIMIT sqlc.arg(max_tasks);
