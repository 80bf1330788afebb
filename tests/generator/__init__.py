"""Tests of sqlc-gen-psycopg, the repository's sqlc plugin."""
