"""sqlc-gen-psycopg: a sqlc process plugin that emits typed psycopg 3 code."""

__version__ = "0.1.0"
