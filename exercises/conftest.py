"""The checks use the tests' fixtures: one server per session, a schema per check."""

from tests.conftest import *  # noqa: F403
