-- name: CreateTask :one
INSERT INTO tasks (queue, task_name, display_name, input)
VALUES (sqlc.arg(queue), sqlc.arg(task_name), sqlc.arg(display_name), sqlc.arg(input))
RETURNING *;

-- name: ClaimTasks :many
-- Take up to max_tasks of the oldest queued tasks and mark them running, in one
-- statement. FOR UPDATE locks the chosen rows until the UPDATE commits;
-- SKIP LOCKED makes a concurrent claim pass over rows another worker is taking
-- instead of waiting for them, so two workers never get the same task.
WITH claimable AS (
    SELECT queued.id
    FROM tasks AS queued
    WHERE queued.queue = sqlc.arg(queue) AND queued.status = 'queued'
    ORDER BY queued.id
    LIMIT sqlc.arg(max_tasks)
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks
SET status = 'running'
WHERE id IN (SELECT id FROM claimable)
RETURNING *;

-- name: CompleteTask :exec
UPDATE tasks
SET status = 'completed', output = sqlc.arg(output)
WHERE id = sqlc.arg(id);

-- name: FailTask :exec
UPDATE tasks
SET status = 'failed', output = sqlc.arg(error)
WHERE id = sqlc.arg(id);

-- name: GetTask :one
SELECT * FROM tasks
WHERE id = sqlc.arg(id);

-- name: ListTasks :many
SELECT * FROM tasks
ORDER BY id;

-- name: CountTasksByStatus :many
SELECT status, count(*) AS tasks
FROM tasks
GROUP BY status;
