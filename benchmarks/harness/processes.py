"""Child processes: one way to start a group of them at once and stop them after.

Two kinds of child run here. The lessons' own `WorkerProcess`es, unchanged, each of
which says it is ready once its workers have registered; and the children built for
the benchmarks (`ChildProcess`: the peers' consumers, the producer), each of which
says `ready` on its stdout once it is connected and set up, then waits for `go` on its
stdin before it takes any work, so that every consumer starts on a queue that is
already full, at the same moment. Both start and stop the same way:
`started_together`.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from types import TracebackType
from typing import Protocol, TypeVar

from lessons.common.database import REPOSITORY_ROOT

READY = "ready"
GO = "go"


class StartableProcess(Protocol):
    """What `started_together` needs: a lesson's `WorkerProcess` or a `ChildProcess`."""

    def start(self) -> object:
        """Start the child; return once it is ready for work."""
        ...

    def stop(self) -> object:
        """A graceful stop: SIGTERM, then wait for the child to exit."""
        ...

    def __enter__(self) -> object: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Kill the child if it still runs, and release what it held."""
        ...


Process = TypeVar("Process", bound=StartableProcess)


@contextmanager
def started_together(processes: Sequence[Process]) -> Iterator[list[Process]]:
    """Start every process at once, yield them once each is ready, stop each one after.

    A worker process takes about half a second to import and connect: started one
    after the other, the first would be polling long before the last. Should a start
    fail, or the block raise, each process's own exit kills whatever still runs.
    """
    with ExitStack() as stack:
        for process in processes:
            stack.enter_context(process)
        _call_at_once([process.start for process in processes])
        try:
            yield list(processes)
        finally:
            for process in processes:
                process.stop()


def put_repository_on_pythonpath() -> None:
    """Let every child started from now on import `benchmarks`, from any directory.

    `benchmarks` is not an installed package (pyproject.toml installs `lessons`), yet
    children load its modules by name: the no-op task, a peer's consumer, a producer.
    Children inherit this process's environment, and the lessons' `WorkerProcess`
    copies it when it is created: so the entry points call this first.
    """
    path = os.environ.get("PYTHONPATH", "")
    if str(REPOSITORY_ROOT) not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPOSITORY_ROOT), path) if p)


class ChildProcess:
    """`python -m module arguments...`, which says `ready`, then waits for `go`."""

    def __init__(self, module: str, *arguments: str) -> None:
        self.command = [sys.executable, "-m", module, *arguments]
        self._process: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        return self._started().pid

    def start(self, timeout: float = 60.0) -> None:
        """Start the child and wait until it says it is ready."""
        self._process = subprocess.Popen(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
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


def _call_at_once(calls: Sequence[Callable[[], object]]) -> None:
    """Make every call at once, each in a thread; raise the first error, if any."""
    errors: list[BaseException] = []

    def call(function: Callable[[], object]) -> None:
        try:
            function()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=call, args=(function,)) for function in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
