"""emit_streaming_many: :many methods are generators over cursor.stream(), sync and async.

golden/streaming is the fixture's SQL generated with that option.
"""

import asyncio
from collections.abc import AsyncGenerator, Generator
from typing import Any

import psycopg

from tests.generator.golden.streaming import models
from tests.generator.golden.streaming.queries import AsyncQuerier, Querier


def test_many_yields_rows_one_by_one(fixture_schema_connection: psycopg.Connection[Any]) -> None:
    querier = Querier(fixture_schema_connection)
    for kind in ("x", "y", "x"):
        querier.create_event(from_="a", type_=kind, input_=None, sample_id=None)
    events = querier.find_events(type_="x")
    assert isinstance(events, Generator)
    assert [(e.type, e.feeling) for e in events] == [("x", models.Mood.OK)] * 2
    assert list(querier.list_event_feelings()) == [models.Mood.OK] * 3


def test_an_abandoned_stream_leaves_the_connection_usable(
    fixture_schema_connection: psycopg.Connection[Any],
) -> None:
    querier = Querier(fixture_schema_connection)
    for _ in range(3):
        querier.create_event(from_="a", type_="x", input_=None, sample_id=None)
    events = querier.find_events(type_=None)
    next(events)
    # Closing the generator closes its cursor mid-stream.
    events.close()
    assert querier.count_samples() == 0


def test_async_many_yields_rows_one_by_one(
    fixture_schema_connection: psycopg.Connection[Any], database_url: str
) -> None:
    Querier(fixture_schema_connection).create_event(
        from_="a", type_="x", input_=None, sample_id=None
    )
    schema = fixture_schema_connection.execute("SELECT current_schema()").fetchone()
    assert schema is not None

    async def stream_events() -> list[str]:
        async with await psycopg.AsyncConnection.connect(
            database_url, autocommit=True, options=f"-c search_path={schema[0]}"
        ) as conn:
            events = AsyncQuerier(conn).find_events(type_=None)
            assert isinstance(events, AsyncGenerator)
            return [event.from_ async for event in events]

    assert asyncio.run(stream_events()) == ["a"]
