-- A task queue in one table.
--
-- A task is a row. Its status says where it is in its life:
--   queued -> running -> completed | failed

CREATE TYPE task_status AS ENUM ('queued', 'running', 'completed', 'failed');

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
    -- The function's result when completed; an error document when failed.
    output jsonb,
    status task_status NOT NULL DEFAULT 'queued'
);

-- The claim query asks for "the oldest queued tasks of queue Q". This index
-- holds exactly those rows, in that order, and nothing else: a task leaves it
-- the moment it is claimed, so it stays small however many tasks have finished.
CREATE INDEX tasks_queued_idx ON tasks (queue, id) WHERE status = 'queued';
