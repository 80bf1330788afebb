-- name: CreateTask :one
-- Timeouts arrive in seconds (NULL: no limit); the schedule deadline is counted
-- from now, on the database's clock, like every other time in this schema.
-- The insert notifies the queue's channel (a trigger, see schema.sql).
INSERT INTO tasks (
    queue, task_name, display_name, input,
    priority, max_retries, execution_timeout, schedule_deadline, durable, parent_id
)
VALUES (
    sqlc.arg(queue), sqlc.arg(task_name), sqlc.arg(display_name), sqlc.arg(input),
    sqlc.arg(priority), sqlc.arg(max_retries),
    sqlc.narg(execution_timeout_seconds)::double precision * interval '1 second',
    now() + sqlc.narg(schedule_timeout_seconds)::double precision * interval '1 second',
    sqlc.arg(durable), sqlc.narg(parent_id)
)
RETURNING *;

-- name: ClaimTasks :many
-- Take up to max_tasks tasks, highest priority first and oldest first within a
-- priority, and run each on this worker, in one statement. Two kinds of task
-- can be taken: a queued one, which starts a new attempt, and a suspended one
-- whose wake-up time has come, which goes on with the attempt it suspended
-- (suspending is not failing: it costs no retry). Each kind is found by its
-- own index, up to max_tasks of each; the best max_tasks of both are taken.
-- FOR UPDATE locks the chosen rows until the UPDATE commits; SKIP LOCKED makes
-- a concurrent claim pass over rows another worker is taking instead of
-- waiting for them, so two workers never get the same task.
--
-- Only tasks this worker has a function for (a durable function, for a durable
-- task), to start or to resume: during a rolling deploy, old and new workers
-- share a queue, and an old worker must leave a new kind of task to a new
-- worker rather than fail it.
WITH to_start AS (
    SELECT queued.id, queued.priority
    FROM tasks AS queued
    WHERE queued.queue = sqlc.arg(queue) AND queued.status = 'queued'
      AND queued.task_name = ANY(CASE
          WHEN queued.durable THEN sqlc.arg(durable_task_names)::text[]
          ELSE sqlc.arg(task_names)::text[]
      END)
      -- Too late to start: the schedule-timeout sweep will fail it.
      AND (queued.schedule_deadline IS NULL OR queued.schedule_deadline > now())
    ORDER BY queued.priority DESC, queued.id
    LIMIT sqlc.arg(max_tasks)
    FOR UPDATE SKIP LOCKED
),
to_resume AS (
    SELECT suspended.id, suspended.priority
    FROM tasks AS suspended
    WHERE suspended.queue = sqlc.arg(queue) AND suspended.status = 'suspended'
      AND suspended.wake_at <= now()
      AND suspended.task_name = ANY(CASE
          WHEN suspended.durable THEN sqlc.arg(durable_task_names)::text[]
          ELSE sqlc.arg(task_names)::text[]
      END)
    ORDER BY suspended.wake_at
    LIMIT sqlc.arg(max_tasks)
    FOR UPDATE SKIP LOCKED
),
claimable AS (
    SELECT id, priority FROM to_start
    UNION ALL
    SELECT id, priority FROM to_resume
    ORDER BY priority DESC, id
    LIMIT sqlc.arg(max_tasks)
)
UPDATE tasks
SET status = 'running',
    -- On the right of SET, status is the value before this UPDATE.
    attempt = CASE WHEN status = 'suspended' THEN attempt ELSE attempt + 1 END,
    worker_id = sqlc.arg(worker_id)::bigint,
    started_at = now(),
    schedule_deadline = NULL,
    wake_at = NULL
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
RETURNING tasks.id, tasks.attempt, tasks.status, tasks.parent_id;

-- name: SuspendTask :one
-- End this run of an attempt without ending the attempt: the task leaves its
-- worker, and waits until wake_at (NULL: until a child of it finishes). The
-- claim takes it again when that time comes, and the attempt goes on.
--
-- Fenced, like FinishAttempts: only while this worker still owns the attempt.
-- No row comes back when it does not.
UPDATE tasks
SET status = 'suspended',
    wake_at = sqlc.narg(wake_at)
WHERE id = sqlc.arg(id)
  AND attempt = sqlc.arg(attempt)
  AND worker_id = sqlc.arg(worker_id)::bigint
  AND status = 'running'
RETURNING *;

-- name: WakeTasks :many
-- Make these suspended tasks runnable now: wake_at becomes now (or stays, if
-- it is sooner). They are the parents of children that just finished, and
-- this runs in the transaction that finished the children, so that no child
-- finishes without waking its parent. A task woken while it waits for
-- something else (a sleep, another child) replays, finds it is still waiting,
-- and suspends again: a wake-up says "look again", not "it is over". The new
-- wake_at notifies the task's queue (a trigger, see schema.sql).
--
-- Every one of these rows is locked first, whatever its status: a parent that
-- is suspending right now holds its row until it commits, and this waits for
-- it, and then reads the status it committed (FOR UPDATE reads the newest
-- version of a row it waited for). Reading the status without the lock would
-- see "running", pass the parent over, and leave it suspended for ever (see
-- wait_for_child in durable.py). The rows are locked in the order of their
-- ids, so two transactions that wake the same tasks never wait for each other
-- in a circle (deadlock).
WITH locked AS (
    SELECT id, status
    FROM tasks
    WHERE id = ANY(sqlc.arg(ids)::bigint[])
    ORDER BY id
    FOR UPDATE
)
UPDATE tasks
SET wake_at = least(tasks.wake_at, now())
FROM locked
WHERE tasks.id = locked.id AND locked.status = 'suspended'
RETURNING tasks.id, tasks.queue;

-- name: SecondsUntilNextWakeUp :one
-- How long until the next suspended task of this queue is due, on the
-- database's clock: 0 when one is due already, and at most max_seconds (also
-- when none waits for a time: least() ignores NULL).
--
-- Only the tasks this worker could claim: one whose function it does not have
-- (a rolling deploy, a rollback) is due for ever as far as this worker is
-- concerned, and would have its poller claim in a loop, finding nothing.
SELECT greatest(0, least(
    sqlc.arg(max_seconds)::double precision,
    extract(epoch FROM min(wake_at) - now())::double precision
))::double precision AS seconds
FROM tasks
WHERE queue = sqlc.arg(queue) AND status = 'suspended'
  AND task_name = ANY(CASE
      WHEN durable THEN sqlc.arg(durable_task_names)::text[]
      ELSE sqlc.arg(task_names)::text[]
  END);

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
-- Add the next event to a durable task's history. A sleep's wake-up time, or a
-- wait's deadline, is computed here, from the database's clock:
-- now + wake_after_seconds (NULL for every other kind of event).
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
--
-- Running, or suspended by this very transaction: ctx.call suspends its task
-- before it creates the child and records it (see _spawn_and_suspend in
-- durable.py), and that fenced SuspendTask, whose row lock this transaction
-- holds until it ends, proved the attempt ours. (xmin is the transaction that
-- wrote the row's current version; an earlier suspension is not ours to add to.)
INSERT INTO task_events (
    task_id, event_number, kind, name, input, key, output, child_task_id, wake_at, attempt
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
    now() + sqlc.narg(wake_after_seconds)::double precision * interval '1 second',
    sqlc.arg(attempt)::integer
WHERE EXISTS (
    SELECT 1
    FROM tasks
    WHERE tasks.id = sqlc.arg(task_id)::bigint
      AND tasks.attempt = sqlc.arg(attempt)::integer
      AND tasks.worker_id = sqlc.arg(worker_id)::bigint
      AND (
          tasks.status = 'running'
          OR (tasks.status = 'suspended' AND tasks.xmin = pg_current_xact_id()::xid)
      )
    FOR SHARE
)
RETURNING *;

-- name: TimeOutChildWait :one
-- End a child wait (wait_for_child with a timeout) whose deadline came before
-- its child finished: its event's output becomes {"timed_out": true}, once
-- (the only change an event ever gets), and every later run replays the
-- timeout, whenever the child finishes. No row comes back for a wait already
-- ended.
--
-- Fenced, like AppendEvent, and FOR SHARE for the same reason: only while this
-- worker still owns the attempt.
UPDATE task_events
SET output = '{"timed_out": true}'::jsonb
WHERE task_events.task_id = sqlc.arg(task_id)::bigint
  AND task_events.event_number = sqlc.arg(event_number)::integer
  AND task_events.kind = 'child_wait'
  AND task_events.output IS NULL
  AND EXISTS (
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

-- name: ListTaskHistoryWithChildren :many
-- A durable task's history, in the order it was written, as a run loads it:
-- each child event with its child's status and output. A finished child is
-- final (a child is not durable, and nothing runs it again), so the run
-- replays its wait from this one read, without a statement of its own.
SELECT
    sqlc.embed(task_events),
    child.status AS child_status,
    child.output AS child_output
FROM task_events
LEFT JOIN tasks AS child ON child.id = task_events.child_task_id
WHERE task_events.task_id = sqlc.arg(task_id)
ORDER BY task_events.event_number;

-- name: NotificationChannels :one
-- The channels this schema's triggers notify (see schema.sql), named after the
-- schema: a listener must LISTEN on exactly these names.
SELECT
    current_schema()::text AS schema_name,
    (current_schema() || '.task_queued')::text AS task_queued;

-- name: OpenWait :exec
-- Record that this wait is open, in the transaction that appends its event.
INSERT INTO event_waits (task_id, event_number, key, timeout_at)
VALUES (sqlc.arg(task_id), sqlc.arg(event_number), sqlc.arg(key), sqlc.arg(timeout_at));

-- name: GetWaitForShare :one
-- A wait, with the payload of the event that ended it, if one did. Locked until
-- this transaction ends, so that no push can end it between the waiting task
-- looking at it and suspending: the push waits, then finds the task suspended,
-- and wakes it (the lost wake-up of lesson 09, see WakeTasks).
--
-- Everything comes from the locked row. A look that waits for a push ending
-- the wait reads, once the push commits, the newest version of the row it
-- locked, but every other table as its snapshot saw it, from before the push
-- (READ COMMITTED): joined to external_events, it found the wait ended by an
-- event it could not see, and returned no payload, where a replay returned it.
SELECT task_id, event_number, key, timeout_at, external_event_id, ended_at, payload
FROM event_waits
WHERE task_id = sqlc.arg(task_id)
  AND event_number = sqlc.arg(event_number)
FOR SHARE;

-- name: TimeOutWait :one
-- End an open wait whose deadline has passed, with no event. Fenced, like
-- AppendEvent: only the worker that owns the waiting task's attempt ends it.
UPDATE event_waits
SET ended_at = now()
WHERE event_waits.task_id = sqlc.arg(task_id)::bigint
  AND event_waits.event_number = sqlc.arg(event_number)::integer
  AND event_waits.ended_at IS NULL
  AND EXISTS (
      SELECT 1
      FROM tasks
      WHERE tasks.id = sqlc.arg(task_id)::bigint
        AND tasks.attempt = sqlc.arg(attempt)::integer
        AND tasks.worker_id = sqlc.arg(worker_id)::bigint
        AND tasks.status = 'running'
      FOR SHARE
  )
RETURNING *;

-- name: PushEvent :one
-- An external event arrives. DeliverEvent, in the same transaction, ends the
-- waits it is for.
--
-- Unless it is one already here: a push with the idempotency key of an earlier
-- one is that event again (a retry after a lost reply). No row is inserted;
-- the earlier one comes back, its pushes counting this one, and the caller
-- delivers nothing. The statement decides alone, even for two pushes at once:
-- the second waits on the unique index for the first to commit, then updates
-- and returns the row the first inserted. (DO NOTHING would return no row,
-- and a SELECT in the same statement could not see a row committed after the
-- statement began.) A retry must push the same key and payload: for another,
-- the WHERE leaves the row as it is, and no row comes back.
INSERT INTO external_events (key, payload, idempotency_key)
VALUES (sqlc.arg(key), sqlc.arg(payload), sqlc.narg(idempotency_key))
ON CONFLICT (idempotency_key) DO UPDATE
SET pushes = external_events.pushes + 1
WHERE external_events.key = excluded.key AND external_events.payload = excluded.payload
RETURNING *;

-- name: DeliverEvent :many
-- End, with this event, every open wait for its key whose deadline has not
-- passed, and return the waiting tasks, to be woken. Each wait gets the event's
-- payload in its own row (see GetWaitForShare). Which waits are open is
-- what this statement sees when it begins: a wait recorded after that does
-- not see this event. The rows are locked in order, and a push that finds a
-- wait locked by another push waits for it, then finds it ended and leaves it
-- alone: of two events pushed at once, exactly one ends the wait.
WITH open_waits AS (
    SELECT task_id, event_number
    FROM event_waits
    WHERE key = sqlc.arg(key)::text AND ended_at IS NULL AND timeout_at > now()
    ORDER BY task_id, event_number
    FOR UPDATE
)
UPDATE event_waits
SET external_event_id = pushed.id,
    payload = pushed.payload,
    ended_at = now()
FROM open_waits, external_events AS pushed
WHERE event_waits.task_id = open_waits.task_id
  AND event_waits.event_number = open_waits.event_number
  AND pushed.id = sqlc.arg(external_event_id)::bigint
RETURNING event_waits.task_id;

-- name: ListExternalEvents :many
SELECT * FROM external_events
ORDER BY id;

-- name: ListEventWaits :many
SELECT * FROM event_waits
ORDER BY task_id, event_number;

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
