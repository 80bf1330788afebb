"""Check your attempt at an exercise: `make exercise N=04 E=1`.

    python -m exercises.check 04 1

Runs the exercise's check (a pytest module under exercises/lessonNN/) against the
lessons as they are in your working tree, then prints one line: whether your attempt
passes, and what to do next. Exit code 0 when it passes, 1 when it does not yet,
2 when there is no such exercise, 3 when the check itself could not run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from exercises import REPOSITORY_ROOT, Exercise, all_exercises

EXIT_PASSES = 0
EXIT_NOT_YET = 1
EXIT_NO_SUCH_EXERCISE = 2
EXIT_CHECK_BROKEN = 3

# pytest's exit codes: 0 every test passed, 1 some test failed.
PYTEST_ALL_PASSED = 0
PYTEST_SOME_FAILED = 1


def run_check(exercise: Exercise) -> int:
    """Run the check's pytest module, its output going to ours; return pytest's exit code."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(exercise.check.relative_to(REPOSITORY_ROOT)),
        "-q",
        "--no-header",
        "--tb=short",
        # The check is the test of one exercise: the lesson tests' cache has no say in it.
        "-p",
        "no:cacheprovider",
    ]
    return subprocess.run(command, cwd=REPOSITORY_ROOT, check=False).returncode


def next_step(exercise: Exercise) -> str:
    """What to do after a check passed: the lesson's next exercise, or the next lesson."""
    later = [
        other
        for other in all_exercises()
        if (other.lesson, other.number)
        > (
            exercise.lesson,
            exercise.number,
        )
    ]
    if not later:
        return "that was the last exercise of the course"
    following = later[0]
    return f"next: make exercise N={following.lesson} E={following.number} ({following.title})"


def verdict(exercise: Exercise, pytest_exit_code: int) -> tuple[int, str]:
    readme = exercise.lesson_readme.relative_to(REPOSITORY_ROOT)
    if pytest_exit_code == PYTEST_ALL_PASSED:
        return (
            EXIT_PASSES,
            f"PASS  exercise {exercise.name} ({exercise.title}); {next_step(exercise)}",
        )
    if pytest_exit_code == PYTEST_SOME_FAILED:
        return EXIT_NOT_YET, (
            f"NOT YET  exercise {exercise.name} ({exercise.title}): read the failure above, "
            f"and exercise {exercise.number} under '## Exercises' in {readme}"
        )
    return EXIT_CHECK_BROKEN, (
        f"ERROR  the check of exercise {exercise.name} could not run (pytest exit code "
        f"{pytest_exit_code}): see above; a syntax error in the lesson's code does this too"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("lesson", help="the lesson's two digits: 04")
    parser.add_argument("exercise", type=int, help="the exercise's number in that lesson: 1")
    options = parser.parse_args(argv)
    lesson = options.lesson.zfill(2)
    matching = [
        exercise for exercise in all_exercises(lesson) if exercise.number == options.exercise
    ]
    if not matching:
        numbers = ", ".join(str(exercise.number) for exercise in all_exercises(lesson))
        print(
            f"error: lesson {lesson} has no exercise {options.exercise}"
            + (f"; its exercises are {numbers}" if numbers else "; it has no exercises"),
            file=sys.stderr,
        )
        return EXIT_NO_SUCH_EXERCISE
    (exercise,) = matching
    code, line = verdict(exercise, run_check(exercise))
    print(f"\n{line}")
    return code


if __name__ == "__main__":
    sys.exit(main())
