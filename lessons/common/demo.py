"""Run lessons' main.py files in order and summarise: `python -m lessons.common.demo`.

Stops at the first lesson whose guarantee does not hold, because later lessons
build on earlier ones.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

LESSONS_DIRECTORY = Path(__file__).resolve().parents[1]


def lesson_directories() -> list[Path]:
    return sorted(
        path for path in LESSONS_DIRECTORY.glob("lesson[0-9][0-9]_*") if (path / "main.py").exists()
    )


def run_one(directory: Path, arguments: list[str]) -> tuple[int, float]:
    print(f"\n=== {directory.name} ===", flush=True)
    started = time.monotonic()
    completed = subprocess.run([sys.executable, str(directory / "main.py"), *arguments])
    return completed.returncode, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lesson", help="run only this lesson number, e.g. 07")
    parser.add_argument("arguments", nargs="*", help="passed to the lesson's main.py")
    options = parser.parse_args()

    directories = lesson_directories()
    if options.lesson:
        number = options.lesson.zfill(2)
        directories = [d for d in directories if d.name.startswith(f"lesson{number}_")]
        if not directories:
            print(f"error: there is no lesson {number}", file=sys.stderr)
            return 2
        return run_one(directories[0], options.arguments)[0]

    results: list[tuple[str, str, float]] = []
    for directory in directories:
        code, seconds = run_one(directory, [])
        results.append((directory.name, "ok" if code == 0 else f"FAILED ({code})", seconds))
        if code != 0:
            break

    print(f"\n{'lesson':<34} {'result':<12} {'seconds':>8}")
    for name, result, seconds in results:
        print(f"{name:<34} {result:<12} {seconds:>8.1f}")
    skipped = len(directories) - len(results)
    if skipped:
        print(f"({skipped} later lesson(s) not run)")
    return 0 if all(result == "ok" for _, result, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
