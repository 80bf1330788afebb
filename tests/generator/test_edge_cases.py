"""Output that was once broken, run against PostgreSQL through both queriers.

The SQL is in sql/edge_cases/; test_golden.py checks the same generated code imports,
passes mypy --strict, ruff format at its line length and ruff check.
"""

import datetime
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, get_type_hints

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.generator.conftest import each_querier
from tests.generator.golden.edge_cases import models
from tests.generator.golden.edge_cases.queries import (
    AsyncQuerier,
    CopyUsersParams,
    DatetimeRow,
    InsertGadgetParams,
    ModelsRow,
    Querier,
)

GADGET = InsertGadgetParams(
    uuid_=uuid.UUID("12345678-1234-5678-1234-567812345678"),
    datetime_=datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
    date=datetime.date(2024, 2, 29),
    models_="m",
    json={"a": [1, 2]},
    schema="s",
    copy_="c",
    dict_="d",
    validate="v",
    model_config="mc",
    model_fields="mf",
    letter=models.Letter.O,
)


@pytest.fixture(params=["sync", "async"])
def querier(
    request: pytest.FixtureRequest,
    edge_cases_connection: psycopg.Connection[Any],
    database_url: str,
) -> Iterator[Any]:
    yield from each_querier(
        request.param, edge_cases_connection, database_url, Querier, AsyncQuerier
    )


def test_fields_and_methods_named_like_modules_are_escaped(querier: Any) -> None:
    gadget = querier.insert_gadget(GADGET)
    assert (gadget.uuid_, gadget.datetime_, gadget.date) == (
        GADGET.uuid_,
        GADGET.datetime_,
        GADGET.date,
    )
    assert gadget.models_ == "m"
    assert querier.uuid_(id=gadget.id) == GADGET.uuid_
    assert querier.datetime_() == [
        DatetimeRow(datetime_=GADGET.datetime_, uuid_=GADGET.uuid_, date=GADGET.date)
    ]
    assert querier.models_(id=gadget.id) == ModelsRow(models_="m", letter=models.Letter.O)


def test_enum_members_o_and_i_round_trip(querier: Any) -> None:
    gadget = querier.insert_gadget(GADGET)
    assert querier.models_(id=gadget.id).letter is models.Letter.O
    assert [member.value for member in models.Letter] == ["o", "i", "x"]


def test_a_table_without_columns_is_an_empty_model() -> None:
    assert models.Emptied() == models.Emptied()


def test_copyfrom_with_named_parameters_copies_into_the_columns(querier: Any) -> None:
    rows = [
        CopyUsersParams(id_param=1, name_param="a"),
        CopyUsersParams(id_param=2, name_param="b"),
    ]
    assert querier.copy_users(rows) == 2
    assert querier.users_by_ids(ids=[2, 1]) == [
        models.UserDatum(id=1, name="a"),
        models.UserDatum(id=2, name="b"),
    ]


def test_a_slice_takes_a_sequence(querier: Any) -> None:
    assert get_type_hints(Querier.users_by_ids)["ids"] == Sequence[int]
    querier.copy_users([CopyUsersParams(id_param=n, name_param=str(n)) for n in range(3)])
    assert [user.id for user in querier.users_by_ids(ids=(0, 2))] == [0, 2]
    assert querier.users_by_ids(ids=[]) == []


def test_sql_with_tabs_is_sent_unchanged(querier: Any) -> None:
    querier.copy_users([CopyUsersParams(id_param=1, name_param="tab")])
    assert querier.user_names_with_tabs() == ["tab"]


def test_void_results_are_none(querier: Any) -> None:
    assert get_type_hints(Querier.sleep)["return"] is type(None)
    assert querier.sleep() is None


def test_json_parameters_take_plain_values_or_values_wrapped_already(querier: Any) -> None:
    """A JSON parameter takes a plain value, and one the caller wrapped itself (it
    is not wrapped twice, which psycopg could not serialize)."""
    gadget = querier.insert_gadget(GADGET)
    assert querier.set_gadget_json(json=[1, "two"], id=gadget.id) == 1
    assert querier.set_gadget_json(json=None, id=gadget.id) == 1
    assert querier.set_gadget_json(json=Jsonb({"wrapped": True}), id=gadget.id) == 1


def test_pydantic_fields_named_like_base_model_attributes_keep_the_column_name(
    edge_cases_connection: psycopg.Connection[Any],
) -> None:
    pytest.importorskip("pydantic")
    from tests.generator.golden.edge_cases_pydantic import models as pydantic_models
    from tests.generator.golden.edge_cases_pydantic.queries import (
        InsertGadgetParams as PydanticParams,
    )
    from tests.generator.golden.edge_cases_pydantic.queries import Querier as PydanticQuerier

    fields: dict[str, Any] = {
        "uuid_": GADGET.uuid_,
        "datetime_": GADGET.datetime_,
        "date": GADGET.date,
        "models_": "m",
        "json": {"a": 1},
        "schema": "s",
        "copy_": "c",
        "dict_": "d",
        "validate": "v",
        "model_config": "mc",
        "model_fields": "mf",
        "letter": "i",
    }
    gadget = PydanticQuerier(edge_cases_connection).insert_gadget(PydanticParams(**fields))
    assert isinstance(gadget, pydantic_models.Gadget)
    assert (gadget.json_, gadget.schema_, gadget.model_config_) == ({"a": 1}, "s", "mc")
    assert gadget.letter is pydantic_models.Letter.I
    dumped = gadget.model_dump(by_alias=True)
    assert {"json", "schema", "copy", "dict", "validate", "model_config"} <= dumped.keys()
