"""Remind the approver: `new_conversation(..., remind_after=SECONDS)`.

An approval may be slow because the person has not seen the draft. Let
`new_conversation` take `remind_after` (None, no reminder, unless told
otherwise), and have the agent, when no answer to an approval has come
`remind_after` seconds after it asked, run one child task `send_reminder`
(`{"key": <the email's key>}`, a tool of `demo/tasks.py`'s FUNCTIONS), then
wait for the rest of the approval's timeout, not a whole new one. The check
runs the research agent on a worker process: with a person who answers only
once a reminder has been sent, the run sends one reminder, then the email,
once, and answers, its history holding two waits for the approval whose
timeouts add up to the approval's; with a person who answers at once, no
reminder; with nobody answering, one reminder, and the run ends `approval
timed out` when the approval's timeout has passed, the draft discarded.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from exercises import expect
from lessons.lesson16_durable_ai_agent.db.models import EventKind, TaskStatus
from lessons.lesson16_durable_ai_agent.db.queries import Querier
from lessons.lesson16_durable_ai_agent.demo import agent as agent_module
from lessons.lesson16_durable_ai_agent.demo.agent import start_agent
from lessons.lesson16_durable_ai_agent.demo.approver import Approver
from lessons.lesson16_durable_ai_agent.demo.world import World
from lessons.lesson16_durable_ai_agent.engine.client import push_event
from tests.conftest import LessonDatabase
from tests.lesson16.conversations import (
    CONVERSATION,
    QUESTION,
    Conversation,
    observe,
    wait_for_conversation,
    worker_process,
)

LESSON = "lesson16_durable_ai_agent"
REMIND_AFTER = 0.5


@pytest.fixture
def database(lesson_database: Callable[..., LessonDatabase]) -> LessonDatabase:
    expect(
        "remind_after" in inspect.signature(agent_module.new_conversation).parameters,
        "lesson 16's new_conversation() has no `remind_after` parameter yet: see exercise 2 "
        "in its README",
    )
    return lesson_database(LESSON)


def reminded(database: LessonDatabase) -> bool:
    with database.pool.connection() as conn:
        return any(
            task.task_name == "send_reminder" and task.status == TaskStatus.COMPLETED
            for task in Querier(conn).list_tasks()
        )


@contextmanager
def approves_once_reminded(database: LessonDatabase) -> Iterator[None]:
    """A person who answers the open approvals, but only once a reminder was sent."""
    stop = threading.Event()

    def answer() -> None:
        while not stop.wait(0.02):
            if not reminded(database):
                continue
            with database.pool.connection() as conn:
                for wait in Querier(conn).list_event_waits():
                    if wait.ended_at is None and wait.key.startswith("approval:"):
                        push_event(conn, wait.key, {"approved": True, "by": "Ben"})

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run(
    database: LessonDatabase,
    directory: Path,
    person: Callable[[World], AbstractContextManager[Any]],
    *,
    approval_timeout: float = 60.0,
) -> Conversation:
    world = World(directory)
    # Typed loosely: the lesson as shipped has no `remind_after` parameter.
    new_conversation: Callable[..., dict[str, Any]] = agent_module.new_conversation
    state = new_conversation(
        CONVERSATION, QUESTION, approval_timeout=approval_timeout, remind_after=REMIND_AFTER
    )
    with database.pool.connection() as conn:
        first = start_agent(conn, state)
    with person(world), worker_process(database.schema, world) as worker:
        worker.start()
        tasks = wait_for_conversation(database.pool, first)
    return observe(database.pool, world, tasks)


def approval_waits(database: LessonDatabase, conversation: Conversation) -> list[float]:
    """The timeouts of the conversation's waits for an approval, in order."""
    with database.pool.connection() as conn:
        queries = Querier(conn)
        return [
            event.input["timeout"]
            for task in conversation.tasks
            for event in queries.list_task_events(task_id=task.id)
            if event.kind == EventKind.WAIT and event.name.startswith("approval:")
        ]


def test_a_slow_approval_gets_one_reminder(database: LessonDatabase, tmp_path: Path) -> None:
    conversation = run(database, tmp_path, lambda world: approves_once_reminded(database))
    assert conversation.children["send_reminder"] == 1, conversation.children
    assert conversation.output["status"] == "answered"
    assert len(conversation.mail_of("sent")) == 1
    waits = approval_waits(database, conversation)
    assert len(waits) == 2 and sum(waits) == pytest.approx(60.0), waits


def test_a_prompt_approval_gets_no_reminder(database: LessonDatabase, tmp_path: Path) -> None:
    conversation = run(database, tmp_path, lambda world: Approver(database.pool, world, "Ben"))
    assert "send_reminder" not in conversation.children
    assert conversation.output["status"] == "answered"


def test_an_approval_that_never_comes_is_reminded_then_times_out(
    database: LessonDatabase, tmp_path: Path
) -> None:
    @contextmanager
    def nobody(world: World) -> Iterator[None]:
        yield

    conversation = run(database, tmp_path, nobody, approval_timeout=1.5)
    assert conversation.children["send_reminder"] == 1
    assert conversation.output["status"] == "approval timed out"
    assert len(conversation.mail_of("discarded")) == 1
    assert sum(approval_waits(database, conversation)) == pytest.approx(1.5)
