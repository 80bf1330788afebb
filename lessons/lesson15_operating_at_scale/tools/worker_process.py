"""Run a worker in a process of its own until SIGTERM or Ctrl-C, then stop gracefully.

    python -m lessons.lesson15_operating_at_scale.tools.worker_process \\
        --functions lessons.lesson15_operating_at_scale.demo.tasks \\
        --queue reports --queue payments \\
        --slots 10 --poll-interval 5 --heartbeat-interval 1 --inactivity-threshold 10 \\
        [--no-listen] [--code-version VERSION] \\
        [--retention-interval SECONDS] [--history-limit EVENTS]

`--functions` names a module whose `FUNCTIONS` mapping lists the task functions
to register, and whose `DURABLE_FUNCTIONS` mapping, if it has one, the durable
functions. The database comes from DATABASE_URL (or the embedded server), and
`--schema` says which schema holds this lesson's tables, so tests can point
workers at schemas of their own. The process prints "worker <id> ready (code
version <version>)" once it is listening and polling, so a parent process
knows when to rely on it, which row of the `workers` table is its own, and
which version of the code it runs: `--code-version`, or a digest of its
durable functions (see engine/versions.py). `--no-listen` makes it poll only,
as in lesson 07.

`--queue` may be given more than once: the process then runs one worker per
queue, each with `--slots` slots, and prints one "ready" line per worker, in
the order of the queues. (A durable task waiting for its children no longer
holds a slot, so parents and children may share a queue; separate queues still
give each slots of their own.) The workers stop in the order of the queues.

`WorkerProcess`, below, is the parent's side: it starts such a process and can
kill, pause and resume it, which is how demonstrations and tests show what
happens to the tasks of a worker that dies or freezes.
"""

from __future__ import annotations

import importlib
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from types import TracebackType

from lessons.common.cli import Lesson, argument_parser, configure_logging
from lessons.common.database import DatabaseUnavailable, create_pool

from ..engine.durable import DurableFunction
from ..engine.poller import DEFAULT_CLAIM_POLICY, ClaimPolicy
from ..engine.shared import DEFAULT_QUEUE
from ..engine.worker import TaskFunction, Worker

LESSON = Lesson.of(__file__)

# The task functions a worker process registers unless told otherwise.
DEMO_FUNCTIONS = f"{LESSON.package}.demo.tasks"


def load_functions(
    module_name: str,
) -> tuple[Mapping[str, TaskFunction], Mapping[str, DurableFunction]]:
    module = importlib.import_module(module_name)
    functions = getattr(module, "FUNCTIONS", None)
    if not isinstance(functions, Mapping):
        raise SystemExit(f"error: module {module_name} has no FUNCTIONS mapping")
    durable_functions = getattr(module, "DURABLE_FUNCTIONS", {})
    if not isinstance(durable_functions, Mapping):
        raise SystemExit(f"error: DURABLE_FUNCTIONS of module {module_name} is not a mapping")
    return functions, durable_functions


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__ or "")
    parser.add_argument("--schema", default=LESSON.schema)
    parser.add_argument(
        "--queue",
        action="append",
        dest="queues",
        metavar="QUEUE",
        help=f"a queue to serve (default {DEFAULT_QUEUE}); repeat it for several",
    )
    parser.add_argument("--functions", default=DEMO_FUNCTIONS, metavar="MODULE")
    parser.add_argument("--poll-interval", type=float, default=5.0, metavar="SECONDS")
    parser.add_argument("--slots", type=int, default=10, help="tasks run at once")
    parser.add_argument(
        "--claim-share",
        type=float,
        default=DEFAULT_CLAIM_POLICY.share_free,
        metavar="FRACTION",
        help="after a full claim, wait until this share of the slots is free",
    )
    parser.add_argument(
        "--claim-linger",
        type=float,
        default=DEFAULT_CLAIM_POLICY.linger,
        metavar="SECONDS",
        help="... or this long, whichever comes first (0: claim at once)",
    )
    parser.add_argument("--heartbeat-interval", type=float, default=1.0, metavar="SECONDS")
    parser.add_argument("--inactivity-threshold", type=float, default=10.0, metavar="SECONDS")
    parser.add_argument(
        "--no-listen", dest="listen", action="store_false", help="poll only, as in lesson 07"
    )
    parser.add_argument(
        "--retention-interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how often to remove what the retention policy lets go (0: never)",
    )
    parser.add_argument(
        "--history-limit",
        type=int,
        default=1000,
        metavar="EVENTS",
        help="how many events make a history long (ctx.history_is_long)",
    )
    parser.add_argument(
        "--code-version",
        metavar="VERSION",
        help="the version of the code this worker runs "
        "(default: a digest of its durable functions' source)",
    )
    options = parser.parse_args(argv)
    configure_logging(options.verbose)
    queues: list[str] = options.queues or [DEFAULT_QUEUE]

    functions, durable_functions = load_functions(options.functions)
    # Block the stop signals before any thread exists: threads started later
    # inherit the mask, so a signal stays pending until the main thread takes it
    # with sigwait(). (A Python signal handler is not enough: when the kernel
    # hands the signal to another thread, a main thread waiting on a lock never
    # wakes up to run the handler.)
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)

    try:
        # For each worker: one connection each for the sweeper, the result
        # writer, the scheduler and retention, and one per slot for durable
        # functions, which read and write their history. (Each worker's
        # heartbeat, listener and poller have a connection each of their own,
        # outside the pool.) Each connection plans each statement once: on the
        # partitioned tables, PostgreSQL would plan most of them at every call
        # (README, "Partitions and the plan cache").
        pool = create_pool(
            options.schema, max_size=len(queues) * (4 + options.slots), generic_plans=True
        )
    except DatabaseUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    workers = [
        Worker(
            pool,
            functions,
            queue=queue,
            poll_interval=options.poll_interval,
            slots=options.slots,
            claim_policy=ClaimPolicy(share_free=options.claim_share, linger=options.claim_linger),
            heartbeat_interval=options.heartbeat_interval,
            inactivity_threshold=options.inactivity_threshold,
            durable_functions=durable_functions,
            listen=options.listen,
            code_version=options.code_version,
            retention_interval=options.retention_interval or None,
            history_limit=options.history_limit,
        )
        for queue in queues
    ]
    with pool:
        for worker in workers:
            worker.start()
            print(f"worker {worker.id} ready (code version {worker.code_version})", flush=True)
        signal.sigwait(stop_signals)
        for worker in workers:
            worker.stop()
    return 0


# What the child prints once a worker is registered and running.
READY_LINE = re.compile(r"worker (?P<id>\d+) ready \(code version (?P<code_version>\S+)\)")


class WorkerProcess:
    """A worker in a child process that a parent can start, kill, pause and resume.

        with WorkerProcess(schema="lesson_11", queues=["orders", "default"],
                           heartbeat_interval=0.1, inactivity_threshold=1.0) as worker:
            worker.start()   # returns once the child has registered: worker.ids
            worker.kill()    # SIGKILL: dies at once, mid-task, heartbeat and all

    What the child logs goes to a temporary file, read with `log()`.
    `environment` adds variables to the child's environment (this process's own
    are passed on), such as COURSE_CRASH_AT (see `engine/crash_points.py`).
    """

    def __init__(
        self,
        *,
        schema: str,
        queues: Sequence[str] = (DEFAULT_QUEUE,),
        functions: str = DEMO_FUNCTIONS,
        slots: int = 1,
        claim_policy: ClaimPolicy = DEFAULT_CLAIM_POLICY,
        poll_interval: float = 0.1,
        heartbeat_interval: float = 1.0,
        inactivity_threshold: float = 10.0,
        listen: bool = True,
        verbose: bool = False,
        environment: Mapping[str, str] | None = None,
        code_version: str | None = None,
        retention_interval: float = 60.0,
        history_limit: int = 1000,
    ) -> None:
        self.arguments = [
            f"--schema={schema}",
            *(f"--queue={queue}" for queue in queues),
            f"--functions={functions}",
            f"--slots={slots}",
            f"--claim-share={claim_policy.share_free}",
            f"--claim-linger={claim_policy.linger}",
            f"--poll-interval={poll_interval}",
            f"--heartbeat-interval={heartbeat_interval}",
            f"--inactivity-threshold={inactivity_threshold}",
            *([] if listen else ["--no-listen"]),
            *(["--verbose"] if verbose else []),
            *([f"--code-version={code_version}"] if code_version else []),
            f"--retention-interval={retention_interval}",
            f"--history-limit={history_limit}",
        ]
        # Closed by __exit__: the file outlives start() so that log() can read it.
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        self.queues = list(queues)
        self.environment = {**os.environ, **(environment or {})}
        self._process: subprocess.Popen[bytes] | None = None
        self._ids: list[int] = []
        # The version of the code the child runs, as its workers registered it.
        self.code_version: str | None = None

    @property
    def ids(self) -> list[int]:
        """The child's rows in the `workers` table, one per queue, in the order of the queues."""
        if not self._ids:
            raise RuntimeError("the worker process has not started")
        return self._ids

    @property
    def id(self) -> int:
        """The row of the child's first worker (the one of the first queue)."""
        return self.ids[0]

    @property
    def pid(self) -> int:
        return self._started().pid

    def start(self, timeout: float = 30.0) -> int:
        """Start the child and wait until each of its workers is ready; return the first's id."""
        process = subprocess.Popen(
            [sys.executable, "-m", f"{LESSON.package}.tools.worker_process", *self.arguments],
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=self.environment,
            # Unbuffered bytes: readline() then takes one line and leaves the next
            # in the pipe, where select() can see it. A buffered reader could swallow
            # two "ready" lines at once and select() would wait for nothing.
            bufsize=0,
        )
        self._process = process
        assert process.stdout is not None
        for _ in self.queues:
            readable, _, _ = select.select([process.stdout], [], [], timeout)
            line = process.stdout.readline().decode() if readable else ""
            ready = READY_LINE.fullmatch(line.strip())
            if ready is None:
                process.kill()
                process.wait()
                raise RuntimeError(f"the worker process did not start: {line!r}\n{self.log()}")
            self._ids.append(int(ready["id"]))
            self.code_version = ready["code_version"]
        return self.id

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the child to exit on its own; return its exit code (-9: SIGKILL)."""
        return self._started().wait(timeout)

    def kill(self) -> None:
        """SIGKILL: the process dies at once, with no chance to clean up."""
        process = self._started()
        process.send_signal(signal.SIGKILL)
        process.wait()

    def pause(self) -> None:
        """SIGSTOP: the process freezes, heartbeat included, until `resume()`."""
        self._started().send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._started().send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM: a graceful stop. Returns the exit code (0 when all went well)."""
        process = self._started()
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a paused process cannot stop
            process.send_signal(signal.SIGTERM)
        return process.wait(timeout)

    def log(self) -> str:
        """What the child has written to its stderr so far."""
        self._log.flush()
        self._log.seek(0)
        return self._log.read()

    def _started(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError("the worker process has not started")
        return self._process

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        if self._process is not None and self._process.stdout is not None:
            self._process.stdout.close()
        self._log.close()


if __name__ == "__main__":
    sys.exit(main())
