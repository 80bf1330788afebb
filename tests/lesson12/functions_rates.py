"""Task functions for lesson 12's tests of rate limits, strategies at the limit and
suspension, and the test-only audits those tests read.

The worker processes import this module (`--functions tests.lesson12.functions_rates`),
so it holds nothing but the functions, the SQL the tests install, and the
helpers that read what that SQL recorded.
"""

from __future__ import annotations

import time
from typing import Any

from psycopg_pool import ConnectionPool

from lessons.lesson12_flow_control.engine.durable import DurableContext, DurableFunction
from lessons.lesson12_flow_control.engine.worker import TaskFunction
from tests.recording import wait_for_gate

# How long a gated task waits for its gate before it fails: far longer than any
# test holds one, so only a test that forgot to open it sees this.
GATE_TIMEOUT = 120.0


def work(input: dict[str, Any]) -> dict[str, Any]:
    """Pretend to call the rate-limited API: take `input["seconds"]` of work."""
    time.sleep(input.get("seconds", 0.0))
    return input


def hold_at_gate(input: dict[str, Any]) -> dict[str, Any]:
    """Run until the test creates the file `input["gate"]`: a task held running."""
    wait_for_gate(input["gate"], timeout=GATE_TIMEOUT)
    return input


def sleep_then_finish(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """Sleep `input["sleep"]` s (suspended, on no worker), then complete."""
    ctx.sleep(input["sleep"])
    return {"slept": input["sleep"]}


def two_steps(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """Two steps (events 1 and 2), so that a fork at event 2 has something to copy."""
    first = ctx.run_step("first", work, {"step": 1})
    second = ctx.run_step("second", work, {"step": 2})
    return {"first": first, "second": second}


def fan_out_on_a_rate_limit(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """Spawn `input["children"]` `work` children on rate limit `input["rate_limit"]`,
    all at once, then wait for each."""
    children = [
        ctx.spawn_child(
            "work",
            {"child": n, "seconds": input["seconds"]},
            rate_limit=input["rate_limit"],
            rate_units=input.get("rate_units", 1),
        )
        for n in range(input["children"])
    ]
    return [ctx.wait_for_child(child) for child in children]


def call_on_a_rate_limit(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """One `work` child on rate limit `input["rate_limit"]`, by `call`."""
    return ctx.call(
        "work", {"called": True}, rate_limit=input["rate_limit"], rate_units=input["rate_units"]
    )


def change_the_limit_on_retry(ctx: DurableContext, input: dict[str, Any]) -> Any:
    """Attempt n spawns its child on rate limit `input["limits"][n - 1]`, and the
    first attempt then fails: the second replays the child with another limit."""
    limit = input["limits"][min(ctx.attempt, len(input["limits"])) - 1]
    ctx.spawn_child("work", {"child": 0}, rate_limit=limit)
    if ctx.attempt == 1:
        raise RuntimeError("fail the first attempt, after its spawn")
    return {"limit": limit}


FUNCTIONS: dict[str, TaskFunction] = {"work": work, "hold_at_gate": hold_at_gate}

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {
    "sleep_then_finish": sleep_then_finish,
    "two_steps": two_steps,
    "fan_out_on_a_rate_limit": fan_out_on_a_rate_limit,
    "call_on_a_rate_limit": call_on_a_rate_limit,
    "change_the_limit_on_retry": change_the_limit_on_retry,
}

# Every grant of a rate limit, as the database made it: a row trigger on tasks
# sees each start (queued -> running) of a rate-limited task, first attempts and
# retries alike, with its started_at, which for a rate-limited start is the
# time of its grant. Resumes (suspended -> running) take no units, and are not
# grants.
GRANTS_AUDIT = """
CREATE TABLE grants (
    task_id bigint NOT NULL,
    attempt integer NOT NULL,
    rate_limit text NOT NULL,
    units integer NOT NULL,
    granted_at timestamptz NOT NULL
);
CREATE FUNCTION record_grant() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO grants (task_id, attempt, rate_limit, units, granted_at)
    VALUES (NEW.id, NEW.attempt, NEW.rate_limit, NEW.rate_units, NEW.started_at);
    RETURN NULL;
END
$$;
CREATE TRIGGER record_grant AFTER UPDATE ON tasks FOR EACH ROW
WHEN (OLD.status = 'queued' AND NEW.status = 'running' AND NEW.rate_limit IS NOT NULL)
EXECUTE FUNCTION record_grant();
"""

# Every change of a task's status, on the database's clock, in commit order
# within a transaction: who ran when, per key, whatever the workers believe.
TRANSITIONS_AUDIT = """
CREATE TABLE transitions (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id bigint NOT NULL,
    concurrency_key text,
    old_status task_status,
    new_status task_status NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION record_transition() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO transitions (task_id, concurrency_key, old_status, new_status)
    VALUES (NEW.id, NEW.concurrency_key,
            CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END, NEW.status);
    RETURN NULL;
END
$$;
CREATE TRIGGER record_insert_transition AFTER INSERT ON tasks FOR EACH ROW
EXECUTE FUNCTION record_transition();
CREATE TRIGGER record_update_transition AFTER UPDATE OF status ON tasks FOR EACH ROW
WHEN (OLD.status IS DISTINCT FROM NEW.status)
EXECUTE FUNCTION record_transition();
"""


def install_transitions_audit(pool: ConnectionPool) -> None:
    with pool.connection() as conn:
        conn.execute(TRANSITIONS_AUDIT)


def transitions_of(pool: ConnectionPool, task_id: int) -> list[tuple[int, str | None, str]]:
    """The task's changes of status, in order: (seq, old status, new status)."""
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT seq, old_status::text, new_status::text FROM transitions"
            " WHERE task_id = %s ORDER BY seq",
            (task_id,),
        ).fetchall()
    return [(seq, old, new) for seq, old, new in rows]


def seq_of(pool: ConnectionPool, task_id: int, old: str | None, new: str) -> int:
    """When (the audit's sequence number) the task first went from `old` to `new`."""
    for seq, was, became in transitions_of(pool, task_id):
        if (was, became) == (old, new):
            return seq
    raise AssertionError(f"task {task_id} never went from {old} to {new}")


def most_holding_at_once(pool: ConnectionPool, key: str, holding: set[str]) -> int:
    """The most tasks of `key` that were at once in one of the `holding` statuses.

    A task takes its key's slot only after the claim has read, under the key's
    lock, the count that the task giving a slot back committed: so the audit
    records every release of a slot before the claim that reuses it, and
    replaying the audit in its order gives the key's count at every moment.
    """
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT task_id, new_status::text FROM transitions"
            " WHERE concurrency_key = %s ORDER BY seq",
            (key,),
        ).fetchall()
    holders: set[int] = set()
    most = 0
    for task_id, status in rows:
        if status in holding:
            holders.add(task_id)
        else:
            holders.discard(task_id)
        most = max(most, len(holders))
    return most
