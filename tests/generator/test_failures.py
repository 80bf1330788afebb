"""Generation fails with a message naming the option or query at fault.

Requests are built by hand in the shape sqlc sends (protojson of
GenerateRequest) and fed to the plugin's entry point; one test goes through
sqlc itself to show the message reaches the user.
"""

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest

from sqlc_gen_psycopg import cli
from tests.generator.conftest import run_sqlc

TASKS: dict[str, Any] = {
    "rel": {"name": "tasks"},
    "columns": [
        {"name": "id", "not_null": True, "type": {"name": "int8"}, "table": {"name": "tasks"}},
        {"name": "spot", "not_null": False, "type": {"name": "point"}, "table": {"name": "tasks"}},
    ],
}


def query(name: str, cmd: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "cmd": cmd, "text": "SELECT 1", "filename": "queries.sql", **fields}


def generate(options: dict[str, Any], *queries: dict[str, Any]) -> tuple[int, str, str]:
    """Run the plugin's main() on a request; return (exit status, stdout, stderr)."""
    request = {
        "sqlc_version": "v1.31.1",
        "catalog": {"default_schema": "public", "schemas": [{"name": "public", "tables": [TASKS]}]},
        "queries": list(queries),
        "plugin_options": base64.b64encode(json.dumps(options).encode()).decode(),
    }
    return run_main(json.dumps(request).encode())


def decoded_files(out: str) -> dict[str, str]:
    """The files of the plugin's response, by name."""
    return {f["name"]: base64.b64decode(f["contents"]).decode() for f in json.loads(out)["files"]}


def run_main(stdin: bytes, args: list[str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        patch.setattr("sys.stdout", out)
        patch.setattr("sys.stderr", err)
        status = cli.main(["/plugin.CodegenService/Generate"] if args is None else args)
    return status, out.getvalue(), err.getvalue()


def test_a_valid_request_generates_files() -> None:
    status, out, err = generate(
        {"emit_sync_querier": True}, query("GetTask", ":one", columns=[TASKS["columns"][0]])
    )
    assert (status, err) == (0, "")
    names = [file["name"] for file in json.loads(out)["files"]]
    assert names == ["__init__.py", "models.py", "queries.py"]


def test_sqlc_gen_pythons_out_option_is_accepted() -> None:
    status, _, err = generate({"out": "src/db", "emit_sync_querier": True})
    assert (status, err) == (0, "")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"emit_sync_queryer": True}, "unknown option `emit_sync_queryer`"),
        (
            {"emit_sync_querier": "yes"},
            "option `emit_sync_querier` must be true or false, got 'yes'",
        ),
        ({"query_parameter_limit": "4"}, "option `query_parameter_limit` must be an integer"),
        ({"package": "my-app.db"}, "option `package` must be a dotted Python package name"),
        ({"line_length": 60}, "option `line_length` must be between 79 and 320, got 60"),
        ({"line_length": "88"}, "option `line_length` must be an integer"),
        ({"out": 1}, "option `out` must be a string"),
        (
            {"inflection_exclude_table_names": "data"},
            "option `inflection_exclude_table_names` must",
        ),
        ({"overrides": {"db_type": "uuid"}}, "option `overrides` must be a list of mappings"),
        ({"overrides": [{"db_type": "uuid"}]}, "option `overrides[0]` needs `py_type`"),
        (
            {"overrides": [{"db_type": "uuid", "column": "t.c", "py_type": "str"}]},
            "option `overrides[0]` needs exactly one of `db_type` or `column`",
        ),
        (
            {"overrides": [{"column": "c", "py_type": "str"}]},
            "option `overrides[0].column` must be `table.column` or `schema.table.column`",
        ),
        (
            {"overrides": [{"db_type": "uuid", "py_type": "str", "go_type": "string"}]},
            "unknown key `go_type` in option `overrides[0]`",
        ),
    ],
)
def test_bad_options_fail_naming_the_option(options: dict[str, Any], message: str) -> None:
    status, out, err = generate(options)
    assert status == 1
    assert out == ""
    assert message in err


@pytest.mark.parametrize(
    ("bad_query", "message"),
    [
        (
            query("LastId", ":execlastid"),
            "query LastId (queries.sql): :execlastid is not supported",
        ),
        (query("Odd", ":exactlyone"), "query Odd (queries.sql): unknown command :exactlyone"),
        (query("NoRows", ":one"), "query NoRows (queries.sql): :one needs a query that returns"),
        (
            query("Copy", ":copyfrom", params=[{"number": 1, "column": TASKS["columns"][0]}]),
            "query Copy (queries.sql): :copyfrom needs `INSERT INTO table (columns)",
        ),
        (query("Batch", ":batchexec"), "query Batch (queries.sql): :batchexec needs at least one"),
        (
            query("Models", ":exec", filename="models.sql"),
            "queries file models.sql would overwrite models.py; rename it",
        ),
    ],
)
def test_unsupported_queries_fail_naming_the_query(bad_query: dict[str, Any], message: str) -> None:
    status, _, err = generate({}, bad_query)
    assert status == 1
    assert message in err


def test_two_queries_files_with_one_module_name_fail() -> None:
    status, _, err = generate(
        {},
        query("A", ":exec", filename="tasks.sql"),
        query("B", ":exec", filename="tasks!.sql"),
    )
    assert status == 1
    assert "queries files tasks!.sql and tasks.sql would both be tasks.py" in err


def test_two_queries_with_one_method_name_fail() -> None:
    status, _, err = generate(
        {"emit_sync_querier": True},
        query("GetHTTPStatus", ":exec"),
        query("GetHttpStatus", ":exec"),
    )
    assert status == 1
    assert (
        "queries GetHTTPStatus and GetHttpStatus (queries.sql) would both be named "
        "get_http_status; rename one of them"
    ) in err


def test_a_slice_outside_any_fails_with_a_hint() -> None:
    ids = {"name": "ids", "not_null": True, "is_sqlc_slice": True, "type": {"name": "int8"}}
    in_list = query(
        "TasksIn",
        ":many",
        text="SELECT id FROM tasks WHERE id IN ($1)",
        columns=[TASKS["columns"][0]],
        params=[{"number": 1, "column": ids}],
    )
    status, _, err = generate({}, in_list)
    assert status == 1
    assert (
        "query TasksIn (queries.sql): sqlc.slice(ids) works in PostgreSQL only as "
        "`= ANY(sqlc.slice(ids))`"
    ) in err


def test_strict_types_rejects_an_unknown_type() -> None:
    ltree = {"name": "path", "not_null": True, "type": {"name": "ltree"}}
    status, _, err = generate({"strict_types": True}, query("Paths", ":many", columns=[ltree]))
    assert status == 1
    assert "query Paths (queries.sql), column path: unknown PostgreSQL type `ltree`" in err


def test_without_strict_types_an_unknown_type_is_any() -> None:
    ltree = {"name": "path", "not_null": True, "type": {"name": "ltree"}}
    status, out, _ = generate({"emit_sync_querier": True}, query("Paths", ":many", columns=[ltree]))
    assert status == 0
    files = decoded_files(out)
    assert "def paths(self) -> list[Any]:" in files["queries.py"]


def test_a_request_that_is_not_json_fails() -> None:
    status, _, err = run_main(b"\x0a\x05proto")
    assert status == 1
    assert "set `format: json`" in err


def test_undecodable_options_fail() -> None:
    status, _, err = run_main(json.dumps({"plugin_options": "bm90IGpzb24="}).encode())
    assert status == 1
    assert "`options:` could not be decoded" in err


def test_an_unknown_method_fails() -> None:
    status, _, err = run_main(b"{}", ["/plugin.CodegenService/Other"])
    assert status == 2
    assert "unknown method" in err


def test_sqlc_shows_the_plugins_message(tmp_path: Path) -> None:
    (tmp_path / "schema.sql").write_text("CREATE TABLE t (id bigint PRIMARY KEY);\n")
    (tmp_path / "queries.sql").write_text("-- name: DeleteT :execlastid\nDELETE FROM t;\n")
    (tmp_path / "sqlc.yaml").write_text(
        'version: "2"\n'
        "plugins: [{name: py, process: {cmd: sqlc-gen-psycopg, format: json}}]\n"
        "sql: [{engine: postgresql, schema: schema.sql, queries: queries.sql,\n"
        "       codegen: [{plugin: py, out: db, options: {emit_sync_querier: true}}]}]\n"
    )
    result = run_sqlc("generate", cwd=tmp_path)
    assert result.returncode != 0
    assert "query DeleteT (queries.sql): :execlastid is not supported" in result.stderr
    assert not (tmp_path / "db").exists()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, "def count_tasks(self) -> int | None:"),
        ({"emit_single_column_row_class": True}, "def count_tasks(self) -> CountTasksRow | None:"),
    ],
)
def test_one_column_is_a_value_unless_the_row_class_is_asked_for(
    options: dict[str, Any], expected: str
) -> None:
    total = {"name": "total", "not_null": True, "type": {"name": "int8"}}
    status, out, err = generate(
        {"emit_sync_querier": True, **options}, query("CountTasks", ":one", columns=[total])
    )
    assert (status, err) == (0, "")
    assert expected in decoded_files(out)["queries.py"]
