-- name: CreateTask :one
-- Timeouts arrive in seconds (NULL: no limit); the schedule deadline is counted
-- from now, on the database's clock, like every other time in this schema.
INSERT INTO tasks (
    queue, task_name, display_name, input,
    priority, max_retries, execution_timeout, schedule_deadline, durable
)
VALUES (
    sqlc.arg(queue), sqlc.arg(task_name), sqlc.arg(display_name), sqlc.arg(input),
    sqlc.arg(priority), sqlc.arg(max_retries),
    sqlc.narg(execution_timeout_seconds)::double precision * interval '1 second',
    now() + sqlc.narg(schedule_timeout_seconds)::double precision * interval '1 second',
    sqlc.arg(durable)
)
RETURNING *;

-- name: ClaimTasks :many
-- Take up to max_tasks queued tasks, highest priority first and oldest first
-- within a priority, and start a new attempt of each on this worker, in one
-- statement. FOR UPDATE locks the chosen rows until the UPDATE commits;
-- SKIP LOCKED makes a concurrent claim pass over rows another worker is taking
-- instead of waiting for them, so two workers never get the same task.
--
-- Only tasks this worker has a function for: during a rolling deploy, old and
-- new workers share a queue, and an old worker must leave a new kind of task
-- to a new worker rather than fail it. A durable task needs a durable function
-- of its name, a plain task a plain one: two lists, one for each kind.
WITH claimable AS (
    SELECT queued.id
    FROM tasks AS queued
    WHERE queued.queue = sqlc.arg(queue) AND queued.status = 'queued'
      AND queued.task_name = ANY(
          CASE WHEN queued.durable THEN sqlc.arg(durable_task_names)::text[]
               ELSE sqlc.arg(task_names)::text[] END
      )
      -- Too late to start: the schedule-timeout sweep will fail it.
      AND (queued.schedule_deadline IS NULL OR queued.schedule_deadline > now())
    ORDER BY queued.priority DESC, queued.id
    LIMIT sqlc.arg(max_tasks)
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks
SET status = 'running',
    attempt = attempt + 1,
    worker_id = sqlc.arg(worker_id)::bigint,
    started_at = now(),
    schedule_deadline = NULL
WHERE id IN (SELECT id FROM claimable)
RETURNING *;

-- name: FinishAttempts :many
-- Record how attempts ended, many in one statement: completed with an output,
-- or failed with an error document, in which case the task goes back to the
-- queue when the error is retryable and retries are left. Outputs arrive as
-- JSON text.
--
-- An attempt ended by the infrastructure (infrastructure: the database stayed
-- out of reach) goes back to the queue, and is counted in
-- infrastructure_attempts, which every retry rule subtracts: it costs the
-- task none of its retries.
--
-- Fenced: a row changes only while this worker still owns that attempt, that
-- is, the task is running, on this worker, at this attempt. A worker that was
-- presumed dead and comes back cannot overwrite the work of the worker that
-- took over. The rows returned are the attempts recorded; any other was
-- rejected.
UPDATE tasks
SET status = CASE
        WHEN finished.succeeded THEN 'completed'::task_status
        WHEN finished.retryable
            AND tasks.attempt - tasks.infrastructure_attempts - finished.infrastructure::integer
                <= tasks.max_retries
            THEN 'queued'::task_status
        ELSE 'failed'::task_status
    END,
    infrastructure_attempts = tasks.infrastructure_attempts + finished.infrastructure::integer,
    output = finished.output::jsonb
FROM (
    -- Parallel arrays, one element per attempt, turned into rows.
    SELECT
        unnest(sqlc.arg(ids)::bigint[]) AS id,
        unnest(sqlc.arg(attempts)::integer[]) AS attempt,
        unnest(sqlc.arg(succeeded)::boolean[]) AS succeeded,
        unnest(sqlc.arg(retryable)::boolean[]) AS retryable,
        unnest(sqlc.arg(infrastructure)::boolean[]) AS infrastructure,
        unnest(sqlc.arg(outputs)::text[]) AS output
) AS finished
WHERE tasks.id = finished.id
  AND tasks.attempt = finished.attempt
  AND tasks.worker_id = sqlc.arg(worker_id)::bigint
  AND tasks.status = 'running'
RETURNING tasks.id, tasks.attempt, tasks.status;

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

-- name: RegisterWorker :one
-- The worker's first lease starts now, on the database's clock.
INSERT INTO workers (name, queue, slots, lease_seconds, lease_expires_at)
VALUES (
    sqlc.arg(name), sqlc.arg(queue), sqlc.arg(slots), sqlc.arg(lease_seconds),
    now() + sqlc.arg(lease_seconds)::double precision * interval '1 second'
)
RETURNING *;

-- name: RecordHeartbeat :one
-- Extend this worker's lease by its own length, from now. Returns the time of
-- the beat, on the database's clock.
UPDATE workers
SET last_heartbeat_at = now(),
    lease_expires_at = now() + lease_seconds * interval '1 second'
WHERE id = sqlc.arg(id)
RETURNING last_heartbeat_at;

-- name: MarkWorkerStopped :exec
UPDATE workers
SET stopped_at = now()
WHERE id = sqlc.arg(id);

-- name: ListOwnedAttempts :many
-- (started_at tells one claim of an attempt from another: see ReleaseLostClaims.)
-- The attempts this worker still owns. One it is running but that is missing
-- here was taken from it (timed out, or reassigned while it looked dead).
SELECT id, attempt, started_at
FROM tasks
WHERE worker_id = sqlc.arg(worker_id)::bigint AND status = 'running';

-- name: ReleaseLostClaims :many
-- Give back to the queue the attempts this worker owns but never received:
-- their claim committed, and its answer was lost on the way (see claims.py).
-- The attempt never began; it is counted as ended by the infrastructure, so it
-- costs the task none of its retries. Fenced like FinishAttempts, and on the
-- claim itself: only while this worker still owns that attempt, as that claim
-- left it (its started_at: from lesson 09 on, resuming a suspended task takes
-- the same attempt up again, later).
UPDATE tasks
SET status = 'queued',
    infrastructure_attempts = tasks.infrastructure_attempts + 1,
    output = jsonb_build_object('error', jsonb_build_object(
        'type', 'ClaimLost',
        'message', format(
            'worker %s claimed attempt %s, and the claim''s answer never reached it',
            tasks.worker_id, tasks.attempt
        )
    ))
FROM (
    SELECT
        unnest(sqlc.arg(ids)::bigint[]) AS id,
        unnest(sqlc.arg(attempts)::integer[]) AS attempt,
        unnest(sqlc.arg(started_ats)::timestamptz[]) AS started_at
) AS lost
WHERE tasks.id = lost.id
  AND tasks.attempt = lost.attempt
  AND tasks.started_at = lost.started_at
  AND tasks.worker_id = sqlc.arg(worker_id)::bigint
  AND tasks.status = 'running'
RETURNING tasks.id, tasks.attempt;

-- name: TimeOutQueuedTasks :many
-- Fail up to max_tasks of the tasks that were not started by their schedule
-- deadline, the most overdue first.
--
-- This sweep and the next two are run by every live worker's sweeper. Each is
-- one statement that locks the rows it changes with SKIP LOCKED, so two workers
-- sweeping at once never handle the same task twice, and a row being claimed or
-- finished right now is left for the next sweep. Each changes max_tasks rows at
-- most: after a long outage a sweep may find a hundred thousand tasks to end,
-- and one statement for all of them would lock them all, and make every claim
-- wait for its commit, for seconds. The sweeper repeats a full batch at once.
WITH expired AS (
    SELECT waiting.id
    FROM tasks AS waiting
    WHERE waiting.status = 'queued' AND waiting.schedule_deadline <= now()
    ORDER BY waiting.schedule_deadline
    LIMIT sqlc.arg(max_tasks)
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks
SET status = 'failed',
    output = jsonb_build_object('error', jsonb_build_object(
        'type', 'ScheduleTimeout',
        'message', format(
            'not started within %s s of being enqueued',
            extract(epoch FROM schedule_deadline - inserted_at)::double precision
        )
    ))
WHERE id IN (SELECT id FROM expired)
RETURNING *;

-- name: TimeOutRunningTasks :many
-- End up to max_tasks of the attempts that have run longer than their task's
-- execution timeout: back to the queue when retries are left, failed otherwise.
WITH overdue AS (
    SELECT running.id
    FROM tasks AS running
    WHERE running.status = 'running'
      AND running.started_at + running.execution_timeout <= now()
    ORDER BY running.id
    LIMIT sqlc.arg(max_tasks)
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks
SET status = CASE
        WHEN attempt - infrastructure_attempts <= max_retries THEN 'queued'::task_status
        ELSE 'failed'::task_status
    END,
    output = jsonb_build_object('error', jsonb_build_object(
        'type', 'ExecutionTimeout',
        'message', format(
            'attempt %s ran longer than its execution timeout of %s s',
            attempt,
            extract(epoch FROM execution_timeout)::double precision
        )
    ))
WHERE id IN (SELECT id FROM overdue)
RETURNING *;

-- name: ReassignTasksOfLostWorkers :many
-- End up to max_tasks of the attempts of workers whose lease has expired: back
-- to the queue when retries are left, failed otherwise. A task that kills every
-- worker that runs it must not kill them forever, so a lost attempt counts like
-- any failed one.
--
-- An expired lease is evidence of death only if the worker could have renewed
-- it. When the database was out of reach (a restart, a failover, a network
-- outage), every lease expired at once, and the first worker back must not
-- take the tasks of the others, alive and about to beat again. So the sweeper
-- passes healthy_since, when its own unbroken run of heartbeats began, and a
-- worker is taken for dead only once the sweeper has been in touch with the
-- database for a whole lease of that worker: time enough for it to renew.
WITH lost AS (
    SELECT running.id
    FROM tasks AS running
    JOIN workers ON workers.id = running.worker_id
    WHERE running.status = 'running'
      AND workers.lease_expires_at < now()
      AND sqlc.arg(healthy_since)::timestamptz
          <= now() - workers.lease_seconds * interval '1 second'
    ORDER BY running.id
    LIMIT sqlc.arg(max_tasks)
    FOR UPDATE OF running SKIP LOCKED
)
UPDATE tasks
SET status = CASE
        WHEN attempt - infrastructure_attempts <= max_retries THEN 'queued'::task_status
        ELSE 'failed'::task_status
    END,
    output = jsonb_build_object('error', jsonb_build_object(
        'type', 'WorkerLost',
        'message', format('worker %s stopped heartbeating during attempt %s', worker_id, attempt)
    ))
WHERE id IN (SELECT id FROM lost)
RETURNING *;

-- name: AppendEvent :one
-- Add the next event to a durable task's history.
--
-- Fenced, like FinishAttempts: the row is written only while this worker still
-- owns this attempt. No row comes back when it does not, and the durable
-- function must stop: another worker has taken the task over, and is writing
-- the history now.
--
-- FOR SHARE matters. Without it the check would read the task without locking
-- it, and a sweep could give the attempt away between the check and our
-- commit: the event would land in the history of an attempt that is no longer
-- ours. With the lock, a sweep that comes while the event is being written
-- skips the task (SKIP LOCKED) until its next round, and one that came first
-- makes the check fail.
INSERT INTO task_events (
    task_id, event_number, kind, name, input, key, output, child_task_id, attempt
)
SELECT
    sqlc.arg(task_id)::bigint,
    sqlc.arg(event_number)::integer,
    sqlc.arg(kind)::event_kind,
    sqlc.arg(name)::text,
    sqlc.arg(input)::jsonb,
    sqlc.arg(key)::text,
    sqlc.narg(output)::jsonb,
    sqlc.narg(child_task_id)::bigint,
    sqlc.arg(attempt)::integer
WHERE EXISTS (
    SELECT 1
    FROM tasks
    WHERE tasks.id = sqlc.arg(task_id)::bigint
      AND tasks.attempt = sqlc.arg(attempt)::integer
      AND tasks.worker_id = sqlc.arg(worker_id)::bigint
      AND tasks.status = 'running'
    FOR SHARE
)
RETURNING *;

-- name: ListTaskEvents :many
-- A durable task's history, in the order it was written.
SELECT * FROM task_events
WHERE task_id = sqlc.arg(task_id)
ORDER BY event_number;

-- ---------------------------------------------------------------------------
-- The demonstration's queries: what the example's task functions do to its
-- own data, not the engine's.
-- ---------------------------------------------------------------------------

-- name: RecordCharge :one
-- Charge, unless this task has charged already: then no row comes back, and
-- GetChargeOfTask finds the charge made by the task's earlier run.
INSERT INTO charges (order_id, amount_cents, task_id)
VALUES (sqlc.arg(order_id), sqlc.arg(amount_cents), sqlc.arg(task_id))
ON CONFLICT (task_id) DO NOTHING
RETURNING *;

-- name: GetChargeOfTask :one
SELECT * FROM charges
WHERE task_id = sqlc.arg(task_id);

-- name: RecordEmail :one
-- Send, unless this task has sent its email already (see RecordCharge).
INSERT INTO emails (order_id, recipient, subject, task_id)
VALUES (sqlc.arg(order_id), sqlc.arg(recipient), sqlc.arg(subject), sqlc.arg(task_id))
ON CONFLICT (task_id) DO NOTHING
RETURNING *;

-- name: GetEmailOfTask :one
SELECT * FROM emails
WHERE task_id = sqlc.arg(task_id);

-- name: ListCharges :many
SELECT * FROM charges
ORDER BY id;

-- name: ListEmails :many
SELECT * FROM emails
ORDER BY id;
