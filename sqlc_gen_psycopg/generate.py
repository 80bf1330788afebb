"""The whole generation: request in, files out."""

from sqlc_gen_psycopg.emit_models import emit_models
from sqlc_gen_psycopg.emit_queries import emit_queries
from sqlc_gen_psycopg.options import parse_options
from sqlc_gen_psycopg.plan import build_plan
from sqlc_gen_psycopg.request import Request
from sqlc_gen_psycopg.source import ModuleWriter


def generate(request: Request) -> dict[str, str]:
    """File name (relative to the codegen `out:`) to contents."""
    options = parse_options(request.options)
    plan = build_plan(request, options)
    files = {
        "__init__.py": ModuleWriter(request.sqlc_version, options.line_length).text(),
        "models.py": emit_models(plan, options, request.sqlc_version),
    }
    for module in plan.modules:
        files[f"{module.name}.py"] = emit_queries(module, options, request.sqlc_version)
    return files
