"""One PostgreSQL server per test session, a fresh schema per test, and what every
test's child processes need.

The server is chosen like everywhere else in the course (`DATABASE_URL`, else
embedded), with one addition: when a Docker daemon answers, testcontainers
starts a throw-away PostgreSQL for the session.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from lessons.common.database import (
    connect,
    create_pool,
    drop_schema,
    reset_schema,
    start_embedded_server,
)
from tests.recording import close_connections
from tests.worker_processes import python_path_with_repository

LESSONS_DIRECTORY = Path(__file__).resolve().parents[1] / "lessons"


def docker_daemon_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=2)
        client.ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """The session's server. Exported as DATABASE_URL so worker processes find it too."""
    from_environment = os.environ.get("DATABASE_URL")
    if from_environment:
        yield from_environment
        return
    if docker_daemon_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:18", driver=None) as container:
            url = container.get_connection_url()
            os.environ["DATABASE_URL"] = url
            yield url
            del os.environ["DATABASE_URL"]
        return
    url = start_embedded_server()
    os.environ["DATABASE_URL"] = url
    yield url
    del os.environ["DATABASE_URL"]


@pytest.fixture
def fresh_schema(database_url: str) -> Iterator[str]:
    """An empty schema no other test can see, dropped after the test."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    with connect(database_url) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    yield schema
    drop_schema(schema, url=database_url)


@dataclass
class LessonDatabase:
    """A lesson's tables in a schema of their own, and a pool that uses them."""

    url: str
    schema: str
    pool: ConnectionPool


@pytest.fixture
def lesson_database(
    database_url: str,
) -> Iterator[Callable[..., LessonDatabase]]:
    """Factory: `lesson_database("lesson02_simple_task_queue")` applies that lesson's
    schema.sql to a new schema and returns a pool whose search_path is that schema."""
    created: list[LessonDatabase] = []

    def make(lesson: str, *, max_size: int = 8) -> LessonDatabase:
        schema = f"test_{lesson[:8]}_{uuid.uuid4().hex[:10]}"
        reset_schema(schema, LESSONS_DIRECTORY / lesson / "sql" / "schema.sql", url=database_url)
        pool = create_pool(schema, url=database_url, max_size=max_size)
        database = LessonDatabase(url=database_url, schema=schema, pool=pool)
        created.append(database)
        return database

    yield make
    for database in created:
        database.pool.close()
        drop_schema(database.schema, url=database_url)


@pytest.fixture(autouse=True)
def children_can_import_the_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Put the repository on PYTHONPATH for the test's duration.

    The lessons' own `WorkerProcess` (lessons 04-11) and the tools the tests run as
    subprocesses pass this process's environment on; with the repository on PYTHONPATH
    they can import the tests' task-function modules, such as `tests.lesson07.functions`.
    """
    monkeypatch.setenv("PYTHONPATH", python_path_with_repository(os.environ.get("PYTHONPATH", "")))


@pytest.fixture(autouse=True)
def recording_connections_closed() -> Iterator[None]:
    """After the test, close the connections that task functions run by in-process
    workers opened to record what they did (`tests.recording.record`), so that none
    outlives the test's schema."""
    yield
    close_connections()
