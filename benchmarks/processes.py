"""Child processes the benchmarks start: consumers of the peers' queues, and the producer.

A child built for the benchmarks says `ready` on its stdout once it is connected and
set up, then waits for `go` on its stdin before it takes any work, so that every
consumer starts on a queue that is already full, at the same moment.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from types import TracebackType

from lessons.common.database import REPOSITORY_ROOT

READY = "ready"
GO = "go"


class ChildProcess:
    """`python -m module arguments...`, started from the repository root."""

    def __init__(self, module: str, *arguments: str) -> None:
        self.command = [sys.executable, "-m", module, *arguments]
        self._process: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        return self._started().pid

    def start(self) -> None:
        path = os.environ.get("PYTHONPATH", "")
        environment = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPOSITORY_ROOT), path) if p),
        }
        self._process = subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPOSITORY_ROOT,
            env=environment,
        )

    def wait_until_ready(self, timeout: float = 60.0) -> None:
        line = self.read_line(timeout)
        if line.strip() != READY:
            self.kill()
            raise RuntimeError(f"{' '.join(self.command)} did not start: {line!r}")

    def go(self) -> None:
        process = self._started()
        assert process.stdin is not None
        process.stdin.write(GO + "\n")
        process.stdin.flush()

    def read_line(self, timeout: float) -> str:
        """The next line the child prints, or "" if it printed none within `timeout`."""
        process = self._started()
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], timeout)
        return process.stdout.readline() if readable else ""

    def wait(self, timeout: float) -> int:
        return self._started().wait(timeout)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the child to exit."""
        process = self._started()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        process = self._started()
        if process.poll() is None:
            process.kill()
            process.wait()

    def _started(self) -> subprocess.Popen[str]:
        if self._process is None:
            raise RuntimeError(f"{' '.join(self.command)} has not been started")
        return self._process

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._process is None:
            return
        self.kill()
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                stream.close()


def wait_for_go() -> None:
    """In a child: say we are ready, and block until the parent says go."""
    print(READY, flush=True)
    line = sys.stdin.readline()
    if line.strip() != GO:
        raise SystemExit(f"expected {GO!r} from the parent, got {line!r}")


def start_together(starts: Sequence[Callable[[], object]]) -> None:
    """Call every `start` at once, each in a thread; raise the first error, if any.

    A worker process takes about half a second to import and connect: started one
    after the other, the first would be polling long before the last.
    """
    errors: list[BaseException] = []

    def start(call: Callable[[], object]) -> None:
        try:
            call()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=start, args=(call,)) for call in starts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
