"""Lesson 11's worker processes are the lesson's own `WorkerProcess`, which passes
this process's environment on, and its tool runs as a subprocess: put the
repository on PYTHONPATH so that both can import what they need."""

from __future__ import annotations

import os

import pytest

from tests.worker_processes import REPOSITORY_ROOT


@pytest.fixture(autouse=True)
def children_can_import_the_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    existing = os.environ.get("PYTHONPATH")
    paths = [str(REPOSITORY_ROOT), *([existing] if existing else [])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
