"""Worker processes for the tests of lessons 02 and 03, started from a lesson's CLI.

    with LessonWorkerProcess("lesson02_simple_task_queue", schema=..., functions=...) as worker:
        worker.launch()
        worker.wait_ready()
        ...
        assert worker.terminate() == 0      # SIGTERM: a graceful stop

Leaving the `with` block kills the process if it still runs, so a failing test
never leaves a worker behind. (Lesson 04 ships its own `WorkerProcess`.)
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


def python_path_with_repository(python_path: str) -> str:
    """`python_path` (a PYTHONPATH value) with the repository root first, once, so that
    a child process can import the tests' task-function modules (`tests.lesson07.functions`)."""
    others = [
        entry for entry in python_path.split(os.pathsep) if entry not in ("", str(REPOSITORY_ROOT))
    ]
    return os.pathsep.join([str(REPOSITORY_ROOT), *others])


def environment_for_children(**extra: str) -> dict[str, str]:
    """This process's environment (DATABASE_URL included), with the repository on
    PYTHONPATH so that a child can import the tests' task-function modules."""
    env = dict(os.environ)
    env["PYTHONPATH"] = python_path_with_repository(env.get("PYTHONPATH", ""))
    env.update(extra)
    return env


class LessonWorkerProcess:
    """`python -m lessons.<lesson>.tools.worker_process` in a child process."""

    def __init__(
        self,
        lesson: str,
        *,
        schema: str,
        functions: str,
        arguments: list[str] | None = None,
        environment: dict[str, str] | None = None,
        verbose: bool = False,
    ) -> None:
        self.command = [
            sys.executable,
            "-m",
            f"lessons.{lesson}.tools.worker_process",
            f"--schema={schema}",
            f"--functions={functions}",
            *(arguments or []),
            *(["--verbose"] if verbose else []),
        ]
        self.environment = environment_for_children(**(environment or {}))
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115  closed in __exit__
        self._process: subprocess.Popen[str] | None = None

    @property
    def process(self) -> subprocess.Popen[str]:
        if self._process is None:
            raise RuntimeError("the worker process has not been launched")
        return self._process

    @property
    def pid(self) -> int:
        return self.process.pid

    def launch(self) -> None:
        """Start the child; `wait_ready()` waits for it (launch several, then wait)."""
        self._process = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=self.environment,
            cwd=REPOSITORY_ROOT,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait for the line the child prints once it polls ("worker ready")."""
        stdout = self.process.stdout
        assert stdout is not None
        readable, _, _ = select.select([stdout], [], [], timeout)
        line = stdout.readline() if readable else ""
        if not line.rstrip().endswith("ready"):
            raise RuntimeError(f"the worker process did not start: {line!r}\n{self.log()}")

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the process to exit; return its exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def wait_for_exit(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout)

    def has_taken_signal(self, signum: int) -> bool:
        return has_taken_signal(self.pid, signum)

    def log(self) -> str:
        """What the child wrote to stderr so far."""
        self._log.flush()
        self._log.seek(0)
        return self._log.read()

    def __enter__(self) -> LessonWorkerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
                self._process.wait()
            if self._process.stdout is not None:
                self._process.stdout.close()
        self._log.close()


def has_taken_signal(pid: int, signum: int) -> bool:
    """Whether a signal sent to process `pid` is no longer pending, i.e. the process
    has taken it. (The worker processes block their stop signals and take them
    with sigwait(): until then the signal shows in /proc as pending.)"""
    pending = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("ShdPnd:", "SigPnd:")):
            pending |= int(line.split()[1], 16)
    return not pending & (1 << (signum - 1))


def wait_ready(workers: list[LessonWorkerProcess], timeout: float = 30.0) -> None:
    """Wait until every launched worker is ready (they start in parallel)."""
    deadline = time.monotonic() + timeout
    for worker in workers:
        worker.wait_ready(max(deadline - time.monotonic(), 0.1))
