"""How SQL names become Python names, and when parameters are bundled."""

import pytest

from sqlc_gen_psycopg import naming
from sqlc_gen_psycopg.options import Options


@pytest.mark.parametrize(
    ("table", "model"),
    [
        ("tasks", "Task"),
        ("task_events", "TaskEvent"),
        ("workers", "Worker"),
        ("charges", "Charge"),
        ("emails", "Email"),
        ("statuses", "Status"),
        ("addresses", "Address"),
        ("categories", "Category"),
        ("people", "Person"),
        ("children", "Child"),
        ("boxes", "Box"),
        ("news", "News"),
        ("series", "Series"),
        ("data", "Datum"),
    ],
)
def test_models_are_the_singular_camel_case_of_the_table(table: str, model: str) -> None:
    assert naming.camel_case(naming.singular(table)) == model


def test_inflection_exclusions_keep_the_table_name() -> None:
    assert naming.singular("data", ["data"]) == "data"


@pytest.mark.parametrize(
    ("query", "method"),
    [
        ("ClaimTasks", "claim_tasks"),
        ("GetTask", "get_task"),
        ("GetHTTPStatus", "get_http_status"),
        ("Heartbeat", "heartbeat"),
        ("ListV2Items", "list_v2_items"),
    ],
)
def test_methods_are_the_snake_case_of_the_query(query: str, method: str) -> None:
    assert naming.snake_case(query) == method


@pytest.mark.parametrize(
    ("name", "escaped"),
    [
        ("from", "from_"),
        ("class", "class_"),
        ("input", "input_"),
        ("type", "type_"),
        ("list", "list_"),
        ("id", "id"),
        ("self", "self_"),
        ("cur", "cur_"),
        ("models", "models_"),
        ("_array", "_array_"),
        ("task_id", "task_id"),
        ("match", "match"),
    ],
)
def test_parameters_escape_keywords_builtins_and_generated_names(name: str, escaped: str) -> None:
    assert naming.parameter_name(name) == escaped


def test_fields_escape_only_keywords() -> None:
    assert [naming.field_name(n) for n in ("from", "input", "type", "id")] == [
        "from_",
        "input",
        "type",
        "id",
    ]


@pytest.mark.parametrize(
    ("label", "member"),
    [
        ("queued", "QUEUED"),
        ("in-progress", "IN_PROGRESS"),
        ("very happy", "VERY_HAPPY"),
        ("a,b", "AB"),
        ("2fa", "VALUE_2FA"),
        ("", "VALUE"),
    ],
)
def test_enum_members_are_upper_snake_case(label: str, member: str) -> None:
    assert naming.enum_member(label) == member


def test_repeated_names_get_numbered() -> None:
    assert naming.unique(["id", "id", "name", "id"]) == ["id", "id_2", "name", "id_3"]


@pytest.mark.parametrize(
    ("limit", "bundled"),
    [
        (None, [False, False, False, False, False, True]),
        (-1, [False, False, False, False, False, False]),
        (0, [False, True, True, True, True, True]),
        (2, [False, False, False, True, True, True]),
    ],
)
def test_parameters_are_bundled_past_the_limit(limit: int | None, bundled: list[bool]) -> None:
    options = Options() if limit is None else Options(query_parameter_limit=limit)
    assert [options.bundles_params(count) for count in range(6)] == bundled


@pytest.mark.parametrize(
    ("name", "escaped"),
    [("uuid", "uuid_"), ("datetime", "datetime_"), ("models", "models_"), ("list", "list_")],
)
def test_fields_and_methods_escape_names_the_annotations_use(name: str, escaped: str) -> None:
    assert naming.field_name(name) == escaped
    assert naming.method_name(name.capitalize()) == escaped


def test_fields_escape_the_names_override_types_import() -> None:
    assert naming.field_name("fractions", frozenset({"fractions"})) == "fractions_"


@pytest.mark.parametrize(
    ("name", "escaped"),
    [("json", "json_"), ("model_config", "model_config_"), ("model_x", "model_x_"), ("id", "id")],
)
def test_pydantic_fields_escape_base_model_attributes(name: str, escaped: str) -> None:
    assert naming.pydantic_field_name(name) == escaped
