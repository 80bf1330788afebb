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
--
-- Stopping and starting on purpose (lesson 13): a task can be cancelled, and a
-- durable one then runs its compensation (a saga) before it ends cancelled; an
-- enqueue can carry an idempotency key, so that a repeat finds the task the
-- first one made; a task can start later (run_at, delay), and a schedule
-- (cron, or every so long) enqueues a task at each of its ticks, once.
--
-- Changing code safely (lesson 14): a durable function may branch on a patch
-- marker, an event of its own kind ('patch'), so that a history written before
-- a change replays the old path; every worker says which version of the code
-- it runs, a durable task runs only on the version it started on, and an
-- operator moves tasks to another version once a check says it replays them.
--
-- Operating at scale (lesson 15): nothing here is kept for ever. A finished
-- task's tree (the task, its children, theirs, with their histories and
-- waits) is removed, or archived, once it has been finished for the
-- retention period, in small batches (see retention.py); so are the external
-- events nothing waits for any more, and the rows of long-dead workers. The
-- tasks, their histories and their waits are partitioned by ranges of task
-- ids, one partition of each table per range (see task_partitions below): a
-- range whose tasks have all gone past the retention period is detached and
-- dropped whole, without deleting a row. And a durable task whose history
-- grows long continues as a new task (continue-as-new), with an empty
-- history, in the newest partition.

-- cancelled: someone (an operator, a parent's cancellation, a newer task of
-- the same key) stopped the task on purpose. Final, like completed and failed.
CREATE TYPE task_status AS ENUM (
    'queued', 'running', 'completed', 'failed', 'suspended', 'cancelled'
);

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
    key_walk_after text NOT NULL DEFAULT '',
    -- The version of the code this worker runs: declared by its operator, or
    -- a digest of its durable functions' source (see versions.py). A durable
    -- task that started on one version runs on no other (see can_run_here).
    code_version text NOT NULL
)
-- Lesson 15: a heartbeat changes no indexed column, so it is a HOT update
-- (no index entry, pruned without vacuum) when its page has room: leave it
-- some (fillfactor 70). Vacuumed after a fixed number of dead rows, and
-- without the cost delay (see partition_storage).
WITH (
    fillfactor = 70,
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0
);

-- What a queue does with keyed tasks: at most max_per_key of them with the
-- same key run at once, across all workers. A queue with no row here takes no
-- keyed tasks (enqueue refuses them): a limit is a decision, not a default.
--
-- at_limit says what happens to a task enqueued while its key is full:
--   wait                (the default) it waits on the queue for a free slot;
--   cancel_newest       it fails at once, ConcurrencyLimitReached: "one run
--                       per key at a time, drop the extra ones";
--   cancel_in_progress  it wins: the key's older tasks, queued or running,
--                       are cancelled (see cancel_task), so that the newest
--                       max_per_key are the ones that run.
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

-- Task ids come from a sequence of their own: a partitioned table's column
-- cannot be an identity column before PostgreSQL 17, and a task's id is
-- taken ahead of its row when it has an idempotency key (see CreateTask).
CREATE SEQUENCE tasks_id_seq AS bigint;

-- The tasks, partitioned by ranges of ids (see task_partitions). Ids are
-- handed out in the order tasks are enqueued, so a range of ids is a span of
-- time, and a lookup by id (most of the engine's) reads one partition.
--
-- No foreign key points into a partitioned table, or out of one: a
-- partition that is attached takes each key's constraint, which locks the
-- table the key points to against every write for a moment; one that is
-- detached must find no reference left into it, from its own rows included
-- (a parent and its child in one range). The links between tasks are kept by
-- the engine instead: a task's children, its history, its waits, the fork it
-- was copied from, go together (see retention.py and ChoosePartitionToRemove).
CREATE TABLE tasks (
    id bigint NOT NULL DEFAULT nextval('tasks_id_seq'),
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
    parent_id bigint,
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
    forked_from_task_id bigint,
    forked_at_event integer CHECK (forked_at_event > 0),
    -- The task's concurrency key (NULL: none, the limits do not apply to it).
    concurrency_key text,
    -- Copied from the queue's limit when the task is enqueued, so that changing
    -- the limit later never changes what a task already counted holds.
    hold_while_suspended boolean NOT NULL DEFAULT false,
    -- Whether this task takes one of its key's slots now. Derived from the
    -- status, never written: every way a task stops running (it completes,
    -- fails, suspends, is reassigned, timed out, cancelled, deleted) changes
    -- its status, and with it this, and the trigger that keeps the key's
    -- count. A delayed start (suspended at attempt 0) has held nothing yet.
    key_slot_held boolean NOT NULL GENERATED ALWAYS AS (
        concurrency_key IS NOT NULL
        AND (
            status = 'running'
            OR (status = 'suspended' AND hold_while_suspended AND attempt > 0)
        )
    ) STORED,
    -- The rate limit this task's start takes rate_units of (NULL: none).
    -- (No foreign key, see above: the client checks it exists, and a rate
    -- limit is never removed.)
    rate_limit text,
    rate_units integer CHECK (rate_units > 0),
    -- Cancellation (see cancel_task): when it was asked for, by whom and why.
    -- A task that never ran is cancelled at once; a durable task that has run
    -- goes on, to run its compensation, and ends cancelled when it is done.
    cancel_requested_at timestamptz,
    cancelled_by text,
    cancel_reason text,
    -- The enqueuer's name for this task ("order A-1, buy button"), as it was
    -- enqueued (NULL: none). Which task a key names now, and until when, is
    -- in idempotency_keys: a unique index on a partitioned table must hold
    -- the partition's column, and the key must be unique on its own.
    idempotency_key text,
    -- How many enqueues asked for this task: more than 1 when a client
    -- repeated one (a double click, a retry after a lost reply).
    enqueues integer NOT NULL DEFAULT 1,
    -- The code version a durable task started on, set by its first claim: its
    -- history was written by that code, and only a worker of that version may
    -- replay it, unless an operator moves it (MoveTasksToVersion). NULL for a
    -- durable task that has not started, and for every plain task, which
    -- keeps no history and runs on any worker that has its function.
    code_version text,
    -- When the task reached its final status (completed, failed, cancelled):
    -- set by a trigger (tasks_set_finished_at), whatever statement finished
    -- it, and cleared if an operator's replay runs it again. Retention counts
    -- from here.
    finished_at timestamptz,
    -- Continue-as-new: the task this one continues (its history ended there,
    -- and its state came here as this task's input), and the task that
    -- continues this one. A chain of them is one logical run. No foreign
    -- keys: retention removes a chain's finished tasks one by one, while the
    -- rest of the chain runs on, and a link to a removed task still says
    -- where the run came from (see history_tool).
    continued_from_task_id bigint,
    continued_as_task_id bigint,
    CHECK (code_version IS NULL OR durable),
    CHECK ((forked_from_task_id IS NULL) = (forked_at_event IS NULL)),
    CHECK ((cancel_requested_at IS NULL) = (cancelled_by IS NULL)),
    -- '' stands for the keyless tasks in the walk over the keys (keys_to_visit).
    CHECK (concurrency_key <> ''),
    CHECK ((rate_limit IS NULL) = (rate_units IS NULL)),
    PRIMARY KEY (id)
) PARTITION BY RANGE (id);

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

-- Tasks not started yet with a schedule deadline, soonest first, for the
-- sweep that fails those not started in time: queued ones, and delayed ones
-- (suspended before their first attempt). Tasks without a deadline are not in it.
CREATE INDEX tasks_schedule_deadline_idx ON tasks (schedule_deadline)
    WHERE schedule_deadline IS NOT NULL
      AND (status = 'queued' OR (status = 'suspended' AND attempt = 0));

-- The children of a task, for the cancellation that reaches them (see
-- cancel_task). Most tasks are nobody's child, and are not in it.
CREATE INDEX tasks_parent_idx ON tasks (parent_id) WHERE parent_id IS NOT NULL;

-- The forks of a task, for `history_tool tree`. Most tasks are not forks, and
-- are not in it.
CREATE INDEX tasks_forked_from_idx ON tasks (forked_from_task_id)
    WHERE forked_from_task_id IS NOT NULL;

-- The finished tasks that are no one's child, oldest finish first: the roots
-- of the trees retention removes (see DeleteFinishedTrees). Unfinished tasks
-- and children are not in it.
CREATE INDEX tasks_finished_roots_idx ON tasks (finished_at, id)
    WHERE finished_at IS NOT NULL AND parent_id IS NULL;

-- The idempotency keys (lesson 13), each naming one task until it expires: an
-- enqueue with a key here finds that task instead of making another (see
-- CreateTask). Lessons 13 and 14 kept them in a unique index on tasks; a
-- partitioned table's unique index must hold its partition's column (an id
-- range), and a key must be unique on its own, so they have a table.
CREATE TABLE idempotency_keys (
    key text PRIMARY KEY,
    task_id bigint NOT NULL,
    expires_at timestamptz NOT NULL
);

-- A task's keys, removed with it (see RemoveTasks, ChoosePartitionToRemove).
CREATE INDEX idempotency_keys_task_idx ON idempotency_keys (task_id);

-- A chain of continuations, followed backwards (history_tool).
CREATE INDEX tasks_continued_from_idx ON tasks (continued_from_task_id)
    WHERE continued_from_task_id IS NOT NULL;

-- What a durable operation is: a step, a function the durable function ran in
-- its own attempt, with its input and the output it returned; a child, a task
-- the durable function put on the queue (its id is in child_task_id); a sleep,
-- a pause until the time in wake_at; a child wait, a wait for a child with a
-- timeout (its id in input), until the deadline in wake_at at the latest; or a
-- wait for an external event whose key is the event's name, until the deadline
-- in wake_at at the latest; or a cancellation, the point where the durable
-- function learnt it was cancelled (its input says by whom and why): what comes
-- after it is the function's compensation.
-- patch: a patch marker (ctx.patched), recorded where new code first took a
-- changed path; it holds no result, only the decision (see durable.py).
CREATE TYPE event_kind AS ENUM (
    'step', 'child', 'sleep', 'child_wait', 'wait', 'cancellation', 'patch'
);

-- The history of durable tasks: one row per durable operation, numbered 1, 2,
-- 3... in the order the function made them. Attempts only ever add rows, never
-- delete them, and change one once at most (a child wait that times out
-- records it in its output), and the primary key makes sure that an event
-- number is written at most once: a later attempt *reads* events 1..n, it does
-- not write them again. Only an operator's replay deletes a history, all of it at once
-- (with its waits), and only of a task that has finished (see reruns.py).
CREATE TABLE task_events (
    task_id bigint NOT NULL,
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
    child_task_id bigint,
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
    copied_from_task_id bigint,
    PRIMARY KEY (task_id, event_number),
    CHECK ((kind = 'child') = (child_task_id IS NOT NULL)),
    CHECK ((kind IN ('sleep', 'child_wait', 'wait')) = (wake_at IS NOT NULL))
) PARTITION BY RANGE (task_id);

-- The events that name a child, by child: a child spawned with an idempotency
-- key may be another task's child already (a fork's, a replay's, another
-- order's), and its end wakes every task whose history waits for it, not only
-- its parent (see WakeTasksWaitingFor).
CREATE INDEX task_events_child_idx ON task_events (child_task_id)
    WHERE child_task_id IS NOT NULL;

-- The events a fork copied, by the task that recorded them: a task whose
-- events were copied stays while the copies are there (see
-- ChooseTreesToRemove).
CREATE INDEX task_events_copied_from_idx ON task_events (copied_from_task_id)
    WHERE copied_from_task_id IS NOT NULL;

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
    external_event_id bigint,
    -- That event's payload, as the push that ended the wait copied it here.
    payload jsonb,
    -- NULL while the wait is open.
    ended_at timestamptz,
    PRIMARY KEY (task_id, event_number),
    CHECK (external_event_id IS NULL OR ended_at IS NOT NULL),
    CHECK ((external_event_id IS NULL) = (payload IS NULL))
) PARTITION BY RANGE (task_id);

-- The open waits, by key: what a push looks for. A wait leaves it when it ends,
-- so it stays as small as the number of tasks waiting now.
CREATE INDEX event_waits_open_idx ON event_waits (key) WHERE ended_at IS NULL;

-- The waits an external event ended, for retention: an event a wait holds
-- stays (see RemoveOldExternalEvents).
CREATE INDEX event_waits_external_event_idx ON event_waits (external_event_id)
    WHERE external_event_id IS NOT NULL;

-- External events by age, for retention: an event older than the retention
-- period that no wait holds is removed.
CREATE INDEX external_events_pushed_at_idx ON external_events (pushed_at);

-- Wake-ups. Each worker LISTENs on the channel below (see listener.py):
--
--   <schema>.task_queued      payload: a queue's name. A task of that queue was
--                             enqueued, or queued again, or a suspended task
--                             of that queue has a new wake-up time: workers of
--                             that queue claim at once instead of at their
--                             next poll.
--   <schema>.task_cancelled   payload: a task's id. Someone cancelled it: the
--                             worker running it (if one is) raises its
--                             attempt's cancellation flag at once.
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
    suffixes text[] := ARRAY['.task_queued', '.task_cancelled'];
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
    -- A delayed start (suspended, with its wake_at) is news too: a poller
    -- waits no longer than until the next wake-up time it knows of.
    PERFORM pg_notify(TG_TABLE_SCHEMA || '.task_queued', queues.queue)
    FROM (
        SELECT DISTINCT inserted.queue
        FROM inserted
        LEFT JOIN tasks AS parent ON parent.id = inserted.parent_id
        WHERE (
            inserted.status = 'queued'
            OR (inserted.status = 'suspended' AND inserted.wake_at IS NOT NULL)
        )
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

-- The code versions an operator is retiring (see client.drain_version): their
-- workers finish the durable tasks pinned to them, and start no new ones, so
-- that during a deploy new tasks go to the new version's workers.
CREATE TABLE draining_versions (
    code_version text PRIMARY KEY,
    draining_since timestamptz NOT NULL DEFAULT now()
);

-- Whether a worker can run a task: it has a function of the task's name, of
-- the task's kind (a durable function for a durable task, a plain one for a
-- plain task); and a durable task that has started runs only on the version
-- of the code it started on, since a worker of another version would replay
-- its history with code that did not write it, while one that has not
-- started goes to a worker whose version is not draining (`starts_new`).
-- Every claim probe asks this one question; a plain SQL function, which the
-- planner inlines into the query.
CREATE FUNCTION can_run_here(
    durable boolean,
    task_name text,
    task_version text,
    task_names text[],
    durable_task_names text[],
    worker_version text,
    starts_new boolean
) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN durable THEN task_name = ANY(durable_task_names) AND CASE
            WHEN task_version IS NULL THEN starts_new
            ELSE task_version = worker_version
        END
        ELSE task_name = ANY(task_names)
    END
$$;

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
    worker_version text,
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
    -- Whether this worker's version takes durable tasks that have not started.
    starts_new boolean := NOT EXISTS (
        SELECT 1 FROM draining_versions WHERE code_version = worker_version
    );
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
                  AND can_run_here(
                      t.durable, t.task_name, t.code_version,
                      task_names, durable_task_names, worker_version, starts_new
                  )
            ) OR EXISTS (
                SELECT 1
                FROM tasks AS t
                WHERE t.queue = queue_name AND t.status = 'queued'
                  AND t.concurrency_key IS NULL AND t.rate_limit IS NOT NULL
                  AND can_run_here(
                      t.durable, t.task_name, t.code_version,
                      task_names, durable_task_names, worker_version, starts_new
                  )
            ) THEN
                open_keys := open_keys + 1;
            END IF;
        ELSIF EXISTS (
            SELECT 1
            FROM tasks AS t
            WHERE t.queue = queue_name AND t.status = 'queued' AND t.concurrency_key = next_key
              AND can_run_here(
                  t.durable, t.task_name, t.code_version,
                  task_names, durable_task_names, worker_version, starts_new
              )
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

-- Cancellation. cancel_task(id, by, why) stops a task on purpose, and every
-- unfinished task below it (its children, theirs, ...), in one transaction:
--
--   - a task that never ran, or a plain one (queued, or running), is cancelled
--     at once: its status is final, and a running attempt is fenced out like
--     any other whose task was taken from it (its worker is told, see the
--     task_cancelled channel, and its late result is rejected);
--   - a durable task that has run (running, or suspended, or queued again)
--     may have done things that must be undone: a charge to refund, stock to
--     release. It is not stopped but told: its cancel_requested_at is set, a
--     suspended one stops waiting (it is claimed at once), and its durable
--     function sees a Cancelled exception at its next operation (see
--     durable.py); what it does then is its compensation, recorded like any
--     step, and it ends cancelled when its function returns.
--
-- A task cancelled already, or finished, is left as it is: cancelling twice is
-- cancelling once. It returns the task's status after the call (NULL: no such
-- task).
--
-- The task's row is locked first, then its children's: a child being spawned
-- now either committed before (and is cancelled here), or its spawn finds the
-- parent cancelled and spawns nothing (AppendEvent). A result writer locks in
-- the other order (a child's row, then its parent's, to wake it): the rare
-- deadlock between the two is detected by the server, and both sides try
-- again (see client.cancel).
CREATE FUNCTION cancel_task(task_id bigint, cancelled_by text, reason text)
RETURNS task_status
LANGUAGE plpgsql AS $$
DECLARE
    task tasks;
    child_id bigint;
BEGIN
    SELECT * INTO task FROM tasks WHERE tasks.id = task_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF task.status IN ('completed', 'failed', 'cancelled') OR task.cancel_requested_at IS NOT NULL THEN
        RETURN task.status;
    END IF;
    IF task.durable AND (
        task.status = 'running'
        OR EXISTS (SELECT 1 FROM task_events AS event WHERE event.task_id = task.id)
    ) THEN
        -- It has run: it unwinds itself. least(NULL, now()) is now().
        UPDATE tasks
        SET cancel_requested_at = now(),
            cancelled_by = cancel_task.cancelled_by,
            cancel_reason = reason,
            wake_at = CASE WHEN status = 'suspended' THEN least(wake_at, now()) ELSE wake_at END
        WHERE tasks.id = task.id;
    ELSE
        UPDATE tasks
        SET status = 'cancelled',
            cancel_requested_at = now(),
            cancelled_by = cancel_task.cancelled_by,
            cancel_reason = reason,
            wake_at = NULL,
            output = jsonb_build_object('error', jsonb_build_object(
                'type', 'Cancelled',
                'message', format('cancelled by %s: %s', cancel_task.cancelled_by, reason)
            ))
        WHERE tasks.id = task.id;
        -- Finished now: like any task that finishes, it wakes the tasks waiting
        -- for it (its parent, and any task that shares it, see
        -- ListTasksSharingChildren), or a parent would wait for ever.
        UPDATE tasks
        SET wake_at = least(wake_at, now())
        WHERE tasks.status = 'suspended' AND (
            tasks.id = task.parent_id
            OR tasks.id IN (
                SELECT event.task_id FROM task_events AS event WHERE event.child_task_id = task.id
            )
        );
    END IF;
    IF task.status = 'running' THEN
        -- Its worker raises the attempt's cancellation flag (the heartbeat
        -- does it too, later, should the notification be lost).
        PERFORM pg_notify(current_schema() || '.task_cancelled', task.id::text);
    END IF;
    FOR child_id IN
        SELECT child.id FROM tasks AS child
        WHERE child.parent_id = task.id AND child.status NOT IN ('completed', 'failed', 'cancelled')
        ORDER BY child.id
    LOOP
        PERFORM cancel_task(
            child_id, cancel_task.cancelled_by, format('its parent task %s was cancelled', task.id)
        );
    END LOOP;
    RETURN (SELECT status FROM tasks WHERE tasks.id = task.id);
END;
$$;

-- Schedules: a task enqueued at every tick of a cron expression (read in the
-- schedule's time zone) or of a fixed interval.
--
-- Every worker fires the schedules that are due (see engine/scheduler.py), and
-- none is in charge: a tick is fired in one transaction that locks the
-- schedule's row (SKIP LOCKED: another worker firing it now is passed over),
-- enqueues the tick's task, records the tick in schedule_ticks, whose primary
-- key (schedule, tick) admits it once, and moves next_tick_at on. A worker
-- killed in the middle fires nothing, and the next one fires the tick. And the
-- tick's task carries an idempotency key made of the schedule and the tick:
-- even an enqueue repeated outside that transaction makes one task.
--
-- What happens to the ticks that came while no worker was up (catch_up):
--   all     each missed tick is fired, late (a report per day must exist for
--           every day);
--   latest  only the newest missed tick is fired (a cache refresh: once is enough);
--   none    missed ticks are skipped (a reminder that makes no sense late).
-- A tick is missed when it is fired `grace` or more after its time. Skipped
-- ticks are recorded too, so that every tick has one row saying what became of it.
CREATE TYPE catch_up AS ENUM ('all', 'latest', 'none');

CREATE TYPE tick_outcome AS ENUM ('fired', 'fired_late', 'skipped');

CREATE TABLE schedules (
    name text PRIMARY KEY,
    -- A cron expression: five fields (minute hour day month weekday), or six
    -- with the seconds first; or an interval. One of the two.
    cron text,
    every interval CHECK (every > interval '0'),
    -- The time zone a cron expression is read in: "0 9 * * *" in Europe/Paris
    -- is nine in Paris, summer and winter.
    time_zone text NOT NULL DEFAULT 'UTC',
    -- What each tick enqueues: a task of this name on this queue, whose input
    -- is {"schedule": name, "tick_at": the tick, "input": input}.
    queue text NOT NULL,
    task_name text NOT NULL,
    input jsonb NOT NULL,
    durable boolean NOT NULL DEFAULT false,
    catch_up catch_up NOT NULL DEFAULT 'latest',
    grace interval NOT NULL DEFAULT interval '1 minute' CHECK (grace > interval '0'),
    -- The first tick not fired nor skipped yet. Set when the schedule is
    -- defined (the first tick after then), and moved on by each firing.
    next_tick_at timestamptz NOT NULL,
    CHECK ((cron IS NULL) <> (every IS NULL))
);

-- What workers look at to find the due schedules, soonest first.
CREATE INDEX schedules_next_tick_idx ON schedules (next_tick_at);

-- One row per tick of each schedule: fired (on time, or late) with the task it
-- enqueued, or skipped by the catch-up policy. The primary key is the
-- "exactly once": a tick cannot be recorded twice.
CREATE TABLE schedule_ticks (
    schedule text NOT NULL REFERENCES schedules (name) ON DELETE CASCADE,
    tick_at timestamptz NOT NULL,
    outcome tick_outcome NOT NULL,
    -- (No foreign key into tasks, a partitioned table: see there.)
    task_id bigint,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    -- The worker that fired or skipped it, for people reading the table.
    worker_id bigint NOT NULL,
    PRIMARY KEY (schedule, tick_at),
    CHECK ((outcome = 'skipped') = (task_id IS NULL))
);

-- The tick that enqueued a task: removed with it.
CREATE INDEX schedule_ticks_task_idx ON schedule_ticks (task_id) WHERE task_id IS NOT NULL;

-- ---------------------------------------------------------------------------
-- The demonstration's tables: the example's own data, not the engine's.
-- ---------------------------------------------------------------------------

-- The example is a shop's checkout, a saga: reserve the stock, charge the
-- card, wait for the warehouse to pack the parcel, send the confirmation
-- email. Each effect is a row here, keyed by its order (or its task), the way
-- a real API takes an idempotency key: a second run of the same effect finds
-- the first one's row instead of doing it again. And each has its undoing: a
-- reservation is released, a charge refunded.
CREATE TABLE reservations (
    order_id text PRIMARY KEY,
    item text NOT NULL,
    reserved_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    released_at timestamptz
);

CREATE TABLE charges (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id text NOT NULL UNIQUE,
    amount_cents integer NOT NULL,
    -- Lesson 14's fix: the first version of the shop charged every order in USD.
    currency text NOT NULL,
    task_id bigint NOT NULL,
    charged_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE refunds (
    charge_id bigint PRIMARY KEY REFERENCES charges (id),
    amount_cents integer NOT NULL,
    task_id bigint NOT NULL,
    refunded_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE emails (
    order_id text PRIMARY KEY,
    task_id bigint NOT NULL,
    sent_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- What the scheduled task does at each tick: one row per tick it ran for (a
-- second run of the same tick finds it), with when it ran.
CREATE TABLE digests (
    schedule text NOT NULL,
    tick_at timestamptz NOT NULL,
    task_id bigint NOT NULL,
    ran_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (schedule, tick_at)
);

-- ---------------------------------------------------------------------------
-- Retention (lesson 15).
-- ---------------------------------------------------------------------------

-- When a task reaches its final status, whichever statement took it there (a
-- result, a sweep, a cancellation, an enqueue refused at once), the time is
-- kept; an operator's replay, which puts it back on the queue, clears it.
CREATE FUNCTION set_finished_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IN ('completed', 'failed', 'cancelled') THEN
        NEW.finished_at := coalesce(NEW.finished_at, now());
    ELSE
        NEW.finished_at := NULL;
    END IF;
    RETURN NEW;
END;
$$;

-- Only for a row whose finished_at is about to disagree with its status: the
-- WHEN is evaluated without calling the function, so the claims, suspends and
-- wake-ups of unfinished tasks (most of the updates) pay no PL/pgSQL call.
CREATE TRIGGER tasks_set_finished_at
    BEFORE INSERT OR UPDATE OF status ON tasks
    FOR EACH ROW
    WHEN ((NEW.status IN ('completed', 'failed', 'cancelled')) <> (NEW.finished_at IS NOT NULL))
    EXECUTE FUNCTION set_finished_at();

-- How long what has finished is kept, one row for the whole schema: every
-- worker's retention follows it. archive: copy each tree into
-- archived_task_trees before removing it.
CREATE TABLE retention_policy (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    keep_finished_for interval NOT NULL DEFAULT '7 days',
    archive boolean NOT NULL DEFAULT false
);

INSERT INTO retention_policy DEFAULT VALUES;

-- A removed tree, when the policy archives: each task's row and history as
-- JSON, one row per task, so that an auditor can read what ran long after.
CREATE TABLE archived_tasks (
    task_id bigint PRIMARY KEY,
    root_task_id bigint NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now(),
    task jsonb NOT NULL,
    history jsonb NOT NULL
);

-- ---------------------------------------------------------------------------
-- Partitions (lesson 15).
-- ---------------------------------------------------------------------------

-- How task ids are cut into ranges, one row for the whole schema. Each range
-- has a partition of tasks, one of task_events and one of event_waits, named
-- after the range's first id (tasks_from_1, task_events_from_1,
-- event_waits_from_1): a task, its history and its waits are in the
-- partitions of one range, and leave together.
CREATE TABLE partitioning (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    -- The ids of one range: 100,000 is a day of an engine that starts a
    -- task a second, a few minutes of a busy one.
    partition_size bigint NOT NULL DEFAULT 100000 CHECK (partition_size > 0),
    -- How many ranges' worth of ids are kept ready past the next task's id:
    -- the tasks that can be enqueued before retention, which adds ranges,
    -- must run again. An id with no range is an enqueue that fails.
    partitions_ahead integer NOT NULL DEFAULT 2 CHECK (partitions_ahead > 0)
);

INSERT INTO partitioning DEFAULT VALUES;

-- The ranges there are, oldest first.
CREATE TABLE task_partitions (
    first_id bigint PRIMARY KEY,
    -- The first id past the range.
    end_id bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- When retention chose the range for removal (MarkPartitionForRemoval):
    -- from then on no task of it may run again or be forked, and no key
    -- names one, and retention detaches and drops its partitions, resuming
    -- where it stopped if it is interrupted (see partitions.py).
    removing_since timestamptz,
    CHECK (end_id > first_id)
);

-- The id the next task will get; reading the sequence takes none.
CREATE FUNCTION next_task_id() RETURNS bigint
LANGUAGE sql AS $$
    SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END FROM tasks_id_seq
$$;

-- Each partition's storage parameters: a partitioned table has none of its
-- own (they are a table's, and a partitioned table stores nothing), so each
-- partition is given them when it is made. Measured over 1,000,000 tasks
-- (benchmarks/results/vacuum_bloat.md): vacuum after a fixed number of dead
-- rows (10,000), not a fifth of the table, and without the cost delay,
-- which a queue's vacuum (it dirties most pages it visits) spends most of
-- its time in: the claim's scan of tasks_queued_idx read 34 buffers instead
-- of 133 (p50), the dead rows peaked at 25,000 instead of 203,000. And room
-- on each page of tasks (fillfactor 85): no update of a task can be HOT
-- (every one changes status, which the partial indexes' WHERE use), but the
-- new version stays on the old one's page. task_events and event_waits are
-- written once a row: vacuum them after a fixed number of inserts, to keep
-- their visibility maps set and their rows frozen a little at a time.
CREATE FUNCTION partition_storage(parent text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE parent
        WHEN 'tasks' THEN
            'fillfactor = 85, autovacuum_vacuum_scale_factor = 0, '
            'autovacuum_vacuum_threshold = 10000, autovacuum_vacuum_insert_scale_factor = 0, '
            'autovacuum_vacuum_insert_threshold = 10000, autovacuum_vacuum_cost_delay = 0'
        ELSE
            'autovacuum_vacuum_insert_scale_factor = 0, '
            'autovacuum_vacuum_insert_threshold = 10000, autovacuum_vacuum_cost_delay = 0'
    END
$$;

-- Add ranges until partitions_ahead ranges' worth of ids is ready past the
-- next task's id; return how many were added. Each partition is created on
-- its own, then attached: CREATE TABLE ... PARTITION OF would lock the
-- partitioned table against every claim and result for a moment, and wait
-- for each transaction using it to end first; ATTACH PARTITION takes a lock
-- (SHARE UPDATE EXCLUSIVE) that lets them all go on. Attaching checks the
-- range against the table's rows: an empty table passes at once. LIKE ...
-- INCLUDING ALL gives the new table the columns, defaults, checks and
-- indexes of its partitioned table (the attach adopts the indexes as the
-- partitions of the partitioned ones; the row triggers follow by
-- themselves).
--
-- One caller adds at a time, and the others leave it to the one adding (the
-- `partitioning` row, SKIP LOCKED): a second caller that waited for the
-- first would find nothing left to add, and a retention pass that waited
-- would hold up its removals for nothing.
CREATE FUNCTION add_task_partitions() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    settings partitioning;
    next_id bigint;
    first_id bigint;
    added integer := 0;
    parent text;
BEGIN
    SELECT * INTO settings FROM partitioning FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    next_id := next_task_id();
    first_id := coalesce((SELECT max(end_id) FROM task_partitions), next_id);
    WHILE first_id - next_id < settings.partitions_ahead * settings.partition_size LOOP
        FOREACH parent IN ARRAY ARRAY['tasks', 'task_events', 'event_waits'] LOOP
            EXECUTE format(
                'CREATE TABLE %I (LIKE %I INCLUDING ALL) WITH (%s)',
                parent || '_from_' || first_id, parent, partition_storage(parent)
            );
            EXECUTE format(
                'ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)',
                parent, parent || '_from_' || first_id,
                first_id, first_id + settings.partition_size
            );
        END LOOP;
        INSERT INTO task_partitions (first_id, end_id)
        VALUES (first_id, first_id + settings.partition_size);
        first_id := first_id + settings.partition_size;
        added := added + 1;
    END LOOP;
    RETURN added;
END;
$$;

-- An operator's change of the ranges' size (client.set_partitioning): the
-- ranges no task has an id from yet are dropped and made again at the new
-- size, from the next id on; a range in use keeps its size. The three tables
-- are locked meanwhile (ACCESS EXCLUSIVE), so that no enqueue takes an id
-- from a range being replaced: an enqueue waits for this to commit, a moment.
-- Returns how many ranges were made.
CREATE FUNCTION set_partitioning(new_size bigint, new_ahead integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    unused bigint;
    parent text;
BEGIN
    -- The row first, then the tables, in add_task_partitions' order: a
    -- worker adding ranges ends, and then this goes on.
    UPDATE partitioning SET partition_size = new_size, partitions_ahead = new_ahead;
    LOCK TABLE tasks, task_events, event_waits IN ACCESS EXCLUSIVE MODE;
    FOR unused IN SELECT first_id FROM task_partitions WHERE first_id >= next_task_id() LOOP
        FOREACH parent IN ARRAY ARRAY['event_waits', 'task_events', 'tasks'] LOOP
            EXECUTE format('DROP TABLE %I', parent || '_from_' || unused);
        END LOOP;
        DELETE FROM task_partitions WHERE first_id = unused;
    END LOOP;
    RETURN add_task_partitions();
END;
$$;

-- The first ranges, for the first tasks.
SELECT add_task_partitions();
