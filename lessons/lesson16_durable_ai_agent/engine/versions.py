"""The version of the code a worker runs: what a durable task is pinned to.

A durable task's history was written by the code that ran it. Replayed by
other code, it may not match (lesson 06), and a deploy replaces the code of
every task in flight at once. Pinning is the other way round: each worker
says which version it runs, a durable task records the version it started on
(its first claim), and only workers of that version claim it again. Old
workers finish old tasks, new workers take new ones, and an old version's
workers can stop once its tasks are done (`history_tool versions`). An
operator who knows that the new code replays the old histories (a patch
marker, and `history_tool check` to prove it) moves them (`client.move_to_version`).

The version is declared (`Worker(code_version="2026-12-01")`, from a build
number or a commit), or derived from the durable functions themselves: a
digest of their names and source text. A derived version changes with every
edit of a durable function, a comment included, and misses a change in code
they call: declare the version when that matters.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any


def derived_code_version(durable_functions: Mapping[str, Callable[..., Any]]) -> str:
    """Twelve hex digits of SHA-256 over each durable function's name and source."""
    digest = hashlib.sha256()
    for name in sorted(durable_functions):
        for part in (name, source_of(durable_functions[name])):
            digest.update(part.encode())
            digest.update(b"\0")
    return digest.hexdigest()[:12]


def source_of(function: Callable[..., Any]) -> str:
    """The function's source text, or its qualified name when Python has no source."""
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):  # built in, or defined where no file is
        return f"{function.__module__}.{function.__qualname__}"


def check_code_version(code_version: str) -> None:
    """Refuse a declared version that is not one word of printable characters.

    It names the code in logs, in `history_tool versions` and on command lines
    (`move-version --from v1 --to v2`): a space, or nothing at all, would make
    it hard to tell apart or to type.
    """
    if not code_version or not code_version.isprintable() or any(c.isspace() for c in code_version):
        raise ValueError(
            f"a code version is one word (a build number, a commit), not {code_version!r}"
        )
