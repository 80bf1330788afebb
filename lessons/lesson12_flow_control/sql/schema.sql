-- A task queue in one table.
--
-- A task is a row. Its status says where it is in its life:
--   queued -> running -> completed | failed
-- and a failed attempt that has retries left goes from running back to queued.
-- A durable task can also be suspended: running -> suspended -> running. It
-- waits, on no worker, until its wake_at comes (a sleep is over), a child it
-- waits for finishes, or an external event it waits for is pushed; then it is
-- claimed again, and goes on with its attempt.
--
-- Flow control (lesson 12): a task may carry a concurrency key (a tenant, a
-- user, an account), and its queue a limit of tasks running at once per key; a
-- task may also take units of a named rate limit. The claim admits a task only
-- within both, and takes the keys round robin, so that a key with ten thousand
-- tasks waiting delays a key with ten by a few turns at most.

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
    stopped_at timestamptz,
    -- Where this worker's last claim stopped in its walk round the keys of its
    -- queue (see keys_to_visit): its next claim goes on from there.
    key_walk_after text NOT NULL DEFAULT ''
);

-- What a queue does with keyed tasks: at most max_per_key of them with the
-- same key run at once, across all workers. A queue with no row here takes no
-- keyed tasks (enqueue refuses them): a limit is a decision, not a default.
--
-- at_limit says what happens to a task enqueued while its key is full:
--   wait                (the default) it waits on the queue for a free slot;
--   cancel_newest       it fails at once, ConcurrencyLimitReached: "one run
--                       per key at a time, drop the extra ones";
--   cancel_in_progress  it wins: the key's older *queued* tasks fail,
--                       Superseded, so the newest max_per_key are the ones
--                       that run. A running task finishes: stopping it halfway
--                       needs cancellation, which is lesson 13's.
--
-- hold_while_suspended: whether a suspended durable task keeps its key's slot
-- while it sleeps or waits. No (the default): a week-long wait does not take a
-- tenant's share, and the task needs a free slot again to resume. Yes: the
-- limit is mutual exclusion ("one deploy per environment"), which must hold
-- across the sleeps in the middle, too.
CREATE TYPE at_limit AS ENUM ('wait', 'cancel_newest', 'cancel_in_progress');

CREATE TABLE concurrency_limits (
    queue text PRIMARY KEY,
    max_per_key integer NOT NULL CHECK (max_per_key > 0),
    at_limit at_limit NOT NULL DEFAULT 'wait',
    hold_while_suspended boolean NOT NULL DEFAULT false
);

-- One row per key of a queue: how many of its tasks hold a slot now. This row
-- is what makes the limit exact. A claim locks it before it admits a task of
-- the key, and reads the count from it, so two claims never admit into the
-- same free slot; and a trigger keeps the count (see count_key_slots below),
-- so no path that ends a task can forget to give the slot back. The enqueue
-- creates the row, once per key.
CREATE TABLE concurrency_keys (
    queue text NOT NULL,
    key text NOT NULL,
    running integer NOT NULL DEFAULT 0 CHECK (running >= 0),
    PRIMARY KEY (queue, key)
);

-- A rate limit: at most `units` units granted in any window of length `per`
-- (say 100 calls per minute to a payment API), across all workers.
--
-- Its state is the log of the grants of the last `per`, in the row itself:
-- one timestamp per unit granted, oldest first, on the database's clock. A
-- claim locks the row, drops what has left the window, admits while the units
-- left cover a task, and appends the new grants, in one statement. Units are
-- spent, not borrowed: a task that fails, or whose worker dies, may have
-- called the API already, so its units come back only when they leave the
-- window. (A log of U timestamps is right for U up to some thousands; see the
-- README for larger limits.)
CREATE TABLE rate_limits (
    name text PRIMARY KEY,
    units integer NOT NULL CHECK (units > 0),
    per interval NOT NULL CHECK (per > interval '0'),
    granted_at timestamptz[] NOT NULL DEFAULT '{}'
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
    -- A failed attempt is retried while attempt - attempts_before_replay -
    -- infrastructure_attempts <= max_retries, so a task runs at most
    -- max_retries + 1 times (per replay), not counting the attempts the
    -- infrastructure ended.
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
    wake_at timestamptz,
    -- The attempts this task had used when it was last replayed (0: never).
    -- A replay gives the task a fresh retry budget, but its attempt numbers
    -- keep counting, so that no two attempts of a task ever share a number: a
    -- worker still holding an attempt from before the replay stays fenced out.
    attempts_before_replay integer NOT NULL DEFAULT 0,
    -- A fork is a new task that starts with a copy of another task's history
    -- up to (not including) event forked_at_event, and runs from there. These
    -- say which task and which event; both are NULL for a task that is not a fork.
    forked_from_task_id bigint REFERENCES tasks (id),
    forked_at_event integer CHECK (forked_at_event > 0),
    -- The task's concurrency key (NULL: none, the limits do not apply to it).
    concurrency_key text,
    -- Copied from the queue's limit when the task is enqueued, so that changing
    -- the limit later never changes what a task already counted holds.
    hold_while_suspended boolean NOT NULL DEFAULT false,
    -- Whether this task takes one of its key's slots now. Derived from the
    -- status, never written: every way a task stops running (it completes,
    -- fails, suspends, is reassigned, timed out, deleted) changes its status,
    -- and with it this, and the trigger that keeps the key's count.
    key_slot_held boolean NOT NULL GENERATED ALWAYS AS (
        concurrency_key IS NOT NULL
        AND (status = 'running' OR (status = 'suspended' AND hold_while_suspended))
    ) STORED,
    -- The rate limit this task's start takes rate_units of (NULL: none).
    rate_limit text REFERENCES rate_limits (name),
    rate_units integer CHECK (rate_units > 0),
    CHECK ((forked_from_task_id IS NULL) = (forked_at_event IS NULL)),
    -- '' stands for the keyless tasks in the walk over the keys (keys_to_visit).
    CHECK (concurrency_key <> ''),
    CHECK ((rate_limit IS NULL) = (rate_units IS NULL))
);

-- The claim query asks for "the queued tasks of queue Q, highest priority
-- first, oldest first within a priority". This index holds exactly those rows,
-- in that order, and nothing else: a task leaves it the moment it is claimed,
-- so it stays small however many tasks have finished.
CREATE INDEX tasks_queued_idx ON tasks (queue, priority DESC, id)
    WHERE status = 'queued' AND concurrency_key IS NULL AND rate_limit IS NULL;

-- The queued tasks with a rate limit, by limit: a claim takes, of each limit
-- that has units left, the best tasks it has units for, so that tasks whose
-- limit is spent never stand in front of the others.
CREATE INDEX tasks_rate_limited_queued_idx ON tasks (queue, rate_limit, priority DESC, id)
    WHERE status = 'queued' AND rate_limit IS NOT NULL;

-- The queued keyed tasks, by key, and by priority within a key: the fair claim
-- walks the distinct keys of this index one after the other, then takes each
-- key's best tasks from it. Keyless tasks are in tasks_queued_idx instead.
CREATE INDEX tasks_keyed_queued_idx ON tasks (queue, concurrency_key, priority DESC, id)
    WHERE status = 'queued' AND concurrency_key IS NOT NULL;

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

-- The forks of a task, for `history_tool tree`. Most tasks are not forks, and
-- are not in it.
CREATE INDEX tasks_forked_from_idx ON tasks (forked_from_task_id)
    WHERE forked_from_task_id IS NOT NULL;

-- What a durable operation is: a step, a function the durable function ran in
-- its own attempt, with its input and the output it returned; a child, a task
-- the durable function put on the queue (its id is in child_task_id); a sleep,
-- a pause until the time in wake_at; a child wait, a wait for a child with a
-- timeout (its id in input), until the deadline in wake_at at the latest; or a
-- wait for an external event whose key is the event's name, until the deadline
-- in wake_at at the latest.
CREATE TYPE event_kind AS ENUM ('step', 'child', 'sleep', 'child_wait', 'wait');

-- The history of durable tasks: one row per durable operation, numbered 1, 2,
-- 3... in the order the function made them. Attempts only ever add rows, never
-- delete them, and change one once at most (a child wait that times out
-- records it in its output), and the primary key makes sure that an event
-- number is written at most once: a later attempt *reads* events 1..n, it does
-- not write them again. Only an operator's replay deletes a history, all of it at once
-- (with its waits), and only of a task that has finished (see reruns.py).
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
    -- When the sleep this event records is over, or the wait times out:
    -- computed once, on the database's clock, when the operation was first
    -- reached. A later attempt waits until this time; it does not start again.
    wake_at timestamptz,
    -- The attempt that recorded it, for people reading the history.
    attempt integer NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    -- Set on the events a fork copied: the task that recorded this event (for
    -- a fork of a fork, the task that first recorded it), whose attempt
    -- `attempt` is. NULL on the events this task recorded itself.
    copied_from_task_id bigint REFERENCES tasks (id),
    PRIMARY KEY (task_id, event_number),
    CHECK ((kind = 'child') = (child_task_id IS NOT NULL)),
    CHECK ((kind IN ('sleep', 'child_wait', 'wait')) = (wake_at IS NOT NULL))
);

-- What the world pushes to the engine: a person's approval, a webhook. The
-- key says what it is about ("approval:A-1"), the payload what it says.
CREATE TABLE external_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key text NOT NULL,
    payload jsonb NOT NULL,
    pushed_at timestamptz NOT NULL DEFAULT now(),
    -- The client's own name for this push, when it gives one (a webhook's
    -- delivery id): a client that did not get the reply pushes again with the
    -- same name, and that is this event again, not a second one (see
    -- PushEvent). UNIQUE lets many rows have none: NULLs are all distinct.
    idempotency_key text UNIQUE,
    -- How many pushes brought this event: more than 1 when a client retried it.
    pushes integer NOT NULL DEFAULT 1
);

-- One row per wait for an external event, written with the wait's event in
-- the history, and ended once: by the first event pushed for its key while it
-- is open (external_event_id), or by its timeout (ended_at with no event).
-- Whoever ends it first, a push or the waiting task, ends it for good: the
-- other finds it ended. A later attempt reads it here, so a replay sees the
-- same event as the run that first got it: the push copies the event's payload
-- into the wait's row, so that the row the waiting task locks to look at its
-- wait is all it reads (see GetWaitForShare). A fork copies the waits of the
-- events it copies, ended as they are; an operator's replay deletes them.
CREATE TABLE event_waits (
    task_id bigint NOT NULL,
    event_number integer NOT NULL,
    key text NOT NULL,
    -- The wait's deadline: its event's wake_at.
    timeout_at timestamptz NOT NULL,
    -- The event that ended the wait; NULL while it is open, or if it timed out.
    external_event_id bigint REFERENCES external_events (id),
    -- That event's payload, as the push that ended the wait copied it here.
    payload jsonb,
    -- NULL while the wait is open.
    ended_at timestamptz,
    PRIMARY KEY (task_id, event_number),
    FOREIGN KEY (task_id, event_number) REFERENCES task_events (task_id, event_number),
    CHECK (external_event_id IS NULL OR ended_at IS NOT NULL),
    CHECK ((external_event_id IS NULL) = (payload IS NULL))
);

-- The open waits, by key: what a push looks for. A wait leaves it when it ends,
-- so it stays as small as the number of tasks waiting now.
CREATE INDEX event_waits_open_idx ON event_waits (key) WHERE ended_at IS NULL;

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

-- The count of each key's slots, kept by the database itself. Statement-level
-- triggers see all the rows a statement changed at once (transition tables),
-- so a claim of fifty tasks, or a batch of results, changes each key's count
-- once, by the difference between the slots its rows held before and after.
--
-- The keys are changed, and so locked, in their order: two result writers
-- that end tasks of the same keys never wait for each other in a circle
-- (deadlock). And a count that goes over its limit is refused: a claim
-- that admits too many fails, and admits nothing. The claim never does that
-- (it reads each key's count under the key's lock, see ClaimTasks); this is
-- the backstop that turns a bug into an error instead of a broken promise. A
-- count that goes down is never refused, so a limit lowered while tasks run
-- drains as they finish.
--
-- A slot given back is news for the workers of the queue: the key's next task
-- may run now. So it notifies, like an enqueue (and repeats are dropped).
CREATE FUNCTION count_key_slots() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    -- The keys whose count changes, in key order, and by how much.
    queues text[];
    keys text[];
    deltas integer[];
    now_running integer;
BEGIN
    -- Most statements change no count: none of their rows holds a slot, before
    -- or after (on a queue without keys, none ever does). Two probes of the
    -- transition tables tell, for a fraction of the sums below.
    IF TG_OP = 'INSERT' THEN
        IF NOT EXISTS (SELECT FROM new_rows WHERE key_slot_held) THEN
            RETURN NULL;
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        IF NOT EXISTS (SELECT FROM old_rows WHERE key_slot_held) THEN
            RETURN NULL;
        END IF;
    ELSIF NOT EXISTS (SELECT FROM new_rows WHERE key_slot_held)
        AND NOT EXISTS (SELECT FROM old_rows WHERE key_slot_held) THEN
        RETURN NULL;
    END IF;

    -- Slots held after the statement, minus slots held before, per key. (Each
    -- branch reads only the transition tables its operation has.)
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(queue ORDER BY queue, key), array_agg(key ORDER BY queue, key),
            array_agg(delta ORDER BY queue, key)
        INTO queues, keys, deltas
        FROM (SELECT queue, concurrency_key AS key, count(*)::integer AS delta
              FROM new_rows WHERE key_slot_held GROUP BY 1, 2) AS held;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(queue ORDER BY queue, key), array_agg(key ORDER BY queue, key),
            array_agg(delta ORDER BY queue, key)
        INTO queues, keys, deltas
        FROM (SELECT queue, concurrency_key AS key, -count(*)::integer AS delta
              FROM old_rows WHERE key_slot_held GROUP BY 1, 2) AS freed;
    ELSE
        SELECT array_agg(queue ORDER BY queue, key), array_agg(key ORDER BY queue, key),
            array_agg(delta ORDER BY queue, key)
        INTO queues, keys, deltas
        FROM (
            SELECT queue, key, sum(delta)::integer AS delta
            FROM (
                SELECT queue, concurrency_key AS key, 1 AS delta
                FROM new_rows WHERE key_slot_held
                UNION ALL
                SELECT queue, concurrency_key, -1
                FROM old_rows WHERE key_slot_held
            ) AS held
            GROUP BY queue, key
            HAVING sum(delta) <> 0
        ) AS net;
    END IF;

    -- One key at a time, in key order: each UPDATE locks its key's row until
    -- the transaction ends, so every transaction takes the locks in the same
    -- order. (And each finds its row by the primary key, however many keys
    -- the queue has.)
    FOR i IN 1 .. coalesce(cardinality(keys), 0) LOOP
        UPDATE concurrency_keys
        SET running = running + deltas[i]
        WHERE queue = queues[i] AND key = keys[i]
        RETURNING running INTO now_running;
        IF NOT FOUND THEN
            -- A task that bypassed CreateTask, which creates the key's row.
            RAISE EXCEPTION USING
                ERRCODE = 'foreign_key_violation',
                MESSAGE = format('key %s of queue %s has no row in concurrency_keys',
                                 keys[i], queues[i]);
        END IF;
        IF deltas[i] > 0 AND now_running > (
            SELECT max_per_key FROM concurrency_limits WHERE queue = queues[i]
        ) THEN
            RAISE EXCEPTION USING
                ERRCODE = 'check_violation',
                MESSAGE = format('over-admission: key %s of queue %s would have %s tasks '
                                 'running, over its limit', keys[i], queues[i], now_running);
        END IF;
        IF deltas[i] < 0 THEN
            PERFORM pg_notify(TG_TABLE_SCHEMA || '.task_queued', queues[i]);
        END IF;
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_inserted_count_key_slots
    AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION count_key_slots();

CREATE TRIGGER tasks_updated_count_key_slots
    AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION count_key_slots();

CREATE TRIGGER tasks_deleted_count_key_slots
    AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION count_key_slots();

-- The keys a claim visits, in order. A queue's keys take turns in a circle:
-- the keys that have queued tasks, in key order, and then the keyless tasks'
-- lane (written '', which no key may be: it sorts before every key), and round
-- again. A claim starts after `after_key`, where the same worker's last walk
-- stopped (workers.key_walk_after), so each walk goes on round the circle and
-- every key gets its turn, whatever its number of tasks and whatever the keys
-- before it hold. It goes round once at most.
--
-- Each step is one probe of tasks_keyed_queued_idx for the next key (a "skip
-- scan"): the walk costs one probe per key it visits, not one per task
-- waiting. It ends once it has visited max_open keys that look open (a count
-- below the limit and a queued task this worker can run; read without a
-- lock: only a hint, the claim locks and reads again), or max_visits keys.
CREATE FUNCTION keys_to_visit(
    queue_name text,
    after_key text,
    task_names text[],
    durable_task_names text[],
    max_open integer,
    max_visits integer
) RETURNS text[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    visit text[] := '{}';
    current_key text := after_key;
    next_key text;
    wrapped boolean := false;
    open_keys integer := 0;
BEGIN
    WHILE open_keys < max_open AND cardinality(visit) < max_visits LOOP
        SELECT t.concurrency_key INTO next_key
        FROM tasks AS t
        WHERE t.queue = queue_name AND t.status = 'queued' AND t.concurrency_key > current_key
        ORDER BY t.concurrency_key
        LIMIT 1;
        IF next_key IS NULL THEN
            -- Past the last key: the keyless lane, once.
            EXIT WHEN wrapped;
            wrapped := true;
            next_key := '';
        END IF;
        -- Past the key this walk started after: it has gone round.
        EXIT WHEN wrapped AND next_key > after_key;
        visit := visit || next_key;
        IF next_key = '' THEN
            -- The keyless lane is open when it has a task this worker can run.
            -- (Two probes, one per index that holds keyless tasks.)
            IF EXISTS (
                SELECT 1
                FROM tasks AS t
                WHERE t.queue = queue_name AND t.status = 'queued'
                  AND t.concurrency_key IS NULL AND t.rate_limit IS NULL
                  AND t.task_name = ANY(CASE WHEN t.durable THEN durable_task_names ELSE task_names END)
            ) OR EXISTS (
                SELECT 1
                FROM tasks AS t
                WHERE t.queue = queue_name AND t.status = 'queued'
                  AND t.concurrency_key IS NULL AND t.rate_limit IS NOT NULL
                  AND t.task_name = ANY(CASE WHEN t.durable THEN durable_task_names ELSE task_names END)
            ) THEN
                open_keys := open_keys + 1;
            END IF;
        ELSIF EXISTS (
            SELECT 1
            FROM tasks AS t
            WHERE t.queue = queue_name AND t.status = 'queued' AND t.concurrency_key = next_key
              AND t.task_name = ANY(CASE WHEN t.durable THEN durable_task_names ELSE task_names END)
        ) AND NOT EXISTS (
            SELECT 1
            FROM concurrency_keys AS k
            JOIN concurrency_limits AS l ON l.queue = k.queue
            WHERE k.queue = queue_name AND k.key = next_key AND k.running >= l.max_per_key
        ) THEN
            open_keys := open_keys + 1;  -- a key with a free slot and a task for it
        END IF;
        -- Back at the key it started after: once round.
        EXIT WHEN wrapped AND next_key = after_key;
        current_key := next_key;
    END LOOP;
    RETURN visit;
END;
$$;

-- ---------------------------------------------------------------------------
-- The demonstration's tables: the example's own data, not the engine's.
-- ---------------------------------------------------------------------------

-- The example, a reporting service shared by tenants: each run of a report
-- task records when it started and when it finished, on the database's clock,
-- so that main.py can see the order tasks started in and count how many of a
-- tenant's ran at once from the intervals themselves, not from the engine's
-- counters. One row per attempt: a retried task would be two runs.
CREATE TABLE report_runs (
    task_id bigint NOT NULL,
    attempt integer NOT NULL,
    tenant text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    PRIMARY KEY (task_id, attempt)
);

-- The payment provider's ledger: one row per charge. A charge carries the id
-- of the task that made it, unique, the way a payment API takes an
-- idempotency key: a second run of the same task finds its first run's charge
-- instead of charging again.
CREATE TABLE charges (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id text NOT NULL,
    amount_cents integer NOT NULL,
    task_id bigint NOT NULL UNIQUE,
    charged_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
