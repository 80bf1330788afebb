"""Lesson 16, the capstone: a durable AI agent, crashed in the middle, then forked.

    python lessons/lesson16_durable_ai_agent/main.py [-v]

A research agent is asked how many orders a month one worker can take, and
what the database costs, and to email the answer to Ana. It searches the
team's notes, calculates, drafts the email, waits for Ben to approve it,
sends it, and answers. The model is the lesson's scripted one (it plays a
fixed script, deterministically, and keeps a bill of every request). Each
model call is a child task on lesson 12's rate limit `model-api`, 3 calls a
second, so a call may wait for its window; the provider is still busy on
every fourth request (429), and the agent backs off with a durable sleep.
The conversation continues as new after four turns.

The worker that runs it is killed (SIGKILL) inside the email tool, just after
the mail service sent the email and before the tool said so; a second worker
takes over. Then the same run is forked at turn 3, where the model, asked
again, answers differently. Checked at the end: the crash cost no model call
twice (the bill matches the recorded calls), the email went once (two send
requests, one email), no second of the run started more model calls than
the rate limit allows, the fork asked the model only from turn 3 on, sent
its own email and left the first run's effects as they were.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

# A Python without the course installed (`make install` puts it in .venv) would stop at
# the imports below with "No module named 'lessons'": say what to run instead.
try:
    import lessons.common.cli  # noqa: F401
except ModuleNotFoundError:
    print(
        f"error: this Python ({sys.executable}) does not have the course installed: run "
        "`make install`, then `.venv/bin/python "
        "lessons/lesson16_durable_ai_agent/main.py`.",
        file=sys.stderr,
    )
    sys.exit(2)

from psycopg_pool import ConnectionPool

from lessons.common.cli import Checks, Lesson, argument_parser, configure_logging, run_lesson
from lessons.common.cli import wait_until as wait_for
from lessons.lesson16_durable_ai_agent.db.models import Task, TaskStatus
from lessons.lesson16_durable_ai_agent.demo.agent import (
    MODEL_CALLS_PER_WINDOW,
    MODEL_RATE_LIMIT,
    MODEL_WINDOW_SECONDS,
    conversation_tasks,
    fork_at_turn,
    model_call_tasks,
    model_events,
    new_conversation,
    start_agent,
)
from lessons.lesson16_durable_ai_agent.demo.approver import Approver
from lessons.lesson16_durable_ai_agent.demo.world import WORLD_VARIABLE, World
from lessons.lesson16_durable_ai_agent.engine.crash_points import CRASH_AT
from lessons.lesson16_durable_ai_agent.tools.worker_process import WorkerProcess

LESSON = Lesson.of(__file__)

QUESTION = (
    "How many orders a month can one worker take, and what does the database cost? "
    "Email the answer to ana@example.com."
)
CONVERSATION = "orders-a-month"
# Inside the email tool: the mail service has sent it, the tool has not returned.
CRASH_POINT = "send_email:sent"
FORK_TURN = 3

SLOTS = 4
POLL_INTERVAL = 0.1
HEARTBEAT_INTERVAL = 0.1
INACTIVITY_THRESHOLD = 1.0


def worker_process(environment: dict[str, str] | None = None) -> WorkerProcess:
    return WorkerProcess(
        schema=LESSON.schema,
        slots=SLOTS,
        poll_interval=POLL_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        inactivity_threshold=INACTIVITY_THRESHOLD,
        environment=environment,
    )


def finished(pool: ConnectionPool, first_task_id: int) -> list[Task] | None:
    """The conversation's tasks once its last one has finished, else None."""
    with pool.connection() as conn:
        tasks = conversation_tasks(conn, first_task_id)
    last = tasks[-1]
    done = last.status in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)
    return tasks if done and last.continued_as_task_id is None else None


def wait_for_conversation(pool: ConnectionPool, first_task_id: int) -> list[Task]:
    wait_for(lambda: finished(pool, first_task_id) is not None, "the conversation", timeout=60)
    tasks = finished(pool, first_task_id)
    assert tasks is not None
    return tasks


def result_of(tasks: list[Task]) -> dict[str, Any]:
    """The conversation's result: the output of its last task."""
    output = tasks[-1].output
    if not isinstance(output, dict):
        raise RuntimeError(f"task {tasks[-1].id} ended {tasks[-1].status}, with no result")
    return output


def describe_call(call: dict[str, Any]) -> str:
    shown = {k: v for k, v in call["arguments"].items() if k != "body"}
    arguments = ", ".join(f"{name}={json.dumps(value)}" for name, value in shown.items())
    return f"{call['name']}({arguments})"


def describe_passages(documents: list[str]) -> str:
    """The documents the passages came from, best first: "a.md (2 passages), b.md"."""
    counts = Counter(documents)
    return ", ".join(
        f"{document} ({counts[document]} passages)" if counts[document] > 1 else document
        for document in dict.fromkeys(documents)
    )


def describe_result(message: dict[str, Any]) -> str:
    output = json.loads(message["content"])
    if message["name"] == "search":
        return "found " + describe_passages([result["document"] for result in output["results"]])
    if message["name"] == "calculate":
        return f"{output.get('value', output.get('error'))}"
    if output.get("sent"):
        return (
            f"approved by {output['approved_by']}, sent to {output['to']}, "
            f"message {output['message_id']}"
        )
    return json.dumps(output, sort_keys=True)


def print_transcript(transcript: list[dict[str, Any]], *, from_turn: int = 1) -> None:
    turn = 0
    for message in transcript:
        if message["role"] == "assistant":
            turn += 1
        if turn < from_turn or message["role"] == "system":
            continue
        if message["role"] == "user":
            continue  # the question, printed above
        if message["role"] == "assistant":
            for call in message.get("tool_calls") or []:
                print(f"    {f'turn {turn}':<8} {describe_call(call)}")
            if message.get("content"):
                print(f"    {f'turn {turn}':<8} answer: {message['content']}")
        else:
            print(f"    {'tool':<8} {message['name']}: {describe_result(message)}")


def print_counts(output: dict[str, Any], bill: list[dict[str, Any]], turns: str) -> None:
    refused = sum(1 for request in bill if request["status"] == 429)
    budget = output["budget"]
    print(
        f"  Model calls: {len(bill)} for {turns} ({refused} refused with 429, asked again "
        "after a durable sleep)."
    )
    print(
        f"  Budget used: {output['turns']} of {budget['turns']} turns, "
        f"{output['tokens']} of {budget['tokens']} tokens."
    )


def most_started_in_a_window(model_calls: list[Task]) -> int:
    """The most model calls started in any window of the rate limit's length, (s, s + per]:
    a window holding the most can be slid until it ends at a start."""
    per = timedelta(seconds=MODEL_WINDOW_SECONDS)
    starts = sorted(started_at(call) for call in model_calls)
    return max(
        (sum(1 for other in starts if end - per < other <= end) for end in starts), default=0
    )


def started_at(task: Task) -> datetime:
    if task.started_at is None:
        raise RuntimeError(f"model call task {task.id} never started")
    return task.started_at


def print_rate_limit(model_calls: list[Task]) -> None:
    """What lesson 12's rate limit did to the model calls: the most started in a window,
    and the longest any waited, queued, for a unit."""
    waited = max((started_at(call) - call.inserted_at).total_seconds() for call in model_calls)
    print(
        f"  Rate limit {MODEL_RATE_LIMIT} ({MODEL_CALLS_PER_WINDOW} calls per "
        f"{MODEL_WINDOW_SECONDS:g} s): at most {most_started_in_a_window(model_calls)} started "
        f"in any {MODEL_WINDOW_SECONDS:g} s; the longest wait for a unit {waited:.1f} s."
    )


def demonstrate() -> bool:
    checks = Checks()
    LESSON.reset()
    with (
        tempfile.TemporaryDirectory(prefix="agent-world-") as directory,
        LESSON.pool(max_size=4) as pool,
    ):
        # The outside world (model provider, mail service), shared with the workers.
        os.environ[WORLD_VARIABLE] = directory
        world = World.here()
        with pool.connection() as conn:
            first = start_agent(conn, new_conversation(CONVERSATION, QUESTION))
        print(f'\nThe agent (task {first}) is asked: "{QUESTION}"')
        with (
            Approver(pool, world, "Ben"),
            worker_process({CRASH_AT: CRASH_POINT}) as doomed,
            worker_process() as rescuer,
        ):
            doomed.start()
            print(
                f"  Worker {doomed.id} runs it; it dies inside send_email, once the email is sent."
            )
            exit_code = doomed.wait(timeout=60)
            print(f"  Worker {doomed.id} was killed (exit code {exit_code}); worker ", end="")
            rescuer.start()
            print(f"{rescuer.id} takes over.")
            tasks = wait_for_conversation(pool, first)
            output = result_of(tasks)
            bill = world.model_requests.records()
            with pool.connection() as conn:
                recorded = model_events(conn, [task.id for task in tasks])
                model_calls = model_call_tasks(conn, [task.id for task in tasks])
            mail_after_run = world.mail.records()

            chain = ", ".join(str(task.id) for task in tasks)
            print(f"\n  The transcript (tasks {chain}: it continued as new after 4 turns):")
            print_transcript(output["transcript"])
            print_counts(output, bill, "turns 1 to 5")
            print_rate_limit(model_calls)
            requests = Counter(r["operation"] for r in world.mail_records("request"))
            print(
                f"  Mail service: {requests['send']} send requests, "
                f"{len(world.mail_records('sent'))} email sent."
            )

            with pool.connection() as conn:
                fork = fork_at_turn(conn, first, FORK_TURN)
            print(
                f"\n  The same run forked at turn {FORK_TURN} (task {fork.id}, "
                f"from event {fork.forked_at_event} of task {first}):"
            )
            fork_tasks = wait_for_conversation(pool, fork.id)
            fork_output = result_of(fork_tasks)
            fork_bill = world.model_requests.records()[len(bill) :]
            with pool.connection() as conn:
                fork_recorded = model_events(conn, [task.id for task in fork_tasks])
                fork_model_calls = model_call_tasks(conn, [task.id for task in fork_tasks])
                first_after_fork = [t.output for t in conversation_tasks(conn, first)]
            print_transcript(fork_output["transcript"], from_turn=FORK_TURN)
            print_counts(fork_output, fork_bill, f"turns {FORK_TURN} to 5")
            print_rate_limit(fork_model_calls)
            rescuer.stop()
        final_mail = world.mail.records()

    sent = [record["key"] for record in mail_after_run if record["kind"] == "sent"]
    drafts = [record["key"] for record in mail_after_run if record["kind"] == "draft"]
    sent_in_the_end = [record["key"] for record in final_mail if record["kind"] == "sent"]
    print()
    checks.check(exit_code == -9, f"worker {doomed.id} died by SIGKILL inside the email tool")
    checks.check(
        output["status"] == "answered" and output["turns"] == 5 and len(tasks) == 2,
        "the agent answered in 5 turns, across 2 tasks (continued as new after turn 4)",
        json.dumps({k: output[k] for k in ("status", "turns")}) + f", {len(tasks)} tasks",
    )
    asked = [request["turn"] for request in bill if request["status"] == 200]
    checks.check(
        len(bill) == len(recorded) == output["model_calls"] and asked == [1, 2, 3, 4, 5],
        f"the crash cost no model call twice: {len(bill)} billed, {len(recorded)} recorded, "
        "each turn answered once",
        f"billed turns {asked}, {len(recorded)} recorded",
    )
    most_in_a_window = most_started_in_a_window(model_calls + fork_model_calls)
    checks.check(
        len(model_calls) == len(recorded) and most_in_a_window <= MODEL_CALLS_PER_WINDOW,
        f"each model call was a child task on rate limit {MODEL_RATE_LIMIT}, and no "
        f"{MODEL_WINDOW_SECONDS:g} s started more than {MODEL_CALLS_PER_WINDOW} (lesson 12)",
        f"{most_in_a_window} started in one window",
    )
    checks.check(
        requests["send"] == 2 and len(sent) == 1 and drafts == sent,
        "the email was sent once: two send requests (the crash), one email, by its key",
        f"{requests['send']} requests, {len(sent)} sent",
    )
    fork_asked = sorted({request["turn"] for request in fork_bill})
    checks.check(
        fork_asked == [3, 4, 5] and len(fork_bill) == len(fork_recorded),
        f"the fork asked the model only from turn {FORK_TURN} on, each call recorded once",
        f"turns {fork_asked}, {len(fork_bill)} billed, {len(fork_recorded)} recorded",
    )
    first_call = output["transcript"][6]["tool_calls"][0]["arguments"]
    fork_call = fork_output["transcript"][6]["tool_calls"][0]["arguments"]
    checks.check(
        first_call != fork_call and fork_output["answer"] != output["answer"],
        f"asked again at turn {FORK_TURN}, the model answered otherwise, and so did the fork",
        f"{first_call} then {fork_call}",
    )
    checks.check(
        len(set(sent_in_the_end)) == len(sent_in_the_end) == 2
        and mail_after_run == final_mail[: len(mail_after_run)]
        and first_after_fork == [task.output for task in tasks],
        "the fork sent its own email and left the first run's as they were",
        f"{len(sent_in_the_end)} emails sent",
    )
    return checks.passed


if __name__ == "__main__":
    parser = argument_parser(__doc__ or "")
    configure_logging(parser.parse_args().verbose)
    run_lesson(demonstrate)
