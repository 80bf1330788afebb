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
        "__init__.py": ModuleWriter(request.sqlc_version).text(),
        "models.py": emit_models(plan, options, request.sqlc_version),
    }
    sources = {q.filename for q in request.queries}
    for module, queries in sorted(plan.modules.items()):
        source = next(s for s in sorted(sources) if _stem(s) == module) if sources else ""
        files[f"{module}.py"] = emit_queries(queries, options, request.sqlc_version, source)
    return files


def _stem(filename: str) -> str:
    return filename.rsplit("/", 1)[-1].removesuffix(".sql")
