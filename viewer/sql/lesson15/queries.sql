-- name: GetTaskContinuation :one
-- The task this one continues, and the one it continued as.
SELECT continued_from_task_id, continued_as_task_id, finished_at
FROM tasks
WHERE id = sqlc.arg(id);

-- name: ListTaskPartitions :many
-- The ranges of task ids there are, oldest first, with the first id of the
-- next task: a range below it is in use or full, one above it is ready ahead.
SELECT
    first_id, end_id, created_at, removing_since,
    next_task_id() AS next_id
FROM task_partitions
ORDER BY first_id;
