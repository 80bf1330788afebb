"""`python -m viewer`: serve the viewer on 127.0.0.1 and print its address.

    python -m viewer                    # the last lesson, in its own schema
    python -m viewer --lesson 11        # lesson 11
    python -m viewer --allow-operations # with replay, fork and cancel buttons

The database is found like everywhere in the course (DATABASE_URL, else the
embedded server). It listens on 127.0.0.1 only: there is no option to listen
on another address, since its pages show every task's input and output.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from types import FrameType

import uvicorn

from lessons.common.cli import EXIT_NO_DATABASE, EXIT_USAGE
from lessons.common.database import DatabaseUnavailable, connect, database_url

from .app import DEFAULT_POLL_SECONDS, ViewerSettings, create_app
from .lessons import view_lesson

HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def main(argv: Sequence[str] | None = None) -> int:
    options = parser().parse_args(argv)
    try:
        lesson = view_lesson(options.lesson, options.schema)
        url = database_url()
        connect(url).close()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except DatabaseUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_NO_DATABASE
    settings = ViewerSettings(
        lesson=lesson,
        url=url,
        poll_interval=options.poll_interval,
        allow_operations=options.allow_operations,
    )
    operations = "replay, fork and cancel allowed" if options.allow_operations else "read-only"
    print(
        f"Viewer of lesson {lesson.number:02d} (schema {lesson.schema}, {operations}): "
        f"http://{HOST}:{options.port}/",
        flush=True,
    )
    logging.basicConfig(level=logging.WARNING)
    # The pool warns at each failed attempt to connect; the pages say they are offline.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    app = create_app(settings)
    config = uvicorn.Config(app, host=HOST, port=options.port, log_level="warning")
    ViewerServer(config, on_exit=app.state.viewer.stop_streams).run()
    return 0


class ViewerServer(uvicorn.Server):
    """uvicorn's server, which ends the live streams when it is asked to stop (Ctrl-C):
    it waits for every response to end first, and a live page's never does by itself."""

    def __init__(self, config: uvicorn.Config, *, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.on_exit()
        super().handle_exit(sig, frame)


def parser() -> argparse.ArgumentParser:
    tool = argparse.ArgumentParser(
        prog="python -m viewer",
        description="Watch a lesson's queues, workers and durable tasks in a browser.",
    )
    tool.add_argument("--lesson", type=int, help="the lesson to show (default: the last)")
    tool.add_argument("--schema", help="the schema that holds its tables (default: the lesson's)")
    tool.add_argument("--port", type=int, default=DEFAULT_PORT, help="default: %(default)s")
    tool.add_argument(
        "--poll-interval",
        type=float,
        default=DEFAULT_POLL_SECONDS,
        metavar="SECONDS",
        help="how often a live page looks again without a notification (default: %(default)s)",
    )
    tool.add_argument(
        "--allow-operations",
        action="store_true",
        help="offer replay, fork and cancel on the task pages (off by default)",
    )
    return tool


if __name__ == "__main__":
    sys.exit(main())
