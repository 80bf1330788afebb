"""A durable AI agent: the agent loop as a durable function, on the course's engine.

An agent is a loop: ask the model what to do next, do it (call a tool), tell
the model what came of it, ask again, until the model answers instead of
calling a tool. Written as a durable function, every part of that loop is
something an earlier lesson made durable:

- each model call is a *child task*, `call_model` (lesson 07): its request
  is the child's input, recorded in the agent's history, and its response the
  child's output, and a replay after a crash reads the response back instead
  of asking (and paying) again. Model calls are the expensive part, and not
  deterministic: recording them is what makes the rest of the loop replay the
  same way (lesson 06 checks that it does). A child, not a step, because a
  child can take a *rate limit* (lesson 12): `call_model` starts only when
  the provider's limit, `model-api`, has a unit left in its window, however
  many agents ask at once;
- each tool call is a *child task* (lesson 07): run once, on any worker, its
  output recorded; a tool with an effect carries a business idempotency key
  (lesson 13), so that a tool tried again after a crash, or called again by
  a fork, does its effect once;
- a risky tool (sending an email) waits for a person's approval, a *durable
  event* with a timeout (lesson 10); a timed-out approval ends the run, with
  the draft discarded;
- a 429 the provider still returns (its limit is not only ours to spend) is a
  recorded response like any other, and the agent backs off with a *durable
  sleep* (lesson 09), exponentially;
- the *budget* (turns, tokens) is part of the state, counted from recorded
  responses, so a replay counts the same;
- a *cancelled* run meets `Cancelled` at its next operation and compensates
  (lesson 13): the drafts it left are discarded, once;
- a run can be *forked* at any turn (lesson 11): the fork replays the turns
  before it from the copied history and asks the model again from there;
- a long conversation *continues as new* (lesson 15) every `turns_per_task`
  turns, carrying its state (the transcript, the budget) into a fresh task.

The agent's state is a JSON object, the input of its task (`new_conversation`),
and the output of its last task is the result: the transcript, the answer,
the counts.

Its turn boundaries are crash points (`engine/crash_points.py`): with
COURSE_CRASH_AT=agent:turn-3 a worker SIGKILLs itself just before turn 3
begins; `model:answered` is inside a model call, answered and not yet
recorded (the tools have their own, `draft_email:saved`, `send_email:sent`,
`discard_draft:discarded`).
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import psycopg

from ..db.models import EventKind, Task, TaskEvent
from ..db.queries import Querier
from ..engine.client import enqueue, set_rate_limit
from ..engine.crash_points import crash_point
from ..engine.durable import Cancelled, ChildTaskFailed, DurableContext, EventTimeout
from ..engine.reruns import fork
from .model import model_from
from .tools import RISKY_TOOLS, TOOLS

SYSTEM_PROMPT = (
    "You are a research assistant. Answer from the team's notes (search), compute with "
    "the calculator, and email only what you were asked to email."
)
# Turns, then a fresh task: lesson 15's continue-as-new, by turns rather than events.
TURNS_PER_TASK = 4
APPROVAL_TIMEOUT_SECONDS = 3600.0
BUDGET = {"turns": 8, "tokens": 20_000}
# A tool that fails is tried again this many times (a crash costs no retry).
TOOL_RETRIES = 2
# A model call that fails (the API is down, its answer unreadable) is tried again.
MODEL_RETRIES = 2
# The longest backoff after a 429, however many came in a row.
MAX_BACKOFF_SECONDS = 5.0
# The model provider's rate limit, as our plan with it says (lesson 12): every
# `call_model` child takes a unit, so no more than this many model calls start
# in any window, across all agents and workers. A `call_model` child cannot be
# spawned without it (`start_agent` sets it).
MODEL_RATE_LIMIT = "model-api"
MODEL_CALLS_PER_WINDOW = 3
MODEL_WINDOW_SECONDS = 1.0


class ApprovalTimedOut(Exception):
    """Nobody approved a risky tool call in time: the run ends, cleanly."""


def new_conversation(
    conversation: str,
    question: str,
    *,
    model: dict[str, Any] | None = None,
    budget: dict[str, int] | None = None,
    turns_per_task: int = TURNS_PER_TASK,
    approval_timeout: float = APPROVAL_TIMEOUT_SECONDS,
) -> dict[str, Any]:
    """The state an agent starts from: the input of its first task."""
    return {
        "conversation": conversation,
        "model": model or {"kind": "scripted", "script": "research"},
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": question},
        ],
        "turn": 0,
        "tokens": 0,
        "model_calls": 0,
        "backoffs": 0,
        "budget": budget or BUDGET,
        "turns_per_task": turns_per_task,
        "task_first_turn": 0,
        "approval_timeout": approval_timeout,
        "drafts": [],
    }


def start_agent(conn: psycopg.Connection[Any], state: dict[str, Any]) -> int:
    """Put the agent on the queue; its task's id. The model API's rate limit is set
    first if nobody has set it (`set_rate_limit` changes it: an operator's stays)."""
    if Querier(conn).get_rate_limit(name=MODEL_RATE_LIMIT) is None:
        set_rate_limit(conn, MODEL_RATE_LIMIT, MODEL_CALLS_PER_WINDOW, MODEL_WINDOW_SECONDS)
    return enqueue(conn, "agent", state, durable=True)


def agent(ctx: DurableContext, state: dict[str, Any]) -> dict[str, Any]:
    """Converse until the model answers, the budget is spent or an approval times out."""
    state = copy.deepcopy(state)  # the loop changes it: never the recorded input
    try:
        return converse(ctx, state)
    except Cancelled:
        # Lesson 13's compensation: what the run left half done, undone. Recorded
        # like the rest, so a later attempt replays it rather than doing it twice.
        for key in list(state["drafts"]):
            ctx.call("discard_draft", {"key": key}, idempotency_key=f"discard:{key}")
        raise


def converse(ctx: DurableContext, state: dict[str, Any]) -> dict[str, Any]:
    while True:
        crash_point(f"agent:turn-{state['turn'] + 1}")
        budget = state["budget"]
        if state["turn"] >= budget["turns"] or state["tokens"] >= budget["tokens"]:
            return result(state, "budget spent")
        if state["turn"] - state["task_first_turn"] >= state["turns_per_task"]:
            ctx.continue_as_new({**state, "task_first_turn": state["turn"]})
        message = ask_model(ctx, state)
        calls = message.get("tool_calls") or []
        if not calls:
            return result(state, "answered", answer=message["content"])
        for call in calls:
            try:
                output = run_tool(ctx, state, call)
            except ApprovalTimedOut:
                return result(state, "approval timed out")
            state["messages"].append(
                {
                    "role": "tool",
                    "tool_call_id": call["id"],
                    "name": call["name"],
                    "content": json.dumps(output, sort_keys=True),
                }
            )


def ask_model(ctx: DurableContext, state: dict[str, Any]) -> dict[str, Any]:
    """The model's next message: one recorded child task per request, on the model
    API's rate limit, backing off on a 429."""
    turn = state["turn"] + 1
    request = {"model": state["model"], "turn": turn, "messages": state["messages"], "tools": TOOLS}
    refused = 0
    while True:
        # Lesson 12's rate limit: the child waits, queued, for a unit of the window;
        # the agent waits for the child, suspended (no slot held either way).
        response: dict[str, Any] = ctx.call(
            "call_model", request, rate_limit=MODEL_RATE_LIMIT, max_retries=MODEL_RETRIES
        )
        state["model_calls"] += 1
        if response["status"] == 200:
            break
        refused += 1
        state["backoffs"] += 1
        # A durable sleep (lesson 09): the worker's slot is free meanwhile, and a
        # crash does not start the wait over.
        ctx.sleep(min(response["retry_after"] * 2 ** (refused - 1), MAX_BACKOFF_SECONDS))
    usage = response["usage"]
    state["turn"] = turn
    state["tokens"] += usage["prompt_tokens"] + usage["completion_tokens"]
    message: dict[str, Any] = response["message"]
    state["messages"].append(message)
    return message


def call_model(request: dict[str, Any]) -> dict[str, Any]:
    """The child task: one request to the model API (the scripted one, or a real one)."""
    response = model_from(request["model"]).complete(request)
    # Answered (and billed), not yet recorded: the one moment a crash costs a call.
    crash_point("model:answered")
    return response


def run_tool(ctx: DurableContext, state: dict[str, Any], call: dict[str, Any]) -> dict[str, Any]:
    """What a tool call gave, for the model to read: a child task's output, or an error."""
    if call["name"] not in {tool["name"] for tool in TOOLS}:
        return {"error": f"there is no tool {call['name']}"}
    if call["name"] in RISKY_TOOLS:
        return send_with_approval(ctx, state, call["arguments"])
    try:
        output: dict[str, Any] = ctx.call(call["name"], call["arguments"], max_retries=TOOL_RETRIES)
    except ChildTaskFailed as failure:
        return {"error": str(failure)}
    return output


def email_key(conversation: str, email: dict[str, Any]) -> str:
    """The email's business idempotency key: this conversation, this email. A fork that
    writes the same email finds it sent; one that writes another sends that one."""
    content = json.dumps([email["to"], email["subject"], email["body"]])
    return f"{conversation}/{hashlib.sha256(content.encode()).hexdigest()[:12]}"


def send_with_approval(
    ctx: DurableContext, state: dict[str, Any], arguments: dict[str, Any]
) -> dict[str, Any]:
    """Draft the email, wait for a person's approval (lesson 10), then send it, once."""
    email = {name: arguments[name] for name in ("to", "subject", "body")}
    key = email_key(state["conversation"], email)
    ctx.call("draft_email", {**email, "key": key}, idempotency_key=f"draft:{key}")
    state["drafts"].append(key)
    try:
        approval = ctx.wait_for_event(f"approval:{key}", timeout=state["approval_timeout"])
    except EventTimeout:
        discard(ctx, state, key)
        raise ApprovalTimedOut(key) from None
    if not approval.get("approved"):
        discard(ctx, state, key)
        return {"sent": False, "refused_by": approval.get("by"), "note": approval.get("note")}
    sent: dict[str, Any] = ctx.call("send_email", {"key": key}, idempotency_key=f"send:{key}")
    state["drafts"].remove(key)
    return {**sent, "approved_by": approval.get("by")}


def discard(ctx: DurableContext, state: dict[str, Any], key: str) -> None:
    ctx.call("discard_draft", {"key": key}, idempotency_key=f"discard:{key}")
    state["drafts"].remove(key)


def result(state: dict[str, Any], status: str, *, answer: str | None = None) -> dict[str, Any]:
    """The run's output: how it ended, and everything a reader wants to see of it."""
    return {
        "status": status,
        "answer": answer,
        "conversation": state["conversation"],
        "turns": state["turn"],
        "tokens": state["tokens"],
        "model_calls": state["model_calls"],
        "backoffs": state["backoffs"],
        "budget": state["budget"],
        "transcript": state["messages"],
    }


def conversation_tasks(conn: psycopg.Connection[Any], first_task_id: int) -> list[Task]:
    """The agent's tasks in order: the first, and each it continued as (lesson 15)."""
    queries = Querier(conn)
    tasks: list[Task] = []
    task_id: int | None = first_task_id
    while task_id is not None:
        task = queries.get_task(id=task_id)
        if task is None:
            raise LookupError(f"there is no task {task_id}")
        tasks.append(task)
        task_id = task.continued_as_task_id
    return tasks


def model_events(conn: psycopg.Connection[Any], task_ids: list[int]) -> list[TaskEvent]:
    """The recorded model calls of these tasks, in order: what the run was billed for.
    A fork's copies of its source's events are left out (they were billed once)."""
    queries = Querier(conn)
    return [
        event
        for task_id in task_ids
        for event in queries.list_task_events(task_id=task_id)
        if is_model_call(event) and event.copied_from_task_id is None
    ]


def model_call_tasks(conn: psycopg.Connection[Any], task_ids: list[int]) -> list[Task]:
    """The `call_model` children of these tasks' recorded model calls, in order: each
    row holds its request, its response, and when the rate limit let it start."""
    queries = Querier(conn)
    children: list[Task] = []
    for event in model_events(conn, task_ids):
        child = queries.get_task(id=event.child_task_id) if event.child_task_id else None
        if child is None:
            raise LookupError(f"event {event.event_number} of task {event.task_id} has no child")
        children.append(child)
    return children


def is_model_call(event: TaskEvent) -> bool:
    """An event of the history that spawned a `call_model` child."""
    return event.kind == EventKind.CHILD and event.name == "call_model"


def fork_at_turn(conn: psycopg.Connection[Any], task_id: int, turn: int) -> Task:
    """Fork the agent's task where turn `turn` asked the model (lesson 11): the fork
    replays the turns before it, and asks the model again (a new `call_model`
    child) from there."""
    for event in Querier(conn).list_task_events(task_id=task_id):
        if is_model_call(event) and event.input["turn"] == turn:
            return fork(conn, task_id, at_event=event.event_number)
    raise LookupError(f"task {task_id} has no turn {turn}")
