"""Test instrumentation: kill or freeze this process at a named moment of the engine's work.

The tests prove that a durable task survives its worker dying at *any* moment,
including the awkward ones: a child task's transaction about to commit, or the
child finished but its parent not told yet. Killing a process from outside
cannot hit such a moment reliably, so the engine names them, and calls
`crash_point(name)` when it gets there. That does nothing at all, unless the
environment variable COURSE_CRASH_AT names that point: then the process sends
itself SIGKILL, the hardest way to die (no `finally`, no `atexit`, no goodbye
to the database), the first time it gets there. When COURSE_FREEZE_AT names the
point, the process sends itself SIGSTOP instead, each time it gets there: it
freezes, connections and locks held, as a stalled machine would, until the
test sends SIGCONT or kills it.

The points:

| Point | Where |
|---|---|
| `call:before_commit` | `call`'s child and its event written, the parent suspended; not committed |
| `call:suspended` | all three committed: the parent is suspended, its child queued |
| `spawn_child:before_commit` | the child task and its event are written, not yet committed |
| `spawn_child:after_commit` | both are committed |
| `wait_for_child:before_commit` | the parent marked suspended, its child looked at; not committed |
| `wait_for_child:suspended` | the child had not finished: the parent is suspended |
| `wait_for_child:finished` | the child has finished, the parent has not used its result |
| `sleep:before_commit` | the sleep event written, the task suspended; not committed |
| `sleep:suspended` | the sleep is recorded and the task suspended, not yet unwound |
| `wait_for_event:before_commit` | the wait written and opened, the task suspended; not committed |
| `wait_for_event:suspended` | the wait is recorded and the task suspended, not yet unwound |
| `wait_for_event:suspended_again` | a replay found its wait open, suspended again; not committed |
| `wait_for_event:received` | an event ended the wait, the function has not used its payload |
| `finish_attempts:before_commit` | a batch of results written, parents woken; not committed |
| `sweep:before_commit` | a sweep's batch ended, parents woken; not committed |
| `cancellation:before_commit` | the cancellation event written, open waits ended; not committed |
| `schedule_tick:before_commit` | due ticks enqueued, recorded, schedules moved on; not committed |
| `retention:before_commit` | a batch of trees archived and removed; not committed |
| `continue_as_new:before_commit` | the successor created, this task completed; not committed |
| `task_returned:<task name>` | a function returned, its result is not yet recorded |
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger(__name__)

CRASH_AT = "COURSE_CRASH_AT"
FREEZE_AT = "COURSE_FREEZE_AT"


def crash_point(name: str) -> None:
    """SIGKILL this process if COURSE_CRASH_AT is `name`, SIGSTOP it if
    COURSE_FREEZE_AT is; otherwise do nothing."""
    if os.environ.get(CRASH_AT) == name:
        log.warning("crash point %s: SIGKILL", name)
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(FREEZE_AT) == name:
        log.warning("crash point %s: SIGSTOP", name)
        # To this thread, not to the process: a signal sent to the process may
        # be taken by another thread, and this one could run on for a moment
        # (long enough to commit) before the whole process stops.
        signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)
