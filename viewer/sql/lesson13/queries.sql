-- name: GetTaskCancellation :one
-- Who asked for the task's cancellation and why, and the key it was started
-- with and how many enqueues found it.
SELECT cancel_requested_at, cancelled_by, cancel_reason, idempotency_key, enqueues
FROM tasks
WHERE id = sqlc.arg(id);

-- name: ListSchedules :many
-- Each schedule, with its latest tick.
SELECT
    schedules.name, schedules.cron,
    extract(epoch FROM schedules.every)::double precision AS every_seconds,
    schedules.time_zone, schedules.task_name, schedules.catch_up::text AS catch_up,
    schedules.next_tick_at, latest.tick_at AS last_tick_at,
    latest.outcome::text AS last_outcome, latest.task_id AS last_task_id
FROM schedules
LEFT JOIN LATERAL (
    SELECT tick_at, outcome, task_id
    FROM schedule_ticks
    WHERE schedule_ticks.schedule = schedules.name
    ORDER BY tick_at DESC
    LIMIT 1
) AS latest ON true
ORDER BY schedules.name;
