-- A task queue in one table.
--
-- A task is a row. Its status says where it is in its life:
--   queued -> running -> completed | failed
-- and a failed attempt that has retries left goes from running back to queued.
-- A durable task can also be suspended: running -> suspended -> running. It
-- waits, on no worker, until its wake_at comes (a sleep is over) or a child it
-- waits for finishes; then it is claimed again, and goes on with its attempt.

CREATE TYPE task_status AS ENUM ('queued', 'running', 'completed', 'failed', 'suspended');

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
    durable boolean NOT NULL DEFAULT false,
    -- The durable task that spawned this one as a child (NULL for a task
    -- enqueued by a client): when this task finishes, it wakes its parent up.
    parent_id bigint REFERENCES tasks (id),
    -- When a suspended task may run again: a claim takes it once this time has
    -- come. NULL while it waits for nothing but a child to finish.
    wake_at timestamptz
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

-- Suspended tasks, by queue and wake-up time: the claim finds the ones whose
-- time has come, and the poller how long until the next one. Only suspended
-- tasks are in it, however many have finished.
CREATE INDEX tasks_suspended_idx ON tasks (queue, wake_at) WHERE status = 'suspended';

-- Queued tasks with a schedule deadline, soonest first, for the sweep that
-- fails those not started in time. Tasks without a deadline are not in it.
CREATE INDEX tasks_schedule_deadline_idx ON tasks (schedule_deadline)
    WHERE status = 'queued' AND schedule_deadline IS NOT NULL;

-- What a durable operation is: a step, a function the durable function ran in
-- its own attempt, with its input and the output it returned; a child, a task
-- the durable function put on the queue (its id is in child_task_id); a
-- sleep, a pause until the time in wake_at; or a child wait, a wait for a
-- child with a timeout (its id in input), until the deadline in wake_at at the
-- latest.
CREATE TYPE event_kind AS ENUM ('step', 'child', 'sleep', 'child_wait');

-- The history of durable tasks: one row per durable operation, numbered 1, 2,
-- 3... in the order the function made them. Rows are only ever added, never
-- deleted, and changed once at most (a child wait that times out records it in
-- its output), and the primary key makes sure that an event number is written
-- at most once: a later attempt *reads* events 1..n, it does not write them
-- again.
CREATE TABLE task_events (
    task_id bigint NOT NULL REFERENCES tasks (id),
    event_number integer NOT NULL CHECK (event_number > 0),
    kind event_kind NOT NULL,
    -- The step's name, or the child's task name, as the durable function called it.
    name text NOT NULL,
    input jsonb NOT NULL,
    -- Which call this event records: the SHA-256 (hex) of the canonical JSON of
    -- [kind, name, input]. A later attempt must make the same call at the same
    -- event number, so it must come up with the same key (see durable.py).
    key text NOT NULL,
    -- What the step returned: on a later attempt the step is not run again,
    -- and this is returned instead. (A child's output is in the child's row.)
    output jsonb,
    -- The child task this event created: on a later attempt no other child is
    -- created, this one is waited for again.
    child_task_id bigint REFERENCES tasks (id),
    -- When the sleep this event records is over: computed once, on the
    -- database's clock, when the sleep was first reached. A later attempt
    -- sleeps until this time; it does not start the sleep again.
    wake_at timestamptz,
    -- The attempt that recorded it, for people reading the history.
    attempt integer NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, event_number),
    CHECK ((kind = 'child') = (child_task_id IS NOT NULL)),
    CHECK ((kind IN ('sleep', 'child_wait')) = (wake_at IS NOT NULL))
);

-- Wake-ups. Each worker LISTENs on the channel below (see listener.py):
--
--   <schema>.task_queued      payload: a queue's name. A task of that queue was
--                             enqueued, or queued again, or a suspended task
--                             of that queue has a new wake-up time: workers of
--                             that queue claim at once instead of at their
--                             next poll.
--
-- (Lesson 08 had a second channel, child_finished, to wake a parent waiting in
-- its worker's thread. A waiting parent is suspended now: the child's end
-- makes it claimable, in the database, and the channel above says so.)
--
-- NOTIFY channels are database-wide, so they are named after the schema: two
-- copies of these tables (another lesson, a test) never wake each other. A
-- notification is delivered when the transaction that sent it commits, and
-- only to sessions listening at that moment: it is a hint ("look now"), never
-- the work itself, and polling stays as the fallback.
--
-- A channel's name is an identifier, 63 bytes at most, and pg_notify refuses a
-- longer one: with a schema name that leaves no room for the suffix, every
-- enqueue would fail. So such a schema is refused here, once, when its tables
-- are created, with the limit in the message. (A shorter name derived from
-- the schema, say a hash, would accept every schema, but a channel would no
-- longer say whose it is, and the triggers, the listener and whoever reads
-- pg_listening_channels() would all have to share the rule.)
DO $$
DECLARE
    -- This lesson's channels, less the schema's name.
    suffixes text[] := ARRAY['.task_queued'];
    longest integer := (SELECT max(octet_length(suffix)) FROM unnest(suffixes) AS suffix);
BEGIN
    IF octet_length(current_schema()) + longest > 63 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'name_too_long',
            MESSAGE = format(
                'schema name %s is too long for this lesson''s notifications: a schema '
                'name may have %s bytes at most, so that its channels (<schema>%s) fit '
                'in 63', current_schema(), 63 - longest, array_to_string(suffixes, ', <schema>')
            );
    END IF;
END;
$$;

-- Enqueueing: one notification per queue per INSERT statement, however many
-- rows it inserts. A statement-level trigger runs once per statement, and the
-- transition table shows it all of the statement's new rows at once.
-- PostgreSQL then drops a notification that repeats one already sent in the
-- same transaction (same channel, same payload), so a transaction that
-- enqueues a thousand tasks, in one statement or in a thousand, wakes each
-- worker once.
--
-- One insert announces nothing: a child created by the very transaction that
-- suspends its parent to wait for it, on the parent's queue (ctx.call, see
-- durable.py). That commit gives the parent's slot back to the worker that
-- ran it, a worker of this queue, and that worker wakes its own poller, in
-- its process, to claim the child: every other worker would only wake to
-- find nothing to claim, or claim the child a moment before a worker that
-- had a free slot anyway. "Suspended by this transaction" is exact: the
-- parent's row version was written by the current transaction (its xmin is
-- our transaction id). Every other insert notifies as before: a client's
-- enqueue, spawn_child (its parent goes on running), a child on another
-- queue, a parent suspended by an earlier transaction, any SQL of one's own.
-- Should that worker die right after the commit, the child waits for the
-- next poll of another worker (poll_interval at most): a hint lost, never a
-- task, as with any notification.
--
-- The parent is joined by its id and nothing else, then tested: the join
-- can only be a look in the primary key. Asked as NOT EXISTS (a suspended
-- parent on this queue, with this id), the condition also matches
-- tasks_suspended_idx, and the planner, which plans this statement once per
-- connection on a table with no statistics yet (a fresh worker's), chose to
-- read that whole index, every suspended task, at every insert: with 4,000
-- orders in flight, a fifth of the server's time (issue 21, measured).
CREATE FUNCTION notify_tasks_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '.task_queued', queues.queue)
    FROM (
        SELECT DISTINCT inserted.queue
        FROM inserted
        LEFT JOIN tasks AS parent ON parent.id = inserted.parent_id
        WHERE inserted.status = 'queued'
          AND (
              parent.id IS NULL
              OR parent.queue <> inserted.queue
              OR parent.status <> 'suspended'
              OR parent.xmin <> pg_current_xact_id()::xid
          )
    ) AS queues;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_inserted_notify
    AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT
    EXECUTE FUNCTION notify_tasks_inserted();

-- Back on the queue (a retry, a reassignment), and suspended tasks with a new
-- wake-up time: row triggers, but only for the rows concerned. Claims and
-- results change many rows a second: the WHEN conditions are checked without
-- calling a function, so the rows they do not match cost next to nothing.
-- Repeats in one transaction are dropped as above.
CREATE FUNCTION notify_task_requeued() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '.task_queued', NEW.queue);
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_requeued_notify
    AFTER UPDATE OF status ON tasks
    FOR EACH ROW
    WHEN (NEW.status = 'queued' AND OLD.status <> 'queued')
    EXECUTE FUNCTION notify_task_requeued();

-- A sleep that begins (its wake_at is ahead), or a suspended task woken by its
-- child (its wake_at is now). Time itself notifies nobody: a worker that hears
-- of a wake-up time ahead claims nothing yet, but its poller now waits no
-- longer than until then (see engine/poller.py). A task suspended to wait for its
-- child, with no wake_at, has nothing to announce.
CREATE TRIGGER tasks_wake_at_notify
    AFTER UPDATE OF wake_at ON tasks
    FOR EACH ROW
    WHEN (
        NEW.status = 'suspended'
        AND NEW.wake_at IS NOT NULL
        AND NEW.wake_at IS DISTINCT FROM OLD.wake_at
    )
    EXECUTE FUNCTION notify_task_requeued();

-- ---------------------------------------------------------------------------
-- The demonstration's tables: the example's own data, not the engine's.
-- ---------------------------------------------------------------------------

-- The world of the example, process_order: what its child tasks do. A real
-- payment provider and mail server live elsewhere; here they are two tables,
-- so that a test can count what happened.
--
-- A child task can run more than once (its worker may die after charging but
-- before the task is recorded complete), so each effect carries the id of the
-- task that caused it, unique, the way a payment API takes an idempotency key:
-- the second run of the same task finds the first run's charge instead of
-- charging again.
CREATE TABLE charges (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id text NOT NULL,
    amount_cents integer NOT NULL,
    task_id bigint NOT NULL UNIQUE,
    charged_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE emails (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id text NOT NULL,
    recipient text NOT NULL,
    subject text NOT NULL,
    task_id bigint NOT NULL UNIQUE,
    sent_at timestamptz NOT NULL DEFAULT now()
);

-- The world of this lesson's reminders: a reminder "sent" is a row, stamped
-- with the database's clock at the moment it was sent, so that the gaps
-- between a flow's reminders can be measured. There is no idempotency key on
-- purpose: the rows count how many times the step that sends them ran.
CREATE TABLE reminders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The send_reminders task whose step sent it, and which of its reminders it is.
    task_id bigint NOT NULL REFERENCES tasks (id),
    number integer NOT NULL,
    recipient text NOT NULL,
    sent_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
