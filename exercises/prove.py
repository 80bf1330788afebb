"""CI's proof that every exercise's check means something: `make exercises-proof`.

    python -m exercises.prove [--lesson 04]

For each exercise, in a fresh copy of the repository's files (what `git ls-files`
lists, plus files not yet committed that git does not ignore; no .venv, no .pgdata):

1. run `python -m exercises.check NN K` there: it must fail (exit 1), since the lesson
   as shipped does not do what the exercise asks;
2. `git apply` the reference solution (exercises/solutions/lessonNN/eK.patch) to the copy;
3. run the check again: it must pass.

The checks run in the copy, with the copy first on PYTHONPATH, so they import the
copy's `lessons` (with the solution applied), not the editable install's; each copy
first proves that it does. Every run uses one database server: DATABASE_URL, or
the embedded one of this repository. Prints one line per exercise and exits 1 if
any proof fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from exercises import REPOSITORY_ROOT, Exercise, all_exercises
from exercises.check import EXIT_NOT_YET, EXIT_PASSES
from lessons.common.database import start_embedded_server

# A check takes a few seconds; one that has not ended after this is broken.
CHECK_TIMEOUT_SECONDS = 180


@dataclass(frozen=True)
class Proof:
    exercise: Exercise
    fails_before: bool
    passes_after: bool
    seconds: float
    # What went wrong, with the output of the run that went wrong.
    trouble: str = ""

    @property
    def holds(self) -> bool:
        return self.fails_before and self.passes_after

    def line(self) -> str:
        def yes(flag: bool) -> str:
            return "yes" if flag else "NO "

        return (
            f"lesson {self.exercise.lesson}  E{self.exercise.number}  "
            f"fails before: {yes(self.fails_before)}  passes after: {yes(self.passes_after)}  "
            f"{self.seconds:5.1f} s  {self.exercise.title}"
        )


def repository_files() -> list[str]:
    """The repository's files as a clone would have them, plus the ones not committed yet."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPOSITORY_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # A file deleted in the working tree but not yet in the index is still listed.
    return [name for name in listed.split("\0") if name and (REPOSITORY_ROOT / name).is_file()]


def copy_repository(files: list[str], destination: Path) -> None:
    for name in files:
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPOSITORY_ROOT / name, target)


def environment_for(copy: Path, database_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        entry for entry in [str(copy), env.get("PYTHONPATH", "")] if entry
    )
    env["DATABASE_URL"] = database_url
    return env


def imports_the_copy(copy: Path, env: dict[str, str]) -> str:
    """'' when Python started in the copy imports the copy's packages; else what it imports."""
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import exercises, lessons, tests; "
            "print(exercises.__file__); print(lessons.__file__); print(tests.__file__)",
        ],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    imported = probe.stdout.split()
    if probe.returncode != 0 or len(imported) != 3:
        return probe.stdout + probe.stderr
    outside = [path for path in imported if not Path(path).resolve().is_relative_to(copy)]
    return "\n".join(f"imported from outside the copy: {path}" for path in outside)


def run_check(exercise: Exercise, copy: Path, env: dict[str, str]) -> tuple[int, str]:
    """The check's exit code in the copy, and its output."""
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "exercises.check", exercise.lesson, str(exercise.number)],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
            timeout=CHECK_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        return -1, f"the check ran longer than {CHECK_TIMEOUT_SECONDS} s\n{error.stdout!r}"
    return completed.returncode, completed.stdout + completed.stderr


def prove(exercise: Exercise, files: list[str], database_url: str) -> Proof:
    started = time.monotonic()
    if not exercise.solution.is_file():
        return Proof(exercise, False, False, 0.0, f"no reference solution at {exercise.solution}")
    with tempfile.TemporaryDirectory(prefix=f"exercise-{exercise.lesson}-{exercise.number}-") as d:
        copy = Path(d).resolve()
        copy_repository(files, copy)
        env = environment_for(copy, database_url)
        wrong_imports = imports_the_copy(copy, env)
        if wrong_imports:
            return Proof(exercise, False, False, time.monotonic() - started, wrong_imports)

        before, before_output = run_check(exercise, copy, env)
        fails_before = before == EXIT_NOT_YET
        applied = subprocess.run(
            ["git", "apply", str(exercise.solution)],
            cwd=copy,
            capture_output=True,
            text=True,
            check=False,
        )
        if applied.returncode != 0:
            return Proof(
                exercise,
                fails_before,
                False,
                time.monotonic() - started,
                f"git apply {exercise.solution.name} failed:\n{applied.stderr}",
            )
        after, after_output = run_check(exercise, copy, env)
        passes_after = after == EXIT_PASSES
    trouble = ""
    if not fails_before:
        trouble += f"on the lesson as shipped the check exited {before}:\n{before_output}\n"
    if not passes_after:
        trouble += f"with the solution applied the check exited {after}:\n{after_output}\n"
    return Proof(exercise, fails_before, passes_after, time.monotonic() - started, trouble)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--lesson", help="prove only this lesson's exercises: 04")
    options = parser.parse_args(argv)
    exercises = all_exercises(options.lesson.zfill(2) if options.lesson else None)
    if not exercises:
        print("error: no exercises found", file=sys.stderr)
        return 2
    database_url = os.environ.get("DATABASE_URL") or start_embedded_server()
    files = repository_files()
    proofs = []
    for exercise in exercises:
        proof = prove(exercise, files, database_url)
        print(proof.line(), flush=True)
        if proof.trouble:
            print(proof.trouble, flush=True)
        proofs.append(proof)
    failed = [proof for proof in proofs if not proof.holds]
    total = sum(proof.seconds for proof in proofs)
    print(
        f"{len(proofs) - len(failed)} of {len(proofs)} exercise proofs hold ({total:.0f} s)"
        + (f"; FAILED: {', '.join(proof.exercise.name for proof in failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
