-- name: CreateTask :one
-- Timeouts arrive in seconds (NULL: no limit); the schedule deadline is counted
-- from the task's start time, on the database's clock, like every other time
-- in this schema. The insert notifies the queue's channel (a trigger, see
-- schema.sql).
--
-- A keyed task: its key's row is created here the first time the key is seen
-- (DO NOTHING locks no row that exists, so an enqueue never waits for a claim
-- or a result of its key); the queue's limit decides whether it waits or, with
-- cancel_newest and its key full, is cancelled at once. The caller has locked
-- the key's row for cancel_newest (see LockConcurrencyKey), so that the tasks
-- counted here are all there are. No row comes back for a keyed task on a
-- queue with no concurrency limit.
--
-- A delayed task (start_at, or start_after_seconds from now) is inserted
-- suspended before its first attempt, until then: lesson 09's wake-up
-- machinery starts it, the way it resumes a sleeper (see ClaimTasks).
--
-- An idempotency key: the key's row is inserted first, with the id the task
-- will have, and the task only if the key was not taken. The statement
-- decides alone, even for eight enqueues at once: the others wait on the
-- key's primary key for the first to commit, and insert nothing. No row comes
-- back for them: their statement's snapshot, taken before the first one
-- committed, cannot see its task, so the caller finds it with a statement of
-- its own (RepeatEnqueue), or releases the key if it has expired
-- (ReleaseExpiredIdempotencyKey) and enqueues again.
WITH queue_limit AS (
    SELECT * FROM concurrency_limits WHERE queue = sqlc.arg(queue)
),
new_key AS (
    INSERT INTO concurrency_keys (queue, key)
    SELECT sqlc.arg(queue), sqlc.narg(concurrency_key)::text
    WHERE sqlc.narg(concurrency_key)::text IS NOT NULL AND EXISTS (SELECT 1 FROM queue_limit)
    ON CONFLICT (queue, key) DO NOTHING
),
-- Its tasks running (or holding a slot) and queued: read only for cancel_newest.
key_full AS (
    SELECT coalesce((
            SELECT running FROM concurrency_keys
            WHERE queue = sqlc.arg(queue) AND key = sqlc.narg(concurrency_key)::text
        ), 0) + (
            SELECT count(*) FROM tasks
            WHERE queue = sqlc.arg(queue) AND concurrency_key = sqlc.narg(concurrency_key)::text
              AND status = 'queued'
        ) >= (SELECT max_per_key FROM queue_limit) AS is_full
),
-- When it may start: now, or later (NULL).
start AS (
    SELECT coalesce(
        sqlc.narg(start_at)::timestamptz,
        now() + sqlc.narg(start_after_seconds)::double precision * interval '1 second'
    ) AS delayed_until
),
new_idempotency_key AS (
    INSERT INTO idempotency_keys (key, task_id, expires_at)
    SELECT
        sqlc.narg(idempotency_key)::text,
        nextval('tasks_id_seq'),
        now() + sqlc.narg(idempotency_retention_seconds)::double precision * interval '1 second'
    WHERE sqlc.narg(idempotency_key)::text IS NOT NULL
      AND (sqlc.narg(concurrency_key)::text IS NULL OR EXISTS (SELECT 1 FROM queue_limit))
    ON CONFLICT (key) DO NOTHING
    RETURNING task_id
)
INSERT INTO tasks (
    id, queue, task_name, display_name, input,
    priority, max_retries, execution_timeout, schedule_deadline, durable, parent_id,
    concurrency_key, hold_while_suspended, rate_limit, rate_units, status, wake_at, output,
    cancel_requested_at, cancelled_by, cancel_reason, idempotency_key
)
SELECT
    coalesce((SELECT task_id FROM new_idempotency_key), nextval('tasks_id_seq')),
    sqlc.arg(queue), sqlc.arg(task_name), sqlc.arg(display_name), sqlc.arg(input),
    sqlc.arg(priority), sqlc.arg(max_retries),
    sqlc.narg(execution_timeout_seconds)::double precision * interval '1 second',
    coalesce(start.delayed_until, now())
        + sqlc.narg(schedule_timeout_seconds)::double precision * interval '1 second',
    sqlc.arg(durable), sqlc.narg(parent_id),
    sqlc.narg(concurrency_key)::text,
    coalesce((SELECT hold_while_suspended FROM queue_limit), false),
    sqlc.narg(rate_limit)::text, sqlc.narg(rate_units)::integer,
    CASE
        WHEN rejected.at_limit THEN 'cancelled'::task_status
        WHEN start.delayed_until IS NOT NULL THEN 'suspended'::task_status
        ELSE 'queued'::task_status
    END,
    CASE WHEN NOT rejected.at_limit THEN start.delayed_until END,
    CASE WHEN rejected.at_limit THEN jsonb_build_object('error', jsonb_build_object(
        'type', 'Cancelled',
        'message', format(
            'cancelled by concurrency limit: key %s already had %s task(s) running or queued',
            sqlc.narg(concurrency_key)::text, (SELECT max_per_key FROM queue_limit)
        )
    )) END,
    CASE WHEN rejected.at_limit THEN now() END,
    CASE WHEN rejected.at_limit THEN 'concurrency limit' END,
    CASE WHEN rejected.at_limit THEN 'cancel_newest: its key was full' END,
    sqlc.narg(idempotency_key)::text
FROM start, (
    SELECT coalesce(
        (SELECT at_limit = 'cancel_newest' FROM queue_limit) AND (SELECT is_full FROM key_full),
        false
    ) AS at_limit
) AS rejected
WHERE (sqlc.narg(concurrency_key)::text IS NULL OR EXISTS (SELECT 1 FROM queue_limit))
  AND (sqlc.narg(idempotency_key)::text IS NULL OR EXISTS (SELECT 1 FROM new_idempotency_key))
RETURNING *;

-- name: RepeatEnqueue :one
-- An enqueue whose idempotency key was taken: the task the key names, its
-- enqueues counted. The key's row is locked (FOR SHARE) until the caller's
-- transaction ends: retention, which removes a range's keys before it looks
-- at the range for the last time, waits for it, and then sees this caller's
-- use of the task (a parent's history that names it as its child). No row:
-- the key has expired.
WITH named AS (
    SELECT task_id FROM idempotency_keys
    WHERE key = sqlc.arg(idempotency_key) AND expires_at > now()
    FOR SHARE
)
UPDATE tasks
SET enqueues = tasks.enqueues + 1
FROM named
WHERE tasks.id = named.task_id
RETURNING tasks.*;

-- name: ReleaseExpiredIdempotencyKey :execrows
-- An idempotency key past its retention names its task no more: the next
-- enqueue with it makes a new task.
DELETE FROM idempotency_keys
WHERE key = sqlc.arg(idempotency_key) AND expires_at <= now();

-- name: GetTaskByIdempotencyKey :one
-- The task an idempotency key names, while it has not expired.
SELECT tasks.*
FROM idempotency_keys
JOIN tasks ON tasks.id = idempotency_keys.task_id
WHERE idempotency_keys.key = sqlc.arg(idempotency_key) AND idempotency_keys.expires_at > now();

-- name: SetConcurrencyLimit :one
-- Set (or change) a queue's concurrency limit. A lower limit admits nothing
-- more until enough of the running tasks have finished; it stops none of them.
INSERT INTO concurrency_limits (queue, max_per_key, at_limit, hold_while_suspended)
VALUES (
    sqlc.arg(queue), sqlc.arg(max_per_key), sqlc.arg(at_limit), sqlc.arg(hold_while_suspended)
)
ON CONFLICT (queue) DO UPDATE
SET max_per_key = excluded.max_per_key,
    at_limit = excluded.at_limit,
    hold_while_suspended = excluded.hold_while_suspended
RETURNING *;

-- name: GetConcurrencyLimit :one
SELECT * FROM concurrency_limits
WHERE queue = sqlc.arg(queue);

-- name: LockConcurrencyKey :exec
-- Create the key's row if it is new, and lock it until the transaction ends,
-- in one statement (ON CONFLICT DO UPDATE locks the row it finds; the update
-- changes nothing). An enqueue with cancel_newest or cancel_in_progress holds
-- it while it looks at the key's tasks: claims pass over the key meanwhile
-- (SKIP LOCKED), and a result of the key waits for it.
INSERT INTO concurrency_keys (queue, key)
VALUES (sqlc.arg(queue), sqlc.arg(key))
ON CONFLICT (queue, key) DO UPDATE SET running = concurrency_keys.running;

-- name: CancelSupersededTasks :many
-- cancel_in_progress: a new task of the key is coming, and the newest tasks
-- win. Cancel the key's unfinished tasks but the newest `keep`, running ones
-- too (see cancel_task in schema.sql): a plain one gives its slot back at once,
-- a durable one when its compensation is done. Tasks already being cancelled
-- are on their way out, and do not count.
SELECT older.id, cancel_task(
    older.id, 'concurrency limit', format('superseded by a newer task of key %s', sqlc.arg(key)::text)
)::text AS status
FROM (
    SELECT candidate.id
    FROM tasks AS candidate
    WHERE candidate.queue = sqlc.arg(queue) AND candidate.concurrency_key = sqlc.arg(key)::text
      AND candidate.status IN ('queued', 'running', 'suspended')
      AND candidate.cancel_requested_at IS NULL
    ORDER BY candidate.id DESC
    OFFSET sqlc.arg(keep)
) AS older
ORDER BY older.id;

-- name: CancelTask :one
-- Cancel a task and every unfinished task below it (see cancel_task in
-- schema.sql). The status comes back as text: NULL when there is no such task.
SELECT cancel_task(sqlc.arg(id), sqlc.arg(cancelled_by), sqlc.arg(reason))::text AS status;

-- name: SetRateLimit :one
-- Set (or change) a rate limit: at most `units` units in any window of
-- `per_seconds`. The grants already made stay in its log, and count.
INSERT INTO rate_limits (name, units, per)
VALUES (sqlc.arg(name), sqlc.arg(units), sqlc.arg(per_seconds)::double precision * interval '1 second')
ON CONFLICT (name) DO UPDATE
SET units = excluded.units, per = excluded.per
RETURNING *;

-- name: GetRateLimit :one
SELECT * FROM rate_limits
WHERE name = sqlc.arg(name);

-- name: ListConcurrencyKeys :many
-- Each key of each queue with a limit: its slots taken and its tasks waiting,
-- for history_tool flow. The busiest keys first.
SELECT
    keys.queue, keys.key, keys.running, limits.max_per_key,
    (SELECT count(*) FROM tasks
     WHERE tasks.queue = keys.queue AND tasks.concurrency_key = keys.key
       AND tasks.status = 'queued')::bigint AS queued
FROM concurrency_keys AS keys
JOIN concurrency_limits AS limits ON limits.queue = keys.queue
ORDER BY keys.running DESC, queued DESC, keys.queue, keys.key
LIMIT sqlc.arg(max_keys);

-- name: ListRateLimitWindows :many
-- Each rate limit with the units its window has left now, for history_tool
-- flow. Read without a lock: a claim may be granting units at this moment.
SELECT
    name, units, extract(epoch FROM per)::double precision AS per_seconds,
    (units - (SELECT count(*) FROM unnest(granted_at) AS grant_time
              WHERE grant_time > now() - per))::integer AS units_left
FROM rate_limits
ORDER BY name;

-- name: ClaimTasks :many
-- Take up to max_tasks tasks and run each on this worker, in one statement.
-- Three kinds of task can be taken:
--   - a queued task with a concurrency key, within its key's limit; the keys
--     take turns, round robin, the keyless tasks' lane being one more key;
--   - a queued task with no key, highest priority first, oldest first within a
--     priority (lesson 11's claim, when the queue has no keys);
--   - a suspended task whose wake-up time has come, which goes on with the
--     attempt it suspended (it costs no retry); a keyed one that gave its slot
--     back while it was suspended needs one again. A delayed task (suspended
--     at attempt 0) starts its first attempt this way, and takes its key's
--     slot and its rate limit's units like any start.
-- And a task with a rate limit only while the limit has units left for it.
-- FOR UPDATE SKIP LOCKED everywhere: a concurrent claim passes over the rows
-- (tasks, keys, limits) another claim is taking instead of waiting for them.
--
-- Only tasks this worker has a function for (a durable function, for a durable
-- task), to start or to resume: during a rolling deploy, old and new workers
-- share a queue, and an old worker must leave a new kind of task to a new
-- worker rather than fail it. And a durable task that has started only on a
-- worker of the code version it started on (code_version, this worker's): old
-- workers finish old tasks, new workers take new ones (see can_run_here). Its
-- first claim pins a durable task to this worker's version. A version that
-- is draining starts no durable task (see draining_versions).
WITH this_version AS (
    SELECT NOT EXISTS (
        SELECT 1 FROM draining_versions WHERE code_version = sqlc.arg(code_version)::text
    ) AS starts_new
),
walk AS (
    SELECT CASE
        WHEN EXISTS (
            SELECT 1 FROM concurrency_limits AS limits WHERE limits.queue = sqlc.arg(queue)::text
        ) THEN
            keys_to_visit(
                sqlc.arg(queue), workers.key_walk_after,
                sqlc.arg(task_names)::text[], sqlc.arg(durable_task_names)::text[],
                sqlc.arg(code_version)::text,
                sqlc.arg(max_tasks)::integer, sqlc.arg(max_keys_visited)::integer
            )
        -- A queue with no limit has no keyed tasks (enqueue refuses them): only
        -- the keyless lane, lesson 11's claim, with no walk to take.
        ELSE ARRAY['']
    END AS keys
    FROM workers
    WHERE workers.id = sqlc.arg(worker_id)::bigint
),
visited AS (
    SELECT visit.key, visit.turn_order
    FROM walk, unnest(walk.keys) WITH ORDINALITY AS visit (key, turn_order)
),
-- The next claim goes on after the last key this one visited. (On a queue
-- with no keys, the walk visits only the keyless lane, '', and stops where it
-- started: nothing to write.)
walk_stopped AS (
    UPDATE workers
    SET key_walk_after = walk.keys[cardinality(walk.keys)]
    FROM walk
    WHERE workers.id = sqlc.arg(worker_id)::bigint
      AND workers.key_walk_after IS DISTINCT FROM walk.keys[cardinality(walk.keys)]
      AND cardinality(walk.keys) > 0
),
to_resume AS (
    SELECT suspended.id, suspended.priority, suspended.concurrency_key,
        suspended.concurrency_key IS NOT NULL AND NOT suspended.key_slot_held AS needs_slot,
        -- A delayed start takes units; a resume's attempt has had its grant.
        CASE WHEN suspended.attempt = 0 THEN suspended.rate_limit END AS rate_limit,
        CASE WHEN suspended.attempt = 0 THEN suspended.rate_units END AS rate_units
    FROM tasks AS suspended
    WHERE suspended.queue = sqlc.arg(queue) AND suspended.status = 'suspended'
      AND suspended.wake_at <= now()
      AND can_run_here(
          suspended.durable, suspended.task_name, suspended.code_version,
          sqlc.arg(task_names)::text[], sqlc.arg(durable_task_names)::text[],
          sqlc.arg(code_version)::text, (SELECT starts_new FROM this_version)
      )
    ORDER BY suspended.wake_at
    LIMIT sqlc.arg(max_tasks)
    FOR UPDATE SKIP LOCKED
),
-- The keys that may have a free slot, locked: the count read here is the
-- newest (a row locked after a concurrent change is read as changed), and no
-- other claim can admit into the key until this one commits. A key another
-- claim holds is passed over; the next claim finds it.
open_keys AS (
    SELECT keys.key, limits.max_per_key - keys.running AS free_slots, visiting.turn_order
    FROM (
        SELECT visit.key, min(visit.turn_order) AS turn_order
        FROM (
            SELECT key, turn_order FROM visited WHERE key <> ''
            UNION ALL
            -- The keys of the resumes that need a slot come first.
            SELECT concurrency_key, 0 FROM to_resume WHERE needs_slot
        ) AS visit
        GROUP BY visit.key
    ) AS visiting
    JOIN concurrency_keys AS keys ON keys.queue = sqlc.arg(queue) AND keys.key = visiting.key
    JOIN concurrency_limits AS limits ON limits.queue = keys.queue
    WHERE keys.running < limits.max_per_key
    FOR UPDATE OF keys SKIP LOCKED
),
-- The rate limits the queue's queued (or due delayed) tasks take units of,
-- locked, each with the units its window has left. The time of the grants is the database's
-- clock, read now, after the lock, and never earlier than the limit's last
-- grant: so the log stays in order even if the server's clock steps back.
locked_rate_limits AS (
    SELECT limits.name, limits.units, limits.per, limits.granted_at
    FROM rate_limits AS limits
    WHERE EXISTS (
        SELECT 1 FROM tasks AS limited
        WHERE limited.queue = sqlc.arg(queue) AND limited.status = 'queued'
          AND limited.rate_limit = limits.name
    ) OR limits.name IN (SELECT rate_limit FROM to_resume)
    FOR UPDATE SKIP LOCKED
),
rate_windows AS (
    SELECT locked.name, clock.granted_now, recent.granted_at AS recent_grants,
        locked.units - cardinality(recent.granted_at) AS units_left
    FROM locked_rate_limits AS locked
    CROSS JOIN LATERAL (
        SELECT greatest(clock_timestamp(), locked.granted_at[cardinality(locked.granted_at)])
            AS granted_now
    ) AS clock
    CROSS JOIN LATERAL (
        SELECT ARRAY(
            SELECT grant_time FROM unnest(locked.granted_at) AS grant_time
            WHERE grant_time > clock.granted_now - locked.per
            ORDER BY grant_time
        ) AS granted_at
    ) AS recent
),
-- The keyless lane, when the walk reached it: the best tasks with no rate
-- limit, and of each rate limit with units left, its best tasks that many
-- units could start. (Taken together, the tasks of a spent limit would stand
-- in front of the others, and take the claim's places for nothing.)
keyless_to_start AS (
    SELECT queued.id, queued.priority, queued.rate_limit, queued.rate_units
    FROM tasks AS queued
    WHERE queued.queue = sqlc.arg(queue) AND queued.status = 'queued'
      AND queued.concurrency_key IS NULL AND queued.rate_limit IS NULL
      AND EXISTS (SELECT 1 FROM visited WHERE key = '')
      AND can_run_here(
          queued.durable, queued.task_name, queued.code_version,
          sqlc.arg(task_names)::text[], sqlc.arg(durable_task_names)::text[],
          sqlc.arg(code_version)::text, (SELECT starts_new FROM this_version)
      )
      -- Too late to start: the schedule-timeout sweep will fail it.
      AND (queued.schedule_deadline IS NULL OR queued.schedule_deadline > now())
    ORDER BY queued.priority DESC, queued.id
    LIMIT sqlc.arg(max_tasks)
    FOR UPDATE SKIP LOCKED
),
keyless_rate_limited_to_start AS (
    SELECT queued.id, queued.priority, queued.rate_limit, queued.rate_units
    FROM rate_windows
    CROSS JOIN LATERAL (
        SELECT candidate.id, candidate.priority, candidate.rate_limit, candidate.rate_units
        FROM tasks AS candidate
        WHERE candidate.queue = sqlc.arg(queue) AND candidate.status = 'queued'
          AND candidate.rate_limit = rate_windows.name AND candidate.concurrency_key IS NULL
          AND EXISTS (SELECT 1 FROM visited WHERE key = '')
          AND can_run_here(
              candidate.durable, candidate.task_name, candidate.code_version,
              sqlc.arg(task_names)::text[], sqlc.arg(durable_task_names)::text[],
              sqlc.arg(code_version)::text, (SELECT starts_new FROM this_version)
          )
          AND (candidate.schedule_deadline IS NULL OR candidate.schedule_deadline > now())
        ORDER BY candidate.priority DESC, candidate.id
        LIMIT least(greatest(rate_windows.units_left, 0), sqlc.arg(max_tasks)::integer)
        FOR UPDATE SKIP LOCKED
    ) AS queued
),
-- Each open key's best queued tasks, as many as it has free slots (leaving
-- out tasks whose rate limit is spent, or held by another claim).
keyed_to_start AS (
    SELECT queued.id, queued.priority, queued.concurrency_key, queued.rate_limit,
        queued.rate_units
    FROM open_keys
    CROSS JOIN LATERAL (
        SELECT candidate.id, candidate.priority, candidate.concurrency_key,
            candidate.rate_limit, candidate.rate_units
        FROM tasks AS candidate
        WHERE candidate.queue = sqlc.arg(queue) AND candidate.status = 'queued'
          AND candidate.concurrency_key = open_keys.key
          AND (candidate.rate_limit IS NULL
               OR candidate.rate_limit IN (SELECT name FROM rate_windows WHERE units_left > 0))
          AND can_run_here(
              candidate.durable, candidate.task_name, candidate.code_version,
              sqlc.arg(task_names)::text[], sqlc.arg(durable_task_names)::text[],
              sqlc.arg(code_version)::text, (SELECT starts_new FROM this_version)
          )
          AND (candidate.schedule_deadline IS NULL OR candidate.schedule_deadline > now())
        ORDER BY candidate.priority DESC, candidate.id
        LIMIT least(open_keys.free_slots, sqlc.arg(max_tasks)::integer)
        FOR UPDATE SKIP LOCKED
    ) AS queued
),
-- Turns: within a key, resumes first, then by priority; the n-th task of every
-- key comes before the (n+1)-th of any, and the keys of one turn come in the
-- order the walk visited them (keyless tasks take their turns as one more
-- key). A resume that holds its slot already needs no turn.
in_turns AS (
    SELECT c.*, row_number() OVER (
            PARTITION BY c.concurrency_key
            ORDER BY c.resume DESC, c.priority DESC, c.id
        ) AS turn
    FROM (
        SELECT id, priority, NULL::text AS concurrency_key, rate_limit, rate_units, false AS resume
        FROM keyless_to_start
        UNION ALL
        SELECT id, priority, NULL::text, rate_limit, rate_units, false
        FROM keyless_rate_limited_to_start
        UNION ALL
        SELECT id, priority, concurrency_key, rate_limit, rate_units, false
        FROM keyed_to_start
        UNION ALL
        SELECT id, priority, concurrency_key, rate_limit, rate_units, true
        FROM to_resume WHERE needs_slot
    ) AS c
    UNION ALL
    SELECT id, priority, concurrency_key, rate_limit, rate_units, true, 0
    FROM to_resume WHERE NOT needs_slot
),
within_key_limits AS (
    SELECT in_turns.*, coalesce(open_keys.turn_order, lane.turn_order, 0) AS turn_order
    FROM in_turns
    LEFT JOIN open_keys ON open_keys.key = in_turns.concurrency_key
    LEFT JOIN visited AS lane ON lane.key = '' AND in_turns.concurrency_key IS NULL
    WHERE in_turns.turn = 0
       OR in_turns.concurrency_key IS NULL
       OR in_turns.turn <= open_keys.free_slots
),
-- Within each rate limit, tasks in turn order while their units fit: a task
-- that does not fit stops the ones after it (no small task overtakes a big
-- one for ever). Resumes take no units (their attempt has its grant),
-- delayed starts do (see to_resume).
within_rate_limits AS (
    SELECT w.*, rate_windows.granted_now
    FROM (
        SELECT within_key_limits.*, sum(rate_units) OVER (
                PARTITION BY rate_limit
                ORDER BY turn, turn_order, priority DESC, id
            ) AS units_so_far
        FROM within_key_limits
    ) AS w
    LEFT JOIN rate_windows ON rate_windows.name = w.rate_limit
    WHERE w.rate_limit IS NULL OR w.units_so_far <= rate_windows.units_left
),
chosen AS (
    SELECT id, rate_limit, rate_units, resume, granted_now
    FROM within_rate_limits
    ORDER BY turn, turn_order, priority DESC, id
    LIMIT sqlc.arg(max_tasks)
),
-- The grants of the tasks chosen, appended to their limits' logs; what left
-- the window is dropped.
grants AS (
    UPDATE rate_limits
    SET granted_at = rate_windows.recent_grants
        || array_fill(rate_windows.granted_now, ARRAY[spent.units])
    FROM rate_windows
    JOIN (
        SELECT rate_limit, sum(rate_units)::integer AS units
        FROM chosen
        WHERE rate_limit IS NOT NULL
        GROUP BY rate_limit
    ) AS spent ON spent.rate_limit = rate_windows.name
    WHERE rate_limits.name = rate_windows.name
)
UPDATE tasks
SET status = 'running',
    -- On the right of SET, status is the value before this UPDATE. A delayed
    -- task, suspended at attempt 0, starts its first attempt.
    attempt = CASE WHEN status = 'suspended' AND attempt > 0 THEN attempt ELSE attempt + 1 END,
    worker_id = sqlc.arg(worker_id)::bigint,
    -- A rate-limited start: the time of its grant.
    started_at = coalesce(chosen.granted_now, now()),
    schedule_deadline = NULL,
    wake_at = NULL,
    code_version = CASE
        WHEN tasks.durable THEN coalesce(tasks.code_version, sqlc.arg(code_version)::text)
    END
FROM chosen
WHERE tasks.id = chosen.id
RETURNING tasks.*;

-- name: FinishAttempts :many
-- Record how attempts ended, many in one statement: completed with an output,
-- or failed with an error document, in which case the task goes back to the
-- queue when the error is retryable and retries are left. Outputs arrive as
-- JSON text.
--
-- An attempt that ended its task's cancellation (cancelled: its durable
-- function met Cancelled, and its compensation is done) ends the task
-- cancelled, whatever the function returned.
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
        WHEN finished.cancelled AND tasks.cancel_requested_at IS NOT NULL
            THEN 'cancelled'::task_status
        WHEN finished.succeeded THEN 'completed'::task_status
        WHEN finished.retryable
            AND tasks.attempt - tasks.attempts_before_replay - tasks.infrastructure_attempts
                - finished.infrastructure::integer <= tasks.max_retries
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
        unnest(sqlc.arg(cancelled)::boolean[]) AS cancelled,
        unnest(sqlc.arg(outputs)::text[]) AS output
) AS finished
WHERE tasks.id = finished.id
  AND tasks.attempt = finished.attempt
  AND tasks.worker_id = sqlc.arg(worker_id)::bigint
  AND tasks.status = 'running'
RETURNING tasks.id, tasks.attempt, tasks.status, tasks.parent_id, tasks.idempotency_key;

-- name: SuspendTask :one
-- End this run of an attempt without ending the attempt: the task leaves its
-- worker, and waits until wake_at (NULL: until a child of it finishes). The
-- claim takes it again when that time comes, and the attempt goes on.
--
-- Fenced, like FinishAttempts: only while this worker still owns the attempt,
-- and, unless it is compensating, while nobody has cancelled the task: a
-- cancelled task does not start waiting (see AppendEvent). No row comes back
-- when it may not.
UPDATE tasks
SET status = 'suspended',
    wake_at = sqlc.narg(wake_at)
WHERE id = sqlc.arg(id)
  AND attempt = sqlc.arg(attempt)
  AND worker_id = sqlc.arg(worker_id)::bigint
  AND status = 'running'
  AND (cancel_requested_at IS NULL OR sqlc.arg(compensating)::boolean)
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

-- name: ListTasksSharingChildren :many
-- The tasks whose histories hold these children but did not spawn them: a
-- child spawned with an idempotency key another task's spawn had used comes
-- back to that spawn as it is (see CreateTask), and its end must wake every
-- task waiting for it, not only its parent.
SELECT DISTINCT event.task_id
FROM task_events AS event
JOIN tasks AS child ON child.id = event.child_task_id
WHERE event.child_task_id = ANY(sqlc.arg(child_ids)::bigint[])
  AND event.task_id IS DISTINCT FROM child.parent_id
ORDER BY event.task_id;

-- name: SecondsUntilNextWakeUp :one
-- How long until the next suspended task of this queue is due, on the
-- database's clock: 0 when one is due already, and at most max_seconds (also
-- when none waits for a time: least() ignores NULL).
--
-- A task that is due but needs a slot of a full key is not counted: the claim
-- could not take it, and a poller told "0 s" would ask again at once, for as
-- long as the key stays full. The slot's release notifies the queue instead
-- (see count_key_slots in schema.sql).
--
-- Nor is a task this worker cannot run (can_run_here): one pinned to another
-- code version, above all one whose version no worker serves any more, is due
-- for ever, and would have this poller claim in a loop, finding nothing.
SELECT greatest(0, least(
    sqlc.arg(max_seconds)::double precision,
    extract(epoch FROM min(suspended.wake_at) - now())::double precision
))::double precision AS seconds
FROM tasks AS suspended
WHERE suspended.queue = sqlc.arg(queue) AND suspended.status = 'suspended'
  AND can_run_here(
      suspended.durable, suspended.task_name, suspended.code_version,
      sqlc.arg(task_names)::text[], sqlc.arg(durable_task_names)::text[],
      sqlc.arg(code_version)::text,
      NOT EXISTS (
          SELECT 1 FROM draining_versions WHERE code_version = sqlc.arg(code_version)::text
      )
  )
  AND NOT (
      suspended.wake_at <= now()
      AND suspended.concurrency_key IS NOT NULL AND NOT suspended.key_slot_held
      AND EXISTS (
          SELECT 1
          FROM concurrency_keys AS keys
          JOIN concurrency_limits AS limits ON limits.queue = keys.queue
          WHERE keys.queue = suspended.queue AND keys.key = suspended.concurrency_key
            AND keys.running >= limits.max_per_key
      )
  );

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
INSERT INTO workers (name, queue, slots, lease_seconds, lease_expires_at, code_version)
VALUES (
    sqlc.arg(name), sqlc.arg(queue), sqlc.arg(slots), sqlc.arg(lease_seconds),
    now() + sqlc.arg(lease_seconds)::double precision * interval '1 second',
    sqlc.arg(code_version)
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
-- The attempts this worker still owns, and whether someone has cancelled
-- their task. One it is running but that is missing here was taken from it
-- (timed out, reassigned while it looked dead, or cancelled at once).
SELECT id, attempt, started_at, (cancel_requested_at IS NOT NULL)::boolean AS cancel_requested
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
    )),
    -- A claim pins a durable task to this worker's code version; one whose
    -- history is still empty has run no code at all, and any version that is not
    -- draining may start it (a move_to_version of such a task is undone too).
    code_version = CASE
        WHEN EXISTS (SELECT FROM task_events WHERE task_events.task_id = tasks.id)
            THEN tasks.code_version
    END
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
-- deadline, the most overdue first: queued ones, and delayed ones that no
-- worker has started (suspended before their first attempt).
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
    WHERE waiting.schedule_deadline <= now()
      AND (waiting.status = 'queued' OR (waiting.status = 'suspended' AND waiting.attempt = 0))
    ORDER BY waiting.schedule_deadline
    LIMIT sqlc.arg(max_tasks)
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks
SET status = 'failed',
    wake_at = NULL,
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
        WHEN attempt - attempts_before_replay - infrastructure_attempts <= max_retries THEN 'queued'::task_status
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
        WHEN attempt - attempts_before_replay - infrastructure_attempts <= max_retries THEN 'queued'::task_status
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
-- And unless compensating, only while nobody has cancelled the task: a
-- cancelled task spawns no new child, and starts no new sleep or wait (no row
-- comes back: the context then finds the cancellation, see durable.py). A
-- step that has run is recorded whatever happened meanwhile (compensating is
-- true for it): its effect has happened, and the compensation must know it.
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
      AND (tasks.cancel_requested_at IS NULL OR sqlc.arg(compensating)::boolean)
    FOR SHARE
)
RETURNING *;

-- name: AppendCancellation :one
-- Record where a durable function learnt that its task is cancelled: a
-- cancellation event, named after whoever cancelled it, whose input says by
-- whom and why, at this event number.
-- What the function records after it is its compensation. Fenced, like
-- AppendEvent, and only for a task someone has cancelled.
INSERT INTO task_events (task_id, event_number, kind, name, input, key, attempt)
SELECT
    tasks.id, sqlc.arg(event_number)::integer, 'cancellation', tasks.cancelled_by,
    jsonb_build_object('cancelled_by', tasks.cancelled_by, 'reason', tasks.cancel_reason),
    'cancellation', tasks.attempt
FROM tasks
WHERE tasks.id = sqlc.arg(task_id)::bigint
  AND tasks.attempt = sqlc.arg(attempt)::integer
  AND tasks.worker_id = sqlc.arg(worker_id)::bigint
  AND tasks.status = 'running'
  AND tasks.cancel_requested_at IS NOT NULL
FOR SHARE
RETURNING *;

-- name: EndOpenWaits :execrows
-- A cancelled task's open waits for external events end, with no event, so
-- that a push after the cancellation changes nothing in its history. Fenced.
UPDATE event_waits
SET ended_at = now()
WHERE event_waits.task_id = sqlc.arg(task_id)::bigint
  AND event_waits.ended_at IS NULL
  AND EXISTS (
      SELECT 1
      FROM tasks
      WHERE tasks.id = sqlc.arg(task_id)::bigint
        AND tasks.attempt = sqlc.arg(attempt)::integer
        AND tasks.worker_id = sqlc.arg(worker_id)::bigint
        AND tasks.status = 'running'
      FOR SHARE
  );

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

-- Replays and forks: an operator runs a finished durable task again (see
-- reruns.py, which checks what may be replayed or forked, and history_tool.py).

-- name: LockTask :one
-- A task, locked until the end of the transaction: two replays or forks of
-- the same task wait for each other, so a fork never copies a history that a
-- replay is deleting.
SELECT * FROM tasks
WHERE id = sqlc.arg(id)
FOR UPDATE;

-- name: ReplayTask :one
-- Put a finished task back on the queue, to run from scratch with a fresh
-- retry budget. Its attempt number keeps counting (see attempts_before_replay).
-- The caller deletes its history in the same transaction. Back on the queue,
-- it notifies its queue's channel (a trigger, see schema.sql).
UPDATE tasks
SET status = 'queued',
    output = NULL,
    wake_at = NULL,
    attempts_before_replay = attempt,
    -- attempts_before_replay already counts them: the fresh budget starts clean.
    infrastructure_attempts = 0,
    -- A cancelled task replayed runs again, from scratch, uncancelled.
    cancel_requested_at = NULL,
    cancelled_by = NULL,
    cancel_reason = NULL,
    -- From scratch, with no history: on whichever version claims it first.
    code_version = NULL
WHERE id = sqlc.arg(id) AND status IN ('completed', 'failed', 'cancelled')
RETURNING *;

-- name: DeleteEventWaits :execrows
-- A replay deletes a task's waits first: they belong to its events.
DELETE FROM event_waits
WHERE task_id = sqlc.arg(task_id);

-- name: DeleteTaskEvents :many
-- A replay's other half: the history goes, all of it. What it held comes back,
-- so that the operator can be told which children the next run leaves behind.
DELETE FROM task_events
WHERE task_id = sqlc.arg(task_id)
RETURNING *;

-- name: CreateFork :one
-- A new task that runs the same durable function on the same input as the
-- source task, queued, and says where it came from. It is nobody's child (no
-- parent_id): it was enqueued by an operator. The caller copies the source's
-- events before at_event into it in the same transaction, so that no worker
-- can claim the fork before its history is there. The insert notifies the
-- queue's channel (a trigger, see schema.sql).
--
-- The fork keeps its source's code version: the events it copies were written
-- by that code (an operator moves it to another, MoveTasksToVersion).
INSERT INTO tasks (
    queue, task_name, display_name, input, priority, max_retries, execution_timeout,
    durable, forked_from_task_id, forked_at_event,
    concurrency_key, hold_while_suspended, rate_limit, rate_units, code_version
)
SELECT
    queue, task_name, display_name, input, priority, max_retries, execution_timeout,
    durable, id, sqlc.arg(at_event)::integer,
    concurrency_key, hold_while_suspended, rate_limit, rate_units, code_version
FROM tasks
WHERE id = sqlc.arg(source_task_id)::bigint
RETURNING *;

-- name: CopyEvents :execrows
-- Copy the events of one task before before_event into another task's history,
-- as they are: same numbers, keys, outputs, children and wake-up times, so that
-- the other task replays them and reuses those children. Each copy remembers
-- the task that first recorded it.
INSERT INTO task_events (
    task_id, event_number, kind, name, input, key, output, child_task_id, wake_at,
    attempt, recorded_at, copied_from_task_id
)
SELECT
    sqlc.arg(to_task_id)::bigint, event_number, kind, name, input, key, output, child_task_id,
    wake_at, attempt, recorded_at, coalesce(copied_from_task_id, task_id)
FROM task_events
WHERE task_id = sqlc.arg(from_task_id)::bigint
  AND event_number < sqlc.arg(before_event)::integer;

-- name: CopyEventWaits :execrows
-- The waits of the events CopyEvents copied, ended as they are: the fork's
-- replay of a wait reads the same outcome, the same external event, as the
-- source's did.
INSERT INTO event_waits (
    task_id, event_number, key, timeout_at, external_event_id, payload, ended_at
)
SELECT
    sqlc.arg(to_task_id)::bigint, event_number, key, timeout_at, external_event_id, payload,
    ended_at
FROM event_waits
WHERE task_id = sqlc.arg(from_task_id)::bigint
  AND event_number < sqlc.arg(before_event)::integer;

-- name: ListHistory :many
-- A task's history as history_tool shows it: each event with its child's status.
SELECT
    event.event_number, event.kind, event.name, event.key, event.attempt,
    event.recorded_at, event.wake_at, event.copied_from_task_id, event.child_task_id,
    child.status AS child_status
FROM task_events AS event
LEFT JOIN tasks AS child ON child.id = event.child_task_id
WHERE event.task_id = sqlc.arg(task_id)
ORDER BY event.event_number;

-- name: ListForks :many
SELECT * FROM tasks
WHERE forked_from_task_id = sqlc.arg(task_id)::bigint
ORDER BY id;

-- name: ListRecentTasks :many
-- The newest tasks first, with their age on the database's clock.
SELECT
    id, task_name, status, attempt, durable, forked_from_task_id, forked_at_event,
    extract(epoch FROM now() - inserted_at)::double precision AS age_seconds
FROM tasks
ORDER BY id DESC
LIMIT sqlc.arg(max_tasks);

-- name: PlanOnce :exec
-- For the rest of this session, plan each prepared statement once, for any
-- values (a generic plan), instead of again for each call's values. Only on
-- the poller's own connection: see engine/poller.py.
--
-- And join by nested loops only. The claim is a chain of index probes, each
-- join a few rows by a key; but its plan is made once, often on an empty table
-- that the planner takes for ten pages, and then a hash join (or a nested loop
-- over a materialized scan) reading all of tasks looks cheaper than one probe
-- of the primary key per chosen task, and stays for as long as the plan does.
SELECT set_config('plan_cache_mode', 'force_generic_plan', false),
    set_config('enable_hashjoin', 'off', false),
    set_config('enable_mergejoin', 'off', false),
    set_config('enable_material', 'off', false);

-- name: NotificationChannels :one
-- The channels this schema's triggers notify (see schema.sql), named after the
-- schema: a listener must LISTEN on exactly these names.
SELECT
    current_schema()::text AS schema_name,
    (current_schema() || '.task_queued')::text AS task_queued,
    (current_schema() || '.task_cancelled')::text AS task_cancelled;

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
SELECT *
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

-- Schedules (see schema.sql and engine/scheduler.py).

-- name: SetSchedule :one
-- Define a schedule, or change one: its next tick is the first one after now
-- (the caller computes it from the cron expression or the interval). A change
-- starts the schedule afresh: ticks of the old definition not fired yet are
-- dropped, not caught up.
INSERT INTO schedules (
    name, cron, every, time_zone, queue, task_name, input, durable, catch_up, grace, next_tick_at
)
VALUES (
    sqlc.arg(name), sqlc.narg(cron)::text,
    sqlc.narg(every_seconds)::double precision * interval '1 second',
    sqlc.arg(time_zone), sqlc.arg(queue), sqlc.arg(task_name), sqlc.arg(input), sqlc.arg(durable),
    sqlc.arg(catch_up), sqlc.arg(grace_seconds)::double precision * interval '1 second',
    sqlc.arg(next_tick_at)
)
ON CONFLICT (name) DO UPDATE
SET cron = excluded.cron,
    every = excluded.every,
    time_zone = excluded.time_zone,
    queue = excluded.queue,
    task_name = excluded.task_name,
    input = excluded.input,
    durable = excluded.durable,
    catch_up = excluded.catch_up,
    grace = excluded.grace,
    next_tick_at = excluded.next_tick_at
RETURNING *;

-- name: DeleteSchedule :execrows
-- A schedule, and the record of its ticks (the tasks they enqueued stay).
DELETE FROM schedules
WHERE name = sqlc.arg(name);

-- name: DatabaseNow :one
-- The database's clock: what every tick is computed from.
SELECT now()::timestamptz AS now;

-- name: LockDueSchedules :many
-- The schedules whose next tick has come, locked until this transaction ends,
-- soonest first, with the database's clock. A schedule another worker is
-- firing now is passed over (SKIP LOCKED): it is that worker's to fire.
SELECT sqlc.embed(schedules), now()::timestamptz AS checked_at
FROM schedules
WHERE next_tick_at <= now()
ORDER BY next_tick_at
LIMIT sqlc.arg(max_schedules)
FOR UPDATE SKIP LOCKED;

-- name: RecordTick :one
-- One tick of a schedule: fired (with the task it enqueued) or skipped. No row
-- comes back for a tick recorded already: it had been fired, or skipped, once.
INSERT INTO schedule_ticks (schedule, tick_at, outcome, task_id, worker_id)
VALUES (
    sqlc.arg(schedule), sqlc.arg(tick_at), sqlc.arg(outcome), sqlc.narg(task_id),
    sqlc.arg(worker_id)
)
ON CONFLICT (schedule, tick_at) DO NOTHING
RETURNING *;

-- name: AdvanceSchedule :exec
UPDATE schedules
SET next_tick_at = sqlc.arg(next_tick_at)
WHERE name = sqlc.arg(name);

-- name: SecondsUntilNextTick :one
-- How long until the next schedule is due, on the database's clock: 0 when one
-- is due already, at most max_seconds (also when there is no schedule).
SELECT greatest(0, least(
    sqlc.arg(max_seconds)::double precision,
    extract(epoch FROM min(next_tick_at) - now())::double precision
))::double precision AS seconds
FROM schedules;

-- name: ListSchedules :many
SELECT * FROM schedules
ORDER BY name;

-- name: ListScheduleTicks :many
-- A schedule's ticks, oldest first.
SELECT * FROM schedule_ticks
WHERE schedule = sqlc.arg(schedule)
ORDER BY tick_at;

-- name: ListRecentTicks :many
-- The newest ticks of every schedule, for history_tool schedules.
SELECT * FROM schedule_ticks
ORDER BY recorded_at DESC, schedule, tick_at DESC
LIMIT sqlc.arg(max_ticks);

-- ---------------------------------------------------------------------------
-- The demonstration's queries: what the example's task functions do to its
-- own data, not the engine's.
-- ---------------------------------------------------------------------------

-- name: ReserveStock :one
-- Reserve an order's item, once: a second run finds the first one's row.
INSERT INTO reservations (order_id, item)
VALUES (sqlc.arg(order_id), sqlc.arg(item))
ON CONFLICT (order_id) DO UPDATE SET item = reservations.item
RETURNING *;

-- name: ReleaseStock :one
-- Undo a reservation, once: released_at keeps the first release's time.
UPDATE reservations
SET released_at = coalesce(released_at, clock_timestamp())
WHERE order_id = sqlc.arg(order_id)
RETURNING *;

-- name: RecordCharge :one
-- Charge an order, unless it has been charged: then no row comes back, and
-- GetChargeOfOrder finds the first charge. The order is the payment API's
-- idempotency key.
INSERT INTO charges (order_id, amount_cents, currency, task_id)
VALUES (sqlc.arg(order_id), sqlc.arg(amount_cents), sqlc.arg(currency), sqlc.arg(task_id))
ON CONFLICT (order_id) DO NOTHING
RETURNING *;

-- name: GetChargeOfOrder :one
SELECT * FROM charges
WHERE order_id = sqlc.arg(order_id);

-- name: RecordRefund :one
-- Refund a charge, unless it has been refunded: then no row comes back.
INSERT INTO refunds (charge_id, amount_cents, task_id)
VALUES (sqlc.arg(charge_id), sqlc.arg(amount_cents), sqlc.arg(task_id))
ON CONFLICT (charge_id) DO NOTHING
RETURNING *;

-- name: GetRefundOfCharge :one
SELECT * FROM refunds
WHERE charge_id = sqlc.arg(charge_id);

-- name: RecordEmail :one
-- Send an order's confirmation email, unless it has been sent.
INSERT INTO emails (order_id, task_id)
VALUES (sqlc.arg(order_id), sqlc.arg(task_id))
ON CONFLICT (order_id) DO NOTHING
RETURNING *;

-- name: RecordDigest :exec
-- The scheduled task's work for one tick, once.
INSERT INTO digests (schedule, tick_at, task_id)
VALUES (sqlc.arg(schedule), sqlc.arg(tick_at), sqlc.arg(task_id))
ON CONFLICT (schedule, tick_at) DO NOTHING;

-- name: ListReservations :many
SELECT * FROM reservations
ORDER BY order_id;

-- name: ListCharges :many
SELECT * FROM charges
ORDER BY id;

-- name: ListRefunds :many
SELECT * FROM refunds
ORDER BY charge_id;

-- name: ListEmails :many
SELECT * FROM emails
ORDER BY order_id;

-- name: ListDigests :many
SELECT * FROM digests
ORDER BY schedule, tick_at;

-- Changing code safely (lesson 14).

-- name: MoveTasksToVersion :many
-- Move the unfinished durable tasks of one code version to another: an
-- operator's statement that the new code replays their histories (run
-- `history_tool check` first). A running attempt goes on where it is; the
-- next claim of each task (after a suspension, a retry, a lost worker) is on
-- a worker of the new version.
UPDATE tasks
SET code_version = sqlc.arg(to_version)::text
WHERE code_version = sqlc.arg(from_version)::text
  AND status NOT IN ('completed', 'failed', 'cancelled')
RETURNING *;

-- name: DrainVersion :exec
-- Retire a code version from new work: its workers finish the durable tasks
-- pinned to it, and start no new ones.
INSERT INTO draining_versions (code_version)
VALUES (sqlc.arg(code_version))
ON CONFLICT (code_version) DO NOTHING;

-- name: UndrainVersion :execrows
-- Let a draining version start new durable tasks again (a rollback).
DELETE FROM draining_versions WHERE code_version = sqlc.arg(code_version);

-- name: ListCodeVersions :many
-- Every code version that a live worker runs or an unfinished durable task
-- needs, queue by queue (a worker serves one queue): how many of each, and
-- when a worker of it last beat. A version with tasks on a queue and no live
-- worker of it serving that queue is stranded there: its tasks wait for a
-- worker that may never come (start one, or move them to a version that
-- replays them).
WITH live_workers AS (
    SELECT code_version, queue, count(*) AS workers
    FROM workers
    WHERE stopped_at IS NULL AND lease_expires_at > now()
    GROUP BY code_version, queue
),
unfinished_tasks AS (
    SELECT code_version, queue, count(*) AS tasks
    FROM tasks
    WHERE code_version IS NOT NULL AND status NOT IN ('completed', 'failed', 'cancelled')
    GROUP BY code_version, queue
),
last_seen AS (
    SELECT code_version, queue, max(last_heartbeat_at) AS last_heartbeat_at
    FROM workers
    GROUP BY code_version, queue
),
versions AS (
    SELECT coalesce(live_workers.code_version, unfinished_tasks.code_version) AS code_version,
        coalesce(live_workers.queue, unfinished_tasks.queue) AS queue,
        coalesce(live_workers.workers, 0) AS live_workers,
        coalesce(unfinished_tasks.tasks, 0) AS unfinished_tasks
    FROM live_workers
    FULL JOIN unfinished_tasks
        ON (unfinished_tasks.code_version, unfinished_tasks.queue)
            = (live_workers.code_version, live_workers.queue)
)
SELECT
    versions.code_version::text AS code_version,
    versions.queue::text AS queue,
    versions.live_workers::bigint AS live_workers,
    versions.unfinished_tasks::bigint AS unfinished_tasks,
    last_seen.last_heartbeat_at,
    draining_versions.code_version IS NOT NULL AS draining
FROM versions
LEFT JOIN last_seen
    ON (last_seen.code_version, last_seen.queue) = (versions.code_version, versions.queue)
LEFT JOIN draining_versions ON draining_versions.code_version = versions.code_version
ORDER BY last_seen.last_heartbeat_at DESC NULLS LAST, versions.code_version, versions.queue;

-- name: ListDurableTasksToCheck :many
-- The durable tasks a determinism check replays: every unfinished one that
-- has started (a task that never ran has no history to break), and, when
-- ran_since is given, the finished ones whose last attempt started since
-- then; of one code version, when it is given.
SELECT *
FROM tasks
WHERE durable AND started_at IS NOT NULL
  AND (status NOT IN ('completed', 'failed', 'cancelled')
       OR started_at >= sqlc.narg(ran_since)::timestamptz)
  AND (sqlc.narg(code_version)::text IS NULL OR code_version = sqlc.narg(code_version)::text)
ORDER BY id;

-- name: GetWait :one
-- A wait as it is, read without a lock (the determinism check only reads).
SELECT *
FROM event_waits
WHERE task_id = sqlc.arg(task_id) AND event_number = sqlc.arg(event_number);

-- name: CountUnfinishedPatchMarkers :many
-- For each patch, how many unfinished durable tasks hold its marker: the
-- histories that need `ctx.deprecate_patch` (or the `if ctx.patched`) kept.
SELECT task_events.name, count(DISTINCT task_events.task_id)::bigint AS tasks
FROM task_events
JOIN tasks ON tasks.id = task_events.task_id
WHERE task_events.kind = 'patch' AND tasks.status NOT IN ('completed', 'failed', 'cancelled')
GROUP BY task_events.name
ORDER BY task_events.name;

-- Retention (lesson 15): what has been finished for the policy's period goes,
-- in small batches, each its own short transaction (see retention.py).

-- name: SetRetentionPolicy :one
UPDATE retention_policy
SET keep_finished_for = sqlc.arg(keep_finished_for_seconds)::double precision
        * interval '1 second',
    archive = sqlc.arg(archive)
RETURNING *;

-- name: ChooseTreesToRemove :many
-- The next max_roots trees retention may look at, after the last one the
-- previous batch looked at (finished_at, id), among the roots in the ranges
-- of ids given (range_firsts[i] to range_ends[i]): the ranges that are
-- deleted row by row, because an unfinished task pins them
-- (PartitionIsPinned) or they fill more slowly than the period
-- (ListSlowOpenPartitions); every other range is dropped whole once it may
-- go. A root is a task that is no
-- one's child, finished for longer than the policy keeps; its tree is the
-- root with its children, theirs, and so on. One row per task of each tree,
-- and whether the tree may go: it may not while any of its tasks is
-- unfinished (a child spawned and never waited for, still running), nor while
-- a task outside it still needs one of its tasks: a history that names one as
-- its child (a fork's copied events, a task sharing an idempotent child),
-- events copied from one, or a fork of one. Those wait for a later pass.
--
-- The roots are locked, and passed over when another transaction holds one
-- (a fork or a replay of it, or another worker's retention): the two never
-- touch one tree at once. The rest of each tree is locked next, by
-- LockFinishedTasks: an operator may replay a finished child meanwhile.
WITH RECURSIVE roots AS (
    SELECT root.id, root.finished_at
    FROM tasks AS root
    WHERE root.finished_at IS NOT NULL AND root.parent_id IS NULL
      AND EXISTS (
          SELECT 1
          FROM unnest(sqlc.arg(range_firsts)::bigint[]) WITH ORDINALITY AS first(id, n)
          JOIN unnest(sqlc.arg(range_ends)::bigint[]) WITH ORDINALITY AS past(id, n) USING (n)
          WHERE root.id >= first.id AND root.id < past.id
      )
      AND root.finished_at < now() - (SELECT keep_finished_for FROM retention_policy)
      AND (root.finished_at, root.id)
          > (sqlc.arg(after_finished_at)::timestamptz, sqlc.arg(after_id)::bigint)
    ORDER BY root.finished_at, root.id
    LIMIT sqlc.arg(max_roots)
    FOR UPDATE SKIP LOCKED
),
tree AS (
    SELECT roots.id AS root_id, roots.id AS task_id FROM roots
    UNION ALL
    SELECT tree.root_id, child.id
    FROM tree
    JOIN tasks AS child ON child.parent_id = tree.task_id
),
blocked AS (
    -- A task unfinished, or finished for less than the period (a child that
    -- ran on after its root finished gets its period too).
    SELECT tree.root_id
    FROM tree
    JOIN tasks ON tasks.id = tree.task_id
    WHERE tasks.finished_at IS NULL
       OR tasks.finished_at >= now() - (SELECT keep_finished_for FROM retention_policy)
    UNION
    SELECT tree.root_id
    FROM tree
    JOIN task_events AS event
        ON event.child_task_id = tree.task_id OR event.copied_from_task_id = tree.task_id
    WHERE NOT EXISTS (
        SELECT 1 FROM tree AS same
        WHERE same.root_id = tree.root_id AND same.task_id = event.task_id
    )
    UNION
    SELECT tree.root_id
    FROM tree
    JOIN tasks AS fork ON fork.forked_from_task_id = tree.task_id
    WHERE NOT EXISTS (
        SELECT 1 FROM tree AS same WHERE same.root_id = tree.root_id AND same.task_id = fork.id
    )
)
SELECT
    roots.id AS root_id,
    roots.finished_at AS root_finished_at,
    tree.task_id,
    NOT EXISTS (SELECT 1 FROM blocked WHERE blocked.root_id = roots.id) AS removable,
    -- The policy's archive flag, read by this statement like its period: a
    -- batch follows one policy, whatever changes it meanwhile.
    (SELECT archive FROM retention_policy) AS archive
FROM roots
JOIN tree ON tree.root_id = roots.id
ORDER BY roots.finished_at, roots.id, tree.task_id;

-- name: LockFinishedTasks :many
-- Lock the tasks of the trees about to go, and say which are still finished:
-- a task an operator's replay put back on the queue since ChooseTreesToRemove
-- looked (its lock waited for the replay to commit, then read the row anew)
-- is not, and its tree must stay.
SELECT id
FROM tasks
WHERE id = ANY(sqlc.arg(task_ids)::bigint[]) AND finished_at IS NOT NULL
ORDER BY id
FOR UPDATE;

-- name: ListTasksNeededFromOutside :many
-- After LockFinishedTasks, with a snapshot taken after its locks were granted:
-- the tasks among task_ids that a task outside them needs now. A fork of one
-- (which locks the task it copies) or an enqueue that found one by its
-- idempotency key (which updates its row) held the lock first, and committed
-- while LockFinishedTasks waited: ChooseTreesToRemove, whose snapshot was
-- older, did not see it. Their trees must stay. No foreign key would refuse
-- the delete now: the partitioned tables have none.
SELECT candidate.id::bigint AS id
FROM unnest(sqlc.arg(task_ids)::bigint[]) AS candidate(id)
WHERE EXISTS (
        SELECT 1 FROM task_events AS event
        WHERE (event.child_task_id = candidate.id OR event.copied_from_task_id = candidate.id)
          AND event.task_id <> ALL(sqlc.arg(task_ids)::bigint[])
    )
   OR EXISTS (
        SELECT 1 FROM tasks AS other
        WHERE (other.forked_from_task_id = candidate.id OR other.parent_id = candidate.id)
          AND other.id <> ALL(sqlc.arg(task_ids)::bigint[])
    )
ORDER BY candidate.id;

-- name: ArchiveTree :execrows
-- Copy the tasks of one tree, each with its history (its events, each with
-- its wait), into archived_tasks, before RemoveTasks removes them.
INSERT INTO archived_tasks (task_id, root_task_id, task, history)
SELECT
    tasks.id,
    sqlc.arg(root_id)::bigint,
    to_jsonb(tasks),
    coalesce((
        SELECT jsonb_agg(
            to_jsonb(event) || jsonb_build_object('wait', to_jsonb(wait))
            ORDER BY event.event_number
        )
        FROM task_events AS event
        LEFT JOIN event_waits AS wait
            ON (wait.task_id, wait.event_number) = (event.task_id, event.event_number)
        WHERE event.task_id = tasks.id
    ), '[]'::jsonb)
FROM tasks
WHERE tasks.id = ANY(sqlc.arg(task_ids)::bigint[])
ON CONFLICT (task_id) DO NOTHING;

-- name: RemoveTasks :execrows
-- Remove tasks with everything that is theirs: their waits, their events, the
-- ticks that enqueued them, their idempotency keys. Returns how many tasks went.
WITH removed_keys AS (
    DELETE FROM idempotency_keys WHERE task_id = ANY(sqlc.arg(task_ids)::bigint[])
),
removed_waits AS (
    DELETE FROM event_waits WHERE task_id = ANY(sqlc.arg(task_ids)::bigint[])
),
removed_events AS (
    DELETE FROM task_events WHERE task_id = ANY(sqlc.arg(task_ids)::bigint[])
),
removed_ticks AS (
    DELETE FROM schedule_ticks WHERE task_id = ANY(sqlc.arg(task_ids)::bigint[])
)
DELETE FROM tasks WHERE id = ANY(sqlc.arg(task_ids)::bigint[]);

-- name: RemoveOldExternalEvents :execrows
-- External events pushed longer ago than the policy keeps that no wait holds:
-- an event only ends a wait open when it is pushed, so one that ended none,
-- or whose waits are gone with their tasks, will never be read again.
DELETE FROM external_events
WHERE id IN (
    SELECT old.id
    FROM external_events AS old
    WHERE old.pushed_at < now() - (SELECT keep_finished_for FROM retention_policy)
      AND NOT EXISTS (SELECT 1 FROM event_waits WHERE event_waits.external_event_id = old.id)
    ORDER BY old.pushed_at
    LIMIT sqlc.arg(max_rows)
    FOR UPDATE SKIP LOCKED
);

-- name: RemoveDeadWorkers :execrows
-- The rows of workers that stopped, or whose lease expired, longer ago than
-- the policy keeps, and that run nothing (a task's row names its worker).
DELETE FROM workers
WHERE id IN (
    SELECT dead.id
    FROM workers AS dead
    WHERE coalesce(dead.stopped_at, dead.lease_expires_at)
          < now() - (SELECT keep_finished_for FROM retention_policy)
      AND NOT EXISTS (
          SELECT 1 FROM tasks WHERE tasks.worker_id = dead.id AND tasks.status = 'running'
      )
    ORDER BY dead.id
    LIMIT sqlc.arg(max_rows)
    FOR UPDATE SKIP LOCKED
);

-- name: RemoveOldSkippedTicks :execrows
-- Ticks a catch-up policy skipped (no task to go with) older than the policy
-- keeps. Fired ticks go with their tasks (RemoveTasks).
DELETE FROM schedule_ticks
WHERE (schedule, tick_at) IN (
    SELECT old.schedule, old.tick_at
    FROM schedule_ticks AS old
    WHERE old.task_id IS NULL
      AND old.recorded_at < now() - (SELECT keep_finished_for FROM retention_policy)
    ORDER BY old.recorded_at
    LIMIT sqlc.arg(max_rows)
    FOR UPDATE SKIP LOCKED
);

-- name: TableSizes :many
-- What a DBA watches, table by table (history_tool stats): live and dead rows
-- as the statistics collector counts them (dead rows are what vacuum has not
-- reclaimed yet), the size with indexes and TOAST, how many updates were HOT
-- (heap-only: no index entry written, because no indexed column changed and
-- the page had room), and when autovacuum last passed. A partitioned table is
-- one row, the sum of its partitions (autovacuum works on each partition: the
-- latest of their times), with how many there are.
WITH tables AS (
    SELECT class.oid, class.relname, class.relkind
    FROM pg_catalog.pg_class AS class
    WHERE class.relnamespace = current_schema()::regnamespace
      AND class.relkind IN ('r', 'p') AND NOT class.relispartition
),
leaves AS (
    -- A table that is not partitioned is its own one leaf.
    SELECT tables.relname, tables.oid AS leaf, false AS is_partition
    FROM tables
    WHERE tables.relkind = 'r'
    UNION ALL
    SELECT tables.relname, inherits.inhrelid, true
    FROM tables
    JOIN pg_catalog.pg_inherits AS inherits ON inherits.inhparent = tables.oid
)
SELECT
    leaves.relname::text AS table_name,
    count(*) FILTER (WHERE leaves.is_partition)::bigint AS partitions,
    sum(pg_stat_get_live_tuples(leaves.leaf))::bigint AS live_rows,
    sum(pg_stat_get_dead_tuples(leaves.leaf))::bigint AS dead_rows,
    sum(pg_total_relation_size(leaves.leaf))::bigint AS total_bytes,
    sum(pg_indexes_size(leaves.leaf))::bigint AS index_bytes,
    sum(pg_stat_get_tuples_updated(leaves.leaf))::bigint AS updates,
    sum(pg_stat_get_tuples_hot_updated(leaves.leaf))::bigint AS hot_updates,
    -- NULL when autovacuum never passed (a CASE, so that sqlc types it so).
    CASE WHEN true THEN max(pg_stat_get_last_autovacuum_time(leaves.leaf)) END AS last_autovacuum
FROM leaves
GROUP BY leaves.relname
ORDER BY sum(pg_total_relation_size(leaves.leaf)) DESC, leaves.relname;

-- name: ContinueAsNew :one
-- End a durable task's history and go on as a new task (continue-as-new): the
-- successor runs the same function on the queue, with `input` (the state the
-- function carries over) and an empty history; this task completes, its
-- output naming the successor. One statement, fenced like AppendEvent: only
-- the worker that owns this attempt, of a task no one has cancelled, and that
-- is no one's child (a parent waits for its child's own result, not a
-- successor's). No row: refused. The successor takes the version of whichever
-- worker claims it first: a continuation is where a long-running task picks up
-- new code.
WITH predecessor AS (
    SELECT running.*
    FROM tasks AS running
    WHERE running.id = sqlc.arg(id)::bigint AND running.status = 'running'
      AND running.attempt = sqlc.arg(attempt)::integer
      AND running.worker_id = sqlc.arg(worker_id)::bigint
      AND running.cancel_requested_at IS NULL AND running.parent_id IS NULL
    FOR UPDATE
),
successor AS (
    INSERT INTO tasks (
        queue, task_name, display_name, input, priority, max_retries, execution_timeout,
        durable, concurrency_key, hold_while_suspended, rate_limit, rate_units,
        continued_from_task_id
    )
    SELECT
        queue, task_name, display_name, sqlc.arg(input), priority, max_retries,
        execution_timeout, durable, concurrency_key, hold_while_suspended, rate_limit,
        rate_units, id
    FROM predecessor
    RETURNING id
)
UPDATE tasks
SET status = 'completed',
    output = jsonb_build_object('continued_as', successor.id),
    continued_as_task_id = successor.id
FROM successor
WHERE tasks.id = sqlc.arg(id)::bigint
RETURNING tasks.continued_as_task_id;

-- name: CountEngineRows :one
-- How many rows the engine's growing tables hold now (main.py prints them as
-- the year goes by; they must stay flat).
SELECT
    (SELECT count(*) FROM tasks)::bigint AS tasks,
    (SELECT count(*) FROM task_events)::bigint AS task_events,
    (SELECT count(*) FROM event_waits)::bigint AS event_waits,
    (SELECT count(*) FROM external_events)::bigint AS external_events,
    (SELECT count(*) FROM workers)::bigint AS workers,
    (SELECT count(*) FROM task_partitions)::bigint AS ranges;

-- name: ListArchivedTasks :many
SELECT * FROM archived_tasks ORDER BY task_id;

-- name: SetPartitioning :one
-- See set_partitioning in schema.sql.
SELECT set_partitioning(sqlc.arg(partition_size), sqlc.arg(partitions_ahead))::integer AS made;

-- name: AddTaskPartitions :one
-- See add_task_partitions in schema.sql.
SELECT add_task_partitions()::integer AS added;

-- name: ListPartitions :many
-- The ranges, oldest first, each with its tasks (as the statistics collector
-- counts them: a guess, read without scanning) and its size.
SELECT
    ranges.first_id,
    ranges.end_id,
    ranges.created_at,
    ranges.removing_since,
    coalesce(pg_stat_get_live_tuples(to_regclass('tasks_from_' || ranges.first_id)), 0)::bigint
        AS live_tasks,
    (
        coalesce(pg_total_relation_size(to_regclass('tasks_from_' || ranges.first_id)), 0)
        + coalesce(pg_total_relation_size(to_regclass('task_events_from_' || ranges.first_id)), 0)
        + coalesce(pg_total_relation_size(to_regclass('event_waits_from_' || ranges.first_id)), 0)
    )::bigint AS total_bytes
FROM task_partitions AS ranges
ORDER BY ranges.first_id;

-- name: NextTaskId :one
SELECT next_task_id()::bigint AS next_id;

-- name: PartitionIsPinned :one
-- Whether an unfinished task keeps a range that may not go (after
-- MarkPartitionForRemoval said so): one of its own, or one outside that
-- needs one of its tasks (an unfinished child of one, a history naming one
-- as its child or its events' source, a fork of one). Such a range may stay
-- for months (a subscription): retention deletes its finished trees row by
-- row meanwhile. A range kept only by finished tasks (within the period, or
-- in a younger range not dropped yet) is not pinned: it is dropped whole at
-- a later pass.
SELECT (
    EXISTS (
        SELECT 1 FROM tasks
        WHERE tasks.id >= sqlc.arg(first_id) AND tasks.id < sqlc.arg(end_id)
          AND tasks.finished_at IS NULL
    )
    OR EXISTS (
        SELECT 1 FROM tasks AS other
        WHERE (
                (other.parent_id >= sqlc.arg(first_id) AND other.parent_id < sqlc.arg(end_id))
                OR (
                    other.forked_from_task_id >= sqlc.arg(first_id)
                    AND other.forked_from_task_id < sqlc.arg(end_id)
                )
            )
          AND (other.id < sqlc.arg(first_id) OR other.id >= sqlc.arg(end_id))
          AND other.finished_at IS NULL
    )
    OR EXISTS (
        SELECT 1
        FROM task_events AS event
        JOIN tasks AS other ON other.id = event.task_id
        WHERE (
                (event.child_task_id >= sqlc.arg(first_id) AND event.child_task_id < sqlc.arg(end_id))
                OR (
                    event.copied_from_task_id >= sqlc.arg(first_id)
                    AND event.copied_from_task_id < sqlc.arg(end_id)
                )
            )
          AND (event.task_id < sqlc.arg(first_id) OR event.task_id >= sqlc.arg(end_id))
          AND other.finished_at IS NULL
    )
)::boolean AS pinned;

-- name: ListSlowOpenPartitions :many
-- The ranges not full yet (the next id is in them, or before them) whose
-- oldest task was inserted longer ago than the period: a range that takes
-- longer than the period to fill (a quiet engine, 100,000 ids a range) would
-- keep what it holds for as long, so its finished trees are deleted row by
-- row, as a pinned range's.
SELECT ranges.*
FROM task_partitions AS ranges
WHERE ranges.end_id > next_task_id()
  AND (
      SELECT tasks.inserted_at FROM tasks
      WHERE tasks.id >= ranges.first_id AND tasks.id < ranges.end_id
      ORDER BY tasks.id
      LIMIT 1
  ) < now() - (SELECT keep_finished_for FROM retention_policy)
ORDER BY ranges.first_id;

-- name: ListPartitionsToLookAt :many
-- The ranges retention may remove, oldest first: the ones it chose already
-- (removing_since), to finish removing them, and the full ones (the next id
-- is past them) whose newest task was inserted longer ago than the period:
-- a younger range holds a task that cannot have finished long enough ago.
SELECT ranges.*
FROM task_partitions AS ranges
WHERE ranges.removing_since IS NOT NULL
   OR (
       ranges.end_id <= next_task_id()
       AND coalesce((
           SELECT tasks.inserted_at FROM tasks
           WHERE tasks.id >= ranges.first_id AND tasks.id < ranges.end_id
           ORDER BY tasks.id DESC
           LIMIT 1
       ), '-infinity') < now() - (SELECT keep_finished_for FROM retention_policy)
   )
ORDER BY ranges.first_id;

-- name: LockPartition :one
-- The first statement of a choice (MarkPartitionForRemoval): a replay or a
-- fork of one of the range's tasks that began already (LockPartitionOfTask)
-- is waited for, and one that begins now waits for the choice.
SELECT * FROM task_partitions WHERE first_id = sqlc.arg(first_id) FOR UPDATE;

-- name: RemovePartitionKeys :execrows
-- The second: the idempotency keys that name a task of the range go, so that
-- no enqueue finds one any more (an enqueue that found one already holds its
-- key's row, RepeatEnqueue, and this waited for it to commit). If the range
-- may not go after all, the transaction rolls back, and they are back.
DELETE FROM idempotency_keys
WHERE task_id >= sqlc.arg(first_id) AND task_id < sqlc.arg(end_id);

-- name: MarkPartitionForRemoval :execrows
-- The third, with a snapshot taken after the two above: the range is chosen
-- if all it holds may go, as a tree of ChooseTreesToRemove may: every task of
-- it finished for longer than the period, and no task outside it still
-- needing one of its tasks: a child of one of its tasks unfinished or
-- finished within the period (a tree goes whole), a history that names one
-- as its child (a task sharing an idempotent child, a fork's copied events),
-- events copied from one, a fork of one. The ranges an outside task belongs
-- to are younger: they go first, and this range at a later pass. 1: chosen.
UPDATE task_partitions AS ranges
SET removing_since = now()
WHERE ranges.first_id = sqlc.arg(first_id) AND ranges.removing_since IS NULL
  AND NOT EXISTS (
      SELECT 1 FROM tasks
      WHERE tasks.id >= ranges.first_id AND tasks.id < ranges.end_id
        AND (
            tasks.finished_at IS NULL
            OR tasks.finished_at >= now() - (SELECT keep_finished_for FROM retention_policy)
        )
  )
  AND NOT EXISTS (
      SELECT 1 FROM tasks AS child
      WHERE child.parent_id >= ranges.first_id AND child.parent_id < ranges.end_id
        AND (child.id < ranges.first_id OR child.id >= ranges.end_id)
        AND (
            child.finished_at IS NULL
            OR child.finished_at >= now() - (SELECT keep_finished_for FROM retention_policy)
        )
  )
  AND NOT EXISTS (
      SELECT 1 FROM task_events AS event
      WHERE (
              (event.child_task_id >= ranges.first_id AND event.child_task_id < ranges.end_id)
              OR (
                  event.copied_from_task_id >= ranges.first_id
                  AND event.copied_from_task_id < ranges.end_id
              )
          )
        AND (event.task_id < ranges.first_id OR event.task_id >= ranges.end_id)
  )
  AND NOT EXISTS (
      SELECT 1 FROM tasks AS fork
      WHERE fork.forked_from_task_id >= ranges.first_id
        AND fork.forked_from_task_id < ranges.end_id
        AND (fork.id < ranges.first_id OR fork.id >= ranges.end_id)
  );

-- name: LockPartitionOfTask :one
-- A replay or a fork of a task first locks its range's row (FOR SHARE, so
-- that replays and forks never wait for each other): a range retention chose
-- (removing_since) refuses them, and a choice waits for them (LockPartition).
SELECT ranges.*
FROM task_partitions AS ranges
WHERE sqlc.arg(task_id)::bigint >= ranges.first_id AND sqlc.arg(task_id)::bigint < ranges.end_id
FOR SHARE;

-- name: ArchivePartitionTasks :one
-- With an archiving policy, before a chosen range's partitions go: the next
-- max_rows of its tasks after after_id, each with its history, into
-- archived_tasks (as ArchiveTree; its root is its oldest ancestor still
-- there). Returns how many were archived and the last id looked at (NULL: none left).
WITH RECURSIVE batch AS (
    SELECT * FROM tasks
    WHERE tasks.id >= sqlc.arg(first_id) AND tasks.id < sqlc.arg(end_id)
      AND tasks.id > sqlc.arg(after_id)
    ORDER BY tasks.id
    LIMIT sqlc.arg(max_rows)
),
ancestry AS (
    SELECT batch.id AS task_id, batch.id AS ancestor_id, batch.parent_id, 0 AS depth
    FROM batch
    UNION ALL
    SELECT ancestry.task_id, parent.id, parent.parent_id, ancestry.depth + 1
    FROM ancestry
    JOIN tasks AS parent ON parent.id = ancestry.parent_id
),
roots AS (
    SELECT DISTINCT ON (task_id) task_id, ancestor_id AS root_id
    FROM ancestry
    ORDER BY task_id, depth DESC
),
archived AS (
    INSERT INTO archived_tasks (task_id, root_task_id, task, history)
    SELECT
        batch.id,
        roots.root_id,
        to_jsonb(batch),
        coalesce((
            SELECT jsonb_agg(
                to_jsonb(event) || jsonb_build_object('wait', to_jsonb(wait))
                ORDER BY event.event_number
            )
            FROM task_events AS event
            LEFT JOIN event_waits AS wait
                ON (wait.task_id, wait.event_number) = (event.task_id, event.event_number)
            WHERE event.task_id = batch.id
        ), '[]'::jsonb)
    FROM batch
    JOIN roots ON roots.task_id = batch.id
    ON CONFLICT (task_id) DO NOTHING
    RETURNING 1
)
SELECT
    (SELECT count(*) FROM archived)::bigint AS archived,
    (SELECT max(id) FROM batch)::bigint AS last_id;

-- name: RemovePartitionTicks :execrows
-- The ticks that enqueued the tasks of a chosen range go with them.
DELETE FROM schedule_ticks
WHERE task_id >= sqlc.arg(first_id) AND task_id < sqlc.arg(end_id);

-- name: ListPartitionTables :many
-- The partitions of a range that are still there, in the order they are
-- detached (waits, then events, then tasks: a crash between two leaves no
-- wait or event without its task), and whether a detach of one began and was
-- interrupted (it is finished, FINALIZE, before anything else is done to it).
SELECT
    parent.relname::text AS parent_name,
    part.relname::text AS partition_name,
    coalesce(inherits.inhdetachpending, false) AS detach_pending,
    inherits.inhrelid IS NOT NULL AS attached
FROM unnest(ARRAY['event_waits', 'task_events', 'tasks']) WITH ORDINALITY AS t(name, position)
JOIN pg_catalog.pg_class AS parent
    ON parent.relname = t.name AND parent.relnamespace = current_schema()::regnamespace
JOIN pg_catalog.pg_class AS part
    ON part.relname = t.name || '_from_' || sqlc.arg(first_id)::bigint
   AND part.relnamespace = current_schema()::regnamespace
LEFT JOIN pg_catalog.pg_inherits AS inherits
    ON inherits.inhrelid = part.oid AND inherits.inhparent = parent.oid
ORDER BY t.position;

-- name: ForgetPartition :execrows
-- A range whose partitions are all gone.
DELETE FROM task_partitions WHERE first_id = sqlc.arg(first_id) AND removing_since IS NOT NULL;

-- name: TryLockPartitionMaintenance :one
-- One worker at a time adds and removes ranges (a session's advisory lock,
-- held by retention's connection for its pass; the others skip the ranges
-- until their next pass). Named after the schema: another schema's engine
-- is another lock.
SELECT pg_try_advisory_lock(hashtextextended(current_schema() || '.task_partitions', 0))
    AS locked;

-- name: GetRetentionPolicy :one
SELECT * FROM retention_policy;
