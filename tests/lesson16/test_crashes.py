"""Lesson 16's agent survives a SIGKILL anywhere, and a crash costs no model call;
nor does a database outage longer than the workers' leases.

What it proves, with the real server and real worker processes: a worker
SIGKILLed at every turn boundary (COURSE_CRASH_AT=agent:turn-N, just before
turn N asks the model), inside a tool call (the draft saved, or the email
sent, and the tool not yet returned), when the agent returns, and at the
engine's crash points in the middle of its operations (a model call's or a
tool's child being spawned, the backoff's sleep, the approval's wait, the
continuation), is
replaced by another worker, and the conversation ends exactly as an
uninterrupted run does: the same transcript and result, the same number of
model calls billed by the provider (each recorded once in the history: none
asked twice), one draft and one email sent, and each model call and each tool
call run as one child task. What the provider and the mail service saw is read from their
own ledgers (demo/world.py), not from the engine's word. The outage goes
through a TCP proxy (tests/database_proxy.py): the database vanishes for both
workers at once, while the server stays up for the test.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lessons.common.database import create_pool, drop_schema, reset_schema
from tests.conftest import LESSONS_DIRECTORY, LessonDatabase
from tests.database_proxy import DatabaseProxy
from tests.lesson16.conversations import Conversation, Outage, run_conversation

LESSON = "lesson16_durable_ai_agent"

# Turn 5 is asked by the task it continued as (after turn 4): its boundary is the
# continuation's too.
CRASH_POINTS = [
    *(f"agent:turn-{turn}" for turn in range(1, 6)),
    "draft_email:saved",
    "send_email:sent",
    "task_returned:agent",
    # The engine's own points, where the agent's operations are half done: turn 1's
    # model call spawned with the agent's suspension, not committed; the email's
    # draft (a keyed child) spawned, not committed; the backoff's sleep, the
    # approval's wait opened, the approval received and not used; the continuation
    # written, not committed.
    "call:before_commit",
    "spawn_child:before_commit",
    "sleep:before_commit",
    "wait_for_event:suspended",
    "wait_for_event:received",
    "continue_as_new:before_commit",
]


@pytest.fixture(scope="module")
def uninterrupted(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Conversation]:
    """The conversation run once without a crash: what every crashed run must give."""
    schema = f"test_lesson16_uninterrupted_{uuid.uuid4().hex[:8]}"
    reset_schema(schema, LESSONS_DIRECTORY / LESSON / "sql" / "schema.sql", url=database_url)
    with create_pool(schema, url=database_url, max_size=4) as pool:
        yield run_conversation(pool, schema, tmp_path_factory.mktemp("world"))
    drop_schema(schema, url=database_url)


def test_an_uninterrupted_run_answers_and_emails_once(uninterrupted: Conversation) -> None:
    output = uninterrupted.output
    assert output["status"] == "answered"
    assert output["turns"] == 5
    assert len(uninterrupted.tasks) == 2, "it continues as new after 4 turns"
    # Five answers, and one refusal (the provider is busy on every 4th request).
    assert [(r["turn"], r["status"]) for r in uninterrupted.bill] == [
        (1, 200),
        (2, 200),
        (3, 200),
        (4, 429),
        (4, 200),
        (5, 200),
    ]
    assert output["model_calls"] == uninterrupted.recorded_model_calls == 6
    assert output["backoffs"] == 1
    assert len(uninterrupted.mail_of("sent")) == 1
    assert uninterrupted.mail_of("discarded") == []
    # Each model call a child task too, on the rate limit (the 429's call included).
    assert uninterrupted.children == {
        "call_model": 6,
        "search": 2,
        "calculate": 1,
        "draft_email": 1,
        "send_email": 1,
    }


@pytest.mark.parametrize("crash_at", CRASH_POINTS)
def test_a_crash_changes_nothing_and_costs_no_model_call(
    lesson_database: Callable[..., LessonDatabase],
    tmp_path: Path,
    uninterrupted: Conversation,
    crash_at: str,
) -> None:
    database = lesson_database(LESSON, max_size=4)
    crashed = run_conversation(database.pool, database.schema, tmp_path, crash_at=crash_at)

    assert crashed.output == uninterrupted.output
    # The provider's own bill: the same requests, in the same order, none twice.
    assert [(r["turn"], r["request"], r["status"]) for r in crashed.bill] == [
        (r["turn"], r["request"], r["status"]) for r in uninterrupted.bill
    ]
    assert crashed.recorded_model_calls == len(crashed.bill)
    # Each effect once (a tool killed after its effect ran twice: the key held).
    assert crashed.mail_of("draft") == uninterrupted.mail_of("draft")
    assert crashed.mail_of("sent") == uninterrupted.mail_of("sent")
    assert crashed.mail_of("discarded") == []
    assert crashed.children == uninterrupted.children
    if crash_at.startswith(("draft_email", "send_email")):
        operation = "save_draft" if crash_at.startswith("draft") else "send"
        requests = [r for r in crashed.mail_of("request") if r["operation"] == operation]
        assert len(requests) == 2, "the tool killed inside its call ran again"


def test_a_crash_inside_a_model_call_costs_that_call_and_nothing_else(
    lesson_database: Callable[..., LessonDatabase],
    tmp_path: Path,
    uninterrupted: Conversation,
) -> None:
    """The one moment a crash costs a model call: answered, billed, not yet recorded
    (`model:answered`, turn 1, inside the `call_model` child). The child's next
    attempt asks again: one more line on the bill, the same request; the run is
    otherwise the uninterrupted one."""
    database = lesson_database(LESSON, max_size=4)
    crashed = run_conversation(database.pool, database.schema, tmp_path, crash_at="model:answered")

    assert crashed.output == uninterrupted.output
    assert len(crashed.bill) == len(uninterrupted.bill) + 1
    first, again = crashed.bill[:2]
    assert (first["turn"], again["turn"]) == (1, 1) and first["request"] == again["request"]
    # The answers asked for after it are the uninterrupted run's. (Its 429 comes a
    # request sooner: the scripted provider is busy by count.)
    answered = [r["request"] for r in crashed.bill if r["status"] == 200]
    assert answered[1:] == [r["request"] for r in uninterrupted.bill if r["status"] == 200]
    assert crashed.recorded_model_calls == len(uninterrupted.bill)
    assert crashed.mail_of("sent") == uninterrupted.mail_of("sent")


def test_an_outage_of_three_leases_changes_nothing_and_costs_no_model_call(
    lesson_database: Callable[..., LessonDatabase],
    database_url: str,
    tmp_path: Path,
    uninterrupted: Conversation,
) -> None:
    """Two workers reach the database through a proxy, cut for 3 s (three leases)
    once the provider has billed two requests: a model call's answer, and the
    agent's next operations, wait or end as infrastructure failures and are tried
    again when the database is back. The run ends as the uninterrupted one does,
    with the same bill: nothing asked twice, each effect once."""
    database = lesson_database(LESSON, max_size=4)
    with DatabaseProxy(database_url) as proxy:
        interrupted = run_conversation(
            database.pool,
            database.schema,
            tmp_path,
            outage=Outage(proxy, after_model_requests=2, seconds=3.0),
        )

    assert interrupted.output == uninterrupted.output
    assert [(r["turn"], r["request"], r["status"]) for r in interrupted.bill] == [
        (r["turn"], r["request"], r["status"]) for r in uninterrupted.bill
    ]
    assert interrupted.recorded_model_calls == len(interrupted.bill)
    assert interrupted.mail_of("sent") == uninterrupted.mail_of("sent")
    assert interrupted.mail_of("discarded") == []
    assert interrupted.children == uninterrupted.children
