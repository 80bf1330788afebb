"""Lessons 08 to 11: a schema whose name is too long for its notification channels is
refused once, when its tables are created, with a message that says the limit.

A channel is named after the schema (`<schema>.task_queued`) and PostgreSQL
refuses a channel name over 63 bytes: a schema name of 63 characters, which the
course's name check accepts, used to install fine and then fail every enqueue,
misreported as an input that cannot be stored.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from lessons.common.database import connect, create_pool, drop_schema, reset_schema
from lessons.lesson08_listen_notify.db.models import TaskStatus
from lessons.lesson08_listen_notify.demo.tasks import DURABLE_FUNCTIONS, FUNCTIONS
from lessons.lesson08_listen_notify.engine.client import enqueue, wait_for_task
from lessons.lesson08_listen_notify.engine.worker import Worker
from tests.conftest import LESSONS_DIRECTORY

# Each lesson's longest schema name: 63 bytes less its longest channel suffix,
# ".child_finished" in lesson 08, ".task_queued" from lesson 09 on.
LONGEST_NAMES = [
    ("lesson08_listen_notify", 48),
    ("lesson09_durable_sleep", 51),
    ("lesson10_durable_events", 51),
    ("lesson11_retries_replays_forks", 51),
]
# Far longer than the test: a task that completes promptly was woken by a notification.
VERY_LONG_POLL = 60.0
PROMPTLY = 5.0


def schema_name(length: int) -> str:
    """A schema name no other test uses, `length` characters long."""
    prefix = f"test_{uuid.uuid4().hex[:10]}_"
    return prefix + "s" * (length - len(prefix))


def schema_exists(url: str, schema: str) -> bool:
    with connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (schema,)
        ).fetchone()
    return row is not None and row[0] == 1


@pytest.fixture
def schemas(database_url: str) -> Iterator[list[str]]:
    """The schemas a test creates, dropped after it."""
    created: list[str] = []
    yield created
    for schema in created:
        drop_schema(schema, url=database_url)


@pytest.mark.parametrize(
    ("lesson", "longest"), LONGEST_NAMES, ids=[lesson for lesson, _ in LONGEST_NAMES]
)
def test_a_schema_name_too_long_for_its_channels_is_refused_when_its_tables_are_created(
    database_url: str, schemas: list[str], lesson: str, longest: int
) -> None:
    schema_sql = LESSONS_DIRECTORY / lesson / "sql" / "schema.sql"
    for length in (longest + 1, 63):
        schema = schema_name(length)
        schemas.append(schema)
        with pytest.raises(psycopg.errors.NameTooLong) as refused:
            reset_schema(schema, schema_sql, url=database_url)
        assert str(refused.value).startswith(
            f"schema name {schema} is too long for this lesson's notifications: "
            f"a schema name may have {longest} bytes at most"
        ), refused.value
        assert not schema_exists(database_url, schema)  # nothing was created
    accepted = schema_name(longest)
    schemas.append(accepted)
    reset_schema(accepted, schema_sql, url=database_url)
    assert schema_exists(database_url, accepted)


def test_a_schema_with_the_longest_name_enqueues_and_its_worker_hears_the_notification(
    database_url: str, schemas: list[str]
) -> None:
    schema = schema_name(48)
    schemas.append(schema)
    schema_sql = LESSONS_DIRECTORY / "lesson08_listen_notify" / "sql" / "schema.sql"
    reset_schema(schema, schema_sql, url=database_url)
    pool = create_pool(schema, url=database_url, max_size=8)
    try:
        with Worker(
            pool,
            FUNCTIONS,
            durable_functions=DURABLE_FUNCTIONS,
            queue="orders",
            slots=1,
            poll_interval=VERY_LONG_POLL,
        ):
            # The worker has claimed nothing yet: its next poll is a minute away.
            started = time.monotonic()
            with pool.connection() as conn:
                task_id = enqueue(conn, "note_start", {}, queue="orders")
            task = wait_for_task(pool, task_id, timeout=PROMPTLY)
        assert task.status == TaskStatus.COMPLETED, task.output
        assert time.monotonic() - started < PROMPTLY
    finally:
        pool.close()
