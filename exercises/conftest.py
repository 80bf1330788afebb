"""The checks use the tests' fixtures: one PostgreSQL server per session (DATABASE_URL,
else embedded), a fresh schema per check, and the repository on the PYTHONPATH of the
processes a check starts."""

from tests.conftest import *  # noqa: F403
