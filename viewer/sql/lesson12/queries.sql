-- name: ListConcurrencyKeys :many
-- The busiest keys: each key's running count (the row a claim locks), its
-- queue's limit, and how many of its tasks are queued (tasks_keyed_queued_idx).
SELECT
    keys.queue, keys.key, keys.running, limits.max_per_key,
    limits.at_limit::text AS at_limit,
    (
        SELECT count(*) FROM tasks
        WHERE tasks.queue = keys.queue AND tasks.concurrency_key = keys.key
          AND tasks.status = 'queued'
    )::bigint AS queued
FROM concurrency_keys AS keys
JOIN concurrency_limits AS limits ON limits.queue = keys.queue
ORDER BY keys.running DESC, queued DESC, keys.queue, keys.key
LIMIT sqlc.arg(max_keys);

-- name: ListRateLimits :many
-- Each rate limit, with the units granted in its window as of now.
SELECT
    name, units, extract(epoch FROM per)::double precision AS per_seconds,
    (
        SELECT count(*) FROM unnest(granted_at) AS granted
        WHERE granted > now() - per
    )::integer AS units_in_window
FROM rate_limits
ORDER BY name;

-- name: GetTaskFlowControl :one
SELECT concurrency_key, rate_limit, rate_units
FROM tasks
WHERE id = sqlc.arg(id);
