"""Push an external event from the command line, as a person or a webhook would.

    python -m lessons.lesson16_durable_ai_agent.tools.push_event KEY JSON \\
        [--idempotency-key NAME] [--schema SCHEMA]

    python -m lessons.lesson16_durable_ai_agent.tools.push_event \\
        approval:A-1 '{"approved": true}'

The event ends the waits for KEY that are open now (see `engine/client.py`),
and the command says which tasks it woke, by id. A webhook that retries gives each
delivery a name of its own, `--idempotency-key`: a push that repeats it is the
same event again, and wakes nobody. The database comes from DATABASE_URL
(or the embedded server); `--schema` says which schema holds the lesson's
tables (`lesson_11`, or `lesson_11_<learner>` with COURSE_LEARNER set, unless
told otherwise).
"""

from __future__ import annotations

import json
import sys

import psycopg

from lessons.common.cli import Lesson, argument_parser, configure_logging
from lessons.common.database import DatabaseUnavailable, connect

from ..engine.client import push_event

LESSON = Lesson.of(__file__)


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__ or "")
    parser.add_argument("key", help='what the event is about, e.g. "approval:A-1"')
    parser.add_argument("payload", metavar="JSON", help="what it says, as JSON")
    parser.add_argument(
        "--idempotency-key",
        metavar="NAME",
        help="this push's own name: pushed again with it, the event is not pushed twice",
    )
    parser.add_argument("--schema", default=LESSON.schema)
    options = parser.parse_args(argv)
    configure_logging(options.verbose)
    try:
        payload = json.loads(options.payload)
    except json.JSONDecodeError as error:
        print(f"error: the payload is not JSON: {error}", file=sys.stderr)
        return 2
    try:
        with connect(schema=options.schema) as conn:
            event = push_event(conn, options.key, payload, idempotency_key=options.idempotency_key)
    except (DatabaseUnavailable, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except psycopg.errors.UndefinedTable:
        print(
            f"error: schema {options.schema} has no lesson {LESSON.number} tables; "
            "run the lesson's main.py first, or give --schema",
            file=sys.stderr,
        )
        return 2
    if event.repeated:
        print(
            f"event {event.id} was pushed before with idempotency key "
            f"{options.idempotency_key}: {options.key}; {woken(event.woke_task_ids)}"
        )
    else:
        print(f"event {event.id} pushed: {options.key}; {woken(event.woke_task_ids)}")
    return 0


def woken(task_ids: list[int]) -> str:
    """Which tasks the push woke, by id: `it woke task 3`, `it woke tasks 3, 5`."""
    if not task_ids:
        return "it woke no task"
    noun = "task" if len(task_ids) == 1 else "tasks"
    return f"it woke {noun} " + ", ".join(str(task_id) for task_id in task_ids)


if __name__ == "__main__":
    sys.exit(main())
