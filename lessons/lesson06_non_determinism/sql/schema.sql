-- A task queue in one table.
--
-- A task is a row. Its status says where it is in its life:
--   queued -> running -> completed | failed
-- and a failed attempt that has retries left goes from running back to queued.

CREATE TYPE task_status AS ENUM ('queued', 'running', 'completed', 'failed');

-- Every worker registers itself here and holds a *lease*: it is presumed alive
-- until lease_expires_at, and each heartbeat extends the lease by the worker's
-- own lease_seconds (its inactivity threshold). A worker whose lease has
-- expired is presumed dead, and the tasks it was running are taken back. The
-- length of the lease is the promise of the worker that heartbeats, not the
-- opinion of whoever sweeps: a worker that beats every 3 s with a 20 s lease is
-- alive to a sweeper whose own lease is 1 s.
CREATE TABLE workers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Host and process id, for people reading the table.
    name text NOT NULL,
    queue text NOT NULL,
    slots integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at timestamptz NOT NULL DEFAULT now(),
    lease_seconds double precision NOT NULL CHECK (lease_seconds > 0),
    lease_expires_at timestamptz NOT NULL,
    -- Set by a graceful stop. A worker that died never sets it.
    stopped_at timestamptz
);

CREATE TABLE tasks (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    inserted_at timestamptz NOT NULL DEFAULT now(),
    -- Workers poll one queue; a queue is just a name.
    queue text NOT NULL,
    -- Which registered function runs this task.
    task_name text NOT NULL,
    -- What people see in logs and dashboards (defaults to the task name).
    display_name text NOT NULL,
    input jsonb NOT NULL,
    -- The function's result when completed; an error document when failed, or
    -- the last attempt's error while the task waits for its next attempt.
    output jsonb,
    status task_status NOT NULL DEFAULT 'queued',
    -- Higher runs first; equal priorities run in the order they were enqueued.
    priority integer NOT NULL DEFAULT 0,
    -- The number of the current (or last) attempt: 0 until the task first starts.
    attempt integer NOT NULL DEFAULT 0,
    -- A failed attempt is retried while attempt - infrastructure_attempts <=
    -- max_retries, so a task runs at most max_retries + 1 times, not counting the
    -- attempts the infrastructure ended.
    max_retries integer NOT NULL DEFAULT 3,
    -- Attempts that ended because the database stayed out of reach (a durable
    -- operation ran out of statement retries): not the task's fault, so the
    -- retry rules subtract them, and they cost none of max_retries.
    infrastructure_attempts integer NOT NULL DEFAULT 0,
    -- An attempt running longer than this fails (NULL: no limit).
    execution_timeout interval,
    -- A task not started by this time fails without running (NULL: no limit).
    -- It only guards the first start, and is cleared when the task starts.
    schedule_deadline timestamptz,
    -- The worker running the current attempt, or that ran the last one. There is
    -- no foreign key on purpose: it would make every claim lock the worker's row.
    worker_id bigint,
    -- When the current (or last) attempt started.
    started_at timestamptz,
    -- A durable task runs a durable function, which keeps a history of what it
    -- did in task_events, so that a later attempt can pick up where the last
    -- one stopped instead of starting over.
    durable boolean NOT NULL DEFAULT false
);

-- The claim query asks for "the queued tasks of queue Q, highest priority
-- first, oldest first within a priority". This index holds exactly those rows,
-- in that order, and nothing else: a task leaves it the moment it is claimed,
-- so it stays small however many tasks have finished.
CREATE INDEX tasks_queued_idx ON tasks (queue, priority DESC, id) WHERE status = 'queued';

-- Running tasks, by worker: what a worker still owns, what a dead worker left
-- behind, and where a fenced write finds each attempt. Only running tasks are
-- in it, so it stays about as small as the number of busy slots.
CREATE INDEX tasks_running_idx ON tasks (worker_id, id) WHERE status = 'running';

-- Queued tasks with a schedule deadline, soonest first, for the sweep that
-- fails those not started in time. Tasks without a deadline are not in it.
CREATE INDEX tasks_schedule_deadline_idx ON tasks (schedule_deadline)
    WHERE status = 'queued' AND schedule_deadline IS NOT NULL;

-- What a durable operation is. So far there is one kind, a step: a function the
-- durable function ran, with its input and the output it returned.
CREATE TYPE event_kind AS ENUM ('step');

-- The history of durable tasks: one row per durable operation, numbered 1, 2,
-- 3... in the order the function made them. Rows are only ever added, never
-- changed or deleted, and the primary key makes sure that an event number is
-- written at most once: a later attempt *reads* events 1..n, it does not write
-- them again.
CREATE TABLE task_events (
    task_id bigint NOT NULL REFERENCES tasks (id),
    event_number integer NOT NULL CHECK (event_number > 0),
    kind event_kind NOT NULL,
    -- The step's name, as the durable function called it.
    name text NOT NULL,
    input jsonb NOT NULL,
    -- Which call this event records: the SHA-256 (hex) of the canonical JSON of
    -- [kind, name, input]. A later attempt must make the same call at the same
    -- event number, so it must come up with the same key (see durable.py).
    key text NOT NULL,
    -- What the step returned: on a later attempt the step is not run again,
    -- and this is returned instead.
    output jsonb,
    -- The attempt that recorded it, for people reading the history.
    attempt integer NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, event_number)
);
