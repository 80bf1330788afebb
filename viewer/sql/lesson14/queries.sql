-- name: GetTaskVersion :one
-- The version of the code a durable task runs on (NULL until it first starts).
SELECT code_version
FROM tasks
WHERE id = sqlc.arg(id);

-- name: ListWorkerVersions :many
-- The version each of the newest workers runs, and whether it is draining.
SELECT
    workers.id, workers.code_version,
    (draining.code_version IS NOT NULL)::boolean AS draining
FROM workers
LEFT JOIN draining_versions AS draining ON draining.code_version = workers.code_version
ORDER BY workers.id DESC
LIMIT sqlc.arg(max_workers);
