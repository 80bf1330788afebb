"""Test instrumentation: kill this process at a named moment of the engine's work.

The tests prove that a durable task survives its worker dying at *any* moment,
including the awkward ones: a child task's transaction about to commit, or the
child finished but its parent not told yet. Killing a process from outside
cannot hit such a moment reliably, so the engine names them, and calls
`crash_point(name)` when it gets there. That does nothing at all, unless the
environment variable COURSE_CRASH_AT names that point: then the process sends
itself SIGKILL, the hardest way to die (no `finally`, no `atexit`, no goodbye
to the database), the first time it gets there.

The points:

| Point | Where |
|---|---|
| `spawn_child:before_commit` | the child task and its event are written, not yet committed |
| `spawn_child:after_commit` | both are committed |
| `wait_for_child:suspended` | the child had not finished: the parent is suspended |
| `wait_for_child:finished` | the child has finished, the parent has not used its result |
| `sleep:suspended` | the sleep is recorded and the task suspended, not yet unwound |
| `wait_for_event:suspended` | the wait is recorded and the task suspended, not yet unwound |
| `wait_for_event:received` | an event ended the wait, the function has not used its payload |
| `task_returned:<task name>` | a function returned, its result is not yet recorded |
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

CRASH_AT = "COURSE_CRASH_AT"


def crash_point(name: str) -> None:
    """SIGKILL this process if COURSE_CRASH_AT is `name`; otherwise do nothing."""
    if os.environ.get(CRASH_AT) == name:
        log.warning("crash point %s: SIGKILL", name)
        os.kill(os.getpid(), signal.SIGKILL)
