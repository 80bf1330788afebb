"""Lesson 16's agent: a fork at a turn, an approval that times out, a cancellation, the
budget, and the model adapter's translation.

What it proves, with the real server and real worker processes:

- a fork at turn 3 (lesson 11) replays turns 1 and 2 from the copied history
  (no model call for them), asks the model again at turn 3, gets the
  script's other answer, and ends with a second transcript and an email of
  its own, while the first run's tasks, results and emails stay as they were;
- an approval nobody gives times out (lesson 10): the run ends completed,
  "approval timed out", the draft discarded once, nothing sent, and its
  history (the wait, the discard) readable with history_tool;
- a run cancelled while it waits for an approval (lesson 13) compensates
  once, even when the worker is SIGKILLed just after the compensation's
  effect: one draft discarded, nothing sent, the task cancelled;
- a spent budget ends the run at its limit, by the recorded counts;
- three agents at once, on two worker processes, share the model API's rate
  limit (lesson 12): no second starts more model calls than it allows, and
  every agent still answers;
- the OpenAI-compatible adapter writes and reads the chat-completions format
  (pure translation: no test calls a model API).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from lessons.lesson16_durable_ai_agent.db.models import EventKind, TaskStatus
from lessons.lesson16_durable_ai_agent.db.queries import Querier
from lessons.lesson16_durable_ai_agent.demo.agent import (
    MODEL_RATE_LIMIT,
    conversation_tasks,
    fork_at_turn,
    model_call_tasks,
    new_conversation,
    start_agent,
)
from lessons.lesson16_durable_ai_agent.demo.approver import Approver
from lessons.lesson16_durable_ai_agent.demo.model import from_openai_message, to_openai_message
from lessons.lesson16_durable_ai_agent.demo.world import World
from lessons.lesson16_durable_ai_agent.engine.client import cancel, set_rate_limit
from lessons.lesson16_durable_ai_agent.tools import history_tool
from tests.conftest import LessonDatabase
from tests.lesson16.conversations import (
    CONVERSATION,
    QUESTION,
    observe,
    run_conversation,
    wait_for_conversation,
    worker_process,
)
from tests.waiting import wait_until

LESSON = "lesson16_durable_ai_agent"


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    return lesson_database(LESSON, max_size=4)


def test_a_fork_at_turn_3_answers_otherwise_and_leaves_the_first_run_alone(
    database: LessonDatabase, tmp_path: Path
) -> None:
    world = World(tmp_path)
    first = run_conversation(database.pool, database.schema, tmp_path)
    first_ids = [task.id for task in first.tasks]
    with database.pool.connection() as conn:
        fork = fork_at_turn(conn, first_ids[0], 3)
    with (
        Approver(database.pool, world, "Ben") as approver,
        worker_process(database.schema, world) as worker,
    ):
        worker.start()
        fork_tasks = wait_for_conversation(
            database.pool, fork.id, approver=approver, workers=[worker]
        )
    forked = observe(database.pool, world, fork_tasks)

    # The fork asked turns 3 to 5 only: turns 1 and 2 came from the copied history.
    fork_bill = forked.bill[len(first.bill) :]
    assert sorted({r["turn"] for r in fork_bill}) == [3, 4, 5]
    assert forked.recorded_model_calls == len(fork_bill)
    # The same conversation up to turn 3, then another answer there, and after.
    transcript, fork_transcript = first.output["transcript"], forked.output["transcript"]
    assert fork_transcript[:6] == transcript[:6]
    assert fork_transcript[6] != transcript[6]
    assert forked.output["answer"] != first.output["answer"]
    # Its own email, and the first run's effects as they were.
    assert forked.mail[: len(first.mail)] == first.mail
    sent = [record["key"] for record in forked.mail_of("sent")]
    assert len(sent) == len(set(sent)) == 2
    with database.pool.connection() as conn:
        assert [t.output for t in conversation_tasks(conn, first_ids[0])] == [
            t.output for t in first.tasks
        ]
    # Its own children from turn 3 on: 4 model calls (turn 4's refused, then asked again).
    assert forked.children == {
        "call_model": 4,
        "calculate": 1,
        "draft_email": 1,
        "send_email": 1,
    }


def test_an_approval_that_times_out_ends_the_run_cleanly(
    database: LessonDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = World(tmp_path)
    with database.pool.connection() as conn:
        first = start_agent(conn, new_conversation(CONVERSATION, QUESTION, approval_timeout=1.0))
    with worker_process(database.schema, world) as worker:  # and nobody approves
        worker.start()
        tasks = wait_for_conversation(database.pool, first, workers=[worker])
    run = observe(database.pool, world, tasks)

    assert tasks[-1].status == TaskStatus.COMPLETED
    assert run.output["status"] == "approval timed out"
    assert run.output["answer"] is None and run.output["turns"] == 4
    assert len(run.mail_of("discarded")) == 1 and run.mail_of("sent") == []
    assert run.children["discard_draft"] == 1 and "send_email" not in run.children
    with database.pool.connection() as conn:
        queries = Querier(conn)
        history = queries.list_task_events(task_id=tasks[-1].id)
        waits = [wait for wait in queries.list_event_waits() if wait.task_id == tasks[-1].id]
    assert [event.kind for event in history][-2:] == [EventKind.WAIT, EventKind.CHILD]
    assert len(waits) == 1 and waits[0].ended_at is not None
    assert waits[0].external_event_id is None, "ended by its deadline, not by an event"
    assert history_tool.main(["--schema", database.schema, "history", str(tasks[-1].id)]) == 0
    shown = capsys.readouterr().out
    assert "approval:" in shown and "discard_draft" in shown


def test_a_cancelled_run_compensates_once_through_a_crash(
    database: LessonDatabase, tmp_path: Path
) -> None:
    world = World(tmp_path)
    with database.pool.connection() as conn:
        first = start_agent(conn, new_conversation(CONVERSATION, QUESTION))
    with (
        worker_process(database.schema, world, crash_at="discard_draft:discarded") as doomed,
        worker_process(database.schema, world) as rescuer,
    ):
        doomed.start()

        def waiting_for_approval() -> int | None:
            with database.pool.connection() as conn:
                for wait in Querier(conn).list_event_waits():
                    if wait.ended_at is None and wait.key.startswith("approval:"):
                        return wait.task_id
            return None

        waiting = wait_until(waiting_for_approval, timeout=60, message="no approval asked")
        with database.pool.connection() as conn:
            cancel(conn, waiting, cancelled_by="test", reason="the question was withdrawn")
        # The compensation discards the draft, and its worker dies right after.
        assert doomed.wait(timeout=60) == -9
        rescuer.start()
        tasks = wait_for_conversation(database.pool, first, workers=[doomed, rescuer])
    run = observe(database.pool, world, tasks)

    assert tasks[-1].status == TaskStatus.CANCELLED
    assert len(run.mail_of("discarded")) == 1, "compensated once"
    assert [r["operation"] for r in run.mail_of("request")].count("discard") == 2
    assert run.mail_of("sent") == []
    assert run.children["discard_draft"] == 1 and "send_email" not in run.children
    with database.pool.connection() as conn:
        kinds = [e.kind for e in Querier(conn).list_task_events(task_id=tasks[-1].id)]
    assert EventKind.CANCELLATION in kinds


def test_a_spent_budget_ends_the_run_at_its_limit(database: LessonDatabase, tmp_path: Path) -> None:
    run = run_conversation(
        database.pool, database.schema, tmp_path, budget={"turns": 2, "tokens": 20_000}
    )
    assert run.output["status"] == "budget spent"
    assert run.output["turns"] == 2 and len(run.bill) == 2
    assert run.children == {"call_model": 2, "search": 2}


def test_agents_at_once_share_the_model_rate_limit(
    database: LessonDatabase, tmp_path: Path
) -> None:
    """Three conversations at once, two worker processes of 4 slots, the limit set to
    2 model calls a second before they start (`start_agent` keeps it): every
    call is a `call_model` child on the limit, no window of a second holds more
    than 2 starts, and some holds 2 (so an excess would show)."""
    world = World(tmp_path)
    per = timedelta(seconds=1)
    with database.pool.connection() as conn:
        set_rate_limit(conn, MODEL_RATE_LIMIT, 2, per.total_seconds())
        firsts = [
            start_agent(conn, new_conversation(f"{CONVERSATION}-{n}", QUESTION)) for n in range(3)
        ]
    with (
        Approver(database.pool, world, "Ben") as approver,
        worker_process(database.schema, world) as one,
        worker_process(database.schema, world) as other,
    ):
        one.start()
        other.start()
        runs = [
            wait_for_conversation(database.pool, first, approver=approver, workers=[one, other])
            for first in firsts
        ]
    with database.pool.connection() as conn:
        calls = [call for tasks in runs for call in model_call_tasks(conn, [t.id for t in tasks])]
    outputs = [tasks[-1].output for tasks in runs]
    assert [output.get("status") if isinstance(output, dict) else None for output in outputs] == [
        "answered"
    ] * 3
    assert len(calls) == len(world.model_requests.records())
    assert {(call.rate_limit, call.rate_units, call.attempt) for call in calls} == {
        (MODEL_RATE_LIMIT, 1, 1)
    }
    starts = sorted(call.started_at for call in calls if call.started_at is not None)
    assert len(starts) == len(calls)
    most = max(sum(1 for other in starts if end - per < other <= end) for end in starts)
    assert most == 2


def test_the_openai_adapter_writes_and_reads_the_chat_completions_format() -> None:
    ours = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "name": "calculate", "arguments": {"expression": "1+1"}}],
    }
    wire = to_openai_message(ours)
    assert wire["tool_calls"] == [
        {
            "id": "c1",
            "type": "function",
            "function": {"name": "calculate", "arguments": json.dumps({"expression": "1+1"})},
        }
    ]
    assert from_openai_message(wire) == ours
    tool = {"role": "tool", "tool_call_id": "c1", "name": "calculate", "content": "{}"}
    assert to_openai_message(tool) == {"role": "tool", "tool_call_id": "c1", "content": "{}"}
