"""Lesson 07's worker processes are the lesson's own `WorkerProcess`, which passes
this process's environment on: put the repository on PYTHONPATH so that they can
import `tests.lesson07.functions`."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.recording import close_connections
from tests.worker_processes import REPOSITORY_ROOT


@pytest.fixture(autouse=True)
def children_can_import_the_tests(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    existing = os.environ.get("PYTHONPATH")
    paths = [str(REPOSITORY_ROOT), *([existing] if existing else [])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    yield
    # In-process workers recorded through connections of this process.
    close_connections()
