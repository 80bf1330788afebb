"""The generated fixture code runs against PostgreSQL, through both queriers.

Every test body is written once against the sync API; the async querier runs it
through `Blocking`, which drives each coroutine on one event loop.
"""

import datetime
import uuid
from collections.abc import Iterator
from decimal import Decimal
from ipaddress import ip_interface, ip_network
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.range import Range

from tests.generator.conftest import each_querier
from tests.generator.golden.fixture import models
from tests.generator.golden.fixture.queries import (
    AsyncQuerier,
    CopyEventsParams,
    GetEventInputsParams,
    GetEventInputsRow,
    InsertSampleParams,
    ListEventsOfTypeParams,
    ListSamplesByFeelingRow,
    Querier,
    RenameEventsParams,
)

UTC = datetime.UTC
PLUS_TWO = datetime.timezone(datetime.timedelta(hours=2))

EVERYTHING = InsertSampleParams(
    small=-32768,
    regular=2**31 - 1,
    big=2**63 - 1,
    single=1.5,
    double=0.1,
    exact=Decimal("12345.678"),
    cash="12.34",
    flag=True,
    body="quotes ' \" a % sign and $1",
    short="short",
    fixed="ab",
    raw=b"\x00\xff\x00",
    day=datetime.date(2024, 2, 29),
    clock=datetime.time(23, 59, 59, 999999),
    zoned_clock=datetime.time(12, 30, tzinfo=PLUS_TWO),
    moment=datetime.datetime(2024, 1, 2, 3, 4, 5, 6),
    zoned_moment=datetime.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
    duration=datetime.timedelta(days=3, seconds=4, microseconds=5),
    identifier=uuid.UUID("12345678-1234-5678-1234-567812345678"),
    address=ip_interface("192.168.0.1/24"),
    network=ip_network("2001:db8::/32"),
    hardware="08:00:2b:01:02:03",
    document={"nested": [1, None, "two"]},
    binary_document=[1, "two", {"three": 3.5}, None, True],
    feeling=models.Mood.VERY_HAPPY,
    numbers=[1, -2, 3],
    grid=[[1, 2], [3, 4]],
    words=["plain", "comma,here", 'quote"here', "NULL", ""],
    feelings=[models.Mood.SAD, models.Mood.AB, models.Mood.SAY_HI],
    feeling_grid=[[models.Mood.OK, models.Mood.SAD], [models.Mood.VERY_HAPPY, models.Mood.AB]],
    documents=[{"a": 1}, [1, 2], "text", 4.5],
    span=Range(1, 10),
    period=Range(datetime.datetime(2024, 1, 1, tzinfo=UTC), None),
    location="(1.5,-2)",
)

NOTHING = InsertSampleParams(**{field: None for field in InsertSampleParams.__dataclass_fields__})


@pytest.fixture(params=["sync", "async"])
def querier(
    request: pytest.FixtureRequest,
    fixture_schema_connection: psycopg.Connection[Any],
    database_url: str,
) -> Iterator[Any]:
    yield from each_querier(
        request.param, fixture_schema_connection, database_url, Querier, AsyncQuerier
    )


def test_every_type_round_trips(querier: Any) -> None:
    inserted = querier.insert_sample(EVERYTHING)
    assert isinstance(inserted, models.Sample)
    fetched = querier.get_sample(id=inserted.id)
    assert fetched == inserted
    # PostgreSQL's own text forms: money gets its currency, char(n) its padding.
    expected = {**vars_of(EVERYTHING), "cash": "$12.34", "fixed": "ab "}
    assert vars_of(fetched) == {"id": inserted.id, **expected}


def test_enums_come_back_as_members_also_inside_arrays(querier: Any) -> None:
    fetched = querier.insert_sample(EVERYTHING)
    assert type(fetched.feeling) is models.Mood
    assert all(type(member) is models.Mood for member in fetched.feelings)
    assert all(type(member) is models.Mood for row in fetched.feeling_grid for member in row)


def test_nulls_round_trip(querier: Any) -> None:
    inserted = querier.insert_sample(NOTHING)
    assert vars_of(querier.get_sample(id=inserted.id)) == {"id": inserted.id, **vars_of(NOTHING)}


def test_enum_arguments_accept_members_and_plain_strings(querier: Any) -> None:
    sad = querier.insert_sample(InsertSampleParams(**{**vars_of(NOTHING), "feeling": "sad"}))
    happy = querier.insert_sample(
        InsertSampleParams(**{**vars_of(NOTHING), "feeling": models.Mood.VERY_HAPPY})
    )
    assert querier.list_samples_by_feeling(feelings=["sad", models.Mood.VERY_HAPPY]) == [
        ListSamplesByFeelingRow(id=sad.id, feeling=models.Mood.SAD, feelings=None),
        ListSamplesByFeelingRow(id=happy.id, feeling=models.Mood.VERY_HAPPY, feelings=None),
    ]
    assert querier.list_samples_by_feeling(feelings=()) == []


def test_one_returns_none_without_a_row(querier: Any) -> None:
    assert querier.get_sample(id=-1) is None


def test_exec_commands_report_what_they_did(querier: Any) -> None:
    ids = [querier.insert_sample(NOTHING).id for _ in range(3)]
    assert querier.count_samples() == 3
    assert querier.set_feeling(feeling="ok", ids=(ids[0], ids[1])) == 2
    assert querier.set_feeling(feeling=None, ids=[ids[0]]) == 1
    assert querier.get_sample(id=ids[0]).feeling is None
    result = querier.touch_samples()
    assert result == models.ExecResult(rowcount=3, statusmessage="UPDATE 3")
    assert querier.delete_sample(id=ids[2]) is None
    assert querier.get_sample(id=ids[2]) is None


def test_one_column_results_are_bare_values(querier: Any) -> None:
    sad = querier.insert_sample(InsertSampleParams(**{**vars_of(NOTHING), "feeling": "sad"}))
    unset = querier.insert_sample(NOTHING)
    assert querier.get_sample_feeling(id=sad.id) is models.Mood.SAD
    assert querier.get_sample_feeling(id=unset.id) is None
    assert querier.get_sample_feeling(id=-1) is None
    querier.create_event(from_="a", type_="x", input_=None, sample_id=None)
    querier.copy_events([CopyEventsParams(from_="b", type_="y", input_=1, feeling="a,b")])
    feelings = querier.list_event_feelings()
    assert feelings == [models.Mood.OK, models.Mood.AB]
    assert all(type(feeling) is models.Mood for feeling in feelings)


def test_keyword_and_builtin_names_are_escaped(querier: Any) -> None:
    event = querier.create_event(from_="me", type_="greeting", input_={"hi": 1}, sample_id=None)
    assert event == models.Event(
        id=event.id,
        from_="me",
        type="greeting",
        input={"hi": 1},
        feeling=models.Mood.OK,
        sample_id=None,
    )


def test_json_null_is_stored_for_a_not_null_column(querier: Any) -> None:
    event = querier.create_event(from_="me", type_="t", input_=None, sample_id=None)
    assert event.input is None
    sample = querier.insert_sample(NOTHING)
    assert sample.binary_document is None


def test_copyfrom_sends_rows_with_copy(querier: Any) -> None:
    rows = [
        CopyEventsParams(from_="a", type_="x", input_={"n": 1}, feeling=models.Mood.SAD),
        CopyEventsParams(from_="b", type_="y", input_=[1, "2"], feeling="a,b"),
    ]
    assert querier.copy_events(rows) == 2
    events = querier.find_events(type_=None)
    assert [(e.from_, e.type, e.input, e.feeling) for e in events] == [
        ("a", "x", {"n": 1}, models.Mood.SAD),
        ("b", "y", [1, "2"], models.Mood.AB),
    ]
    assert [e.from_ for e in querier.find_events(type_="y")] == ["b"]


def test_batch_commands_run_once_per_parameter_set(querier: Any) -> None:
    first = querier.create_event(from_="a", type_="x", input_=1, sample_id=None)
    second = querier.create_event(from_="b", type_="x", input_=2, sample_id=None)
    assert (
        querier.rename_events(
            [
                RenameEventsParams(new_from="A", id=first.id),
                RenameEventsParams(new_from="B", id=second.id),
            ]
        )
        is None
    )
    assert [e.from_ for e in querier.find_events(type_="x")] == ["A", "B"]
    assert querier.get_event_inputs(
        [GetEventInputsParams(id=second.id), GetEventInputsParams(id=-1)]
    ) == [GetEventInputsRow(id=second.id, input=2), None]
    assert querier.list_events_of_type(
        [ListEventsOfTypeParams(type_="x"), ListEventsOfTypeParams(type_="none")]
    ) == [[first.id, second.id], []]
    assert querier.get_event_inputs([]) == []
    assert querier.list_events_of_type(iter([])) == []


def test_embedded_tables_become_nested_models(querier: Any) -> None:
    sample = querier.insert_sample(EVERYTHING)
    event = querier.create_event(from_="a", type_="x", input_={}, sample_id=sample.id)
    [row] = querier.events_with_samples()
    assert row.event == event
    assert row.sample == sample
    assert row.sample_feeling is models.Mood.VERY_HAPPY


def test_placeholders_in_literals_are_left_alone(querier: Any) -> None:
    row = querier.placeholders(word="ab")
    assert (row.percent, row.dollar_literal, row.dollar_quoted) == ("100%", "$1", " $2 ")
    assert (row.doubled, row.column_5) == ("abab", 2)


def test_methods_run_in_the_callers_transaction(
    fixture_schema_connection: psycopg.Connection[Any],
) -> None:
    querier: Any = Querier(fixture_schema_connection)
    with pytest.raises(RuntimeError), fixture_schema_connection.transaction():
        querier.insert_sample(NOTHING)
        assert querier.count_samples() == 1
        raise RuntimeError("roll back")
    assert querier.count_samples() == 0


def test_results_ignore_the_connections_row_factory(
    fixture_schema_connection: psycopg.Connection[Any],
) -> None:
    fixture_schema_connection.row_factory = dict_row
    querier: Any = Querier(fixture_schema_connection)
    inserted = querier.insert_sample(EVERYTHING)
    assert querier.get_sample(id=inserted.id) == inserted


def vars_of(instance: Any) -> dict[str, Any]:
    return {field: getattr(instance, field) for field in instance.__dataclass_fields__}


def test_pydantic_models_round_trip(fixture_schema_connection: psycopg.Connection[Any]) -> None:
    pytest.importorskip("pydantic")
    from tests.generator.golden.pydantic_models import models as pydantic_models
    from tests.generator.golden.pydantic_models.queries import Querier as PydanticQuerier

    querier = PydanticQuerier(fixture_schema_connection)
    sample = querier.insert_sample(**vars_of(EVERYTHING))
    assert isinstance(sample, pydantic_models.Sample)
    assert sample.feeling is pydantic_models.Mood.VERY_HAPPY
    assert querier.get_sample(id=sample.id) == sample
