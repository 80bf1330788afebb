"""The sample outputs in the lessons' READMEs, and how one is compared with a real run.

A sample is the fenced block right after a line that says which run it shows, exactly

    <!-- output of: python main.py [arguments] -->

in the README of the lesson whose `main.py` it is (no arguments for the default run).

A sample and the real output are compared *in shape*: the same lines in the same
order, once both are normalized. Normalizing a text:

- the real output's database description (it depends on DATABASE_URL) reads as the
  embedded server's, and the repository's path reads `/path/to/repo`, as the READMEs
  show them;
- what varies from run to run becomes a placeholder: a uuid `<uuid>`; a run of 8 or
  more hex digits (event keys, tracking numbers) `<hex>`; any other number, with its
  decimal point or thousands separators, `<n>`. So durations, counts, ids, PIDs,
  timestamps and dates compare equal whatever their value;
- each run of spaces becomes one space, and each line is stripped. The output's
  blank lines at its start and its end are dropped; any other blank line compares
  like any line.

A sample line that is exactly `...` stands for any number of lines, zero included.
"""

from __future__ import annotations

import difflib
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from lessons.common.database import REPOSITORY_ROOT

MARKER = re.compile(r"<!-- output of: python main\.py(?P<arguments>( [^ ]+)*) -->")
ANY_LINES = "..."
README_REPOSITORY_PATH = "/path/to/repo"
# What lesson 01's sample shows for the database: the embedded server's description.
README_DATABASE = f"embedded PostgreSQL, data in {README_REPOSITORY_PATH}/.pgdata"

PLACEHOLDERS = (
    (re.compile(r"\b[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\b"), "<uuid>"),
    (re.compile(r"\b[0-9a-fA-F]{8,}\b"), "<hex>"),
    (re.compile(r"[0-9]+([.,][0-9]+)*"), "<n>"),
)
SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class ReadmeSample:
    """One marked sample: which lesson's main.py, run with which arguments, printed what."""

    readme: Path
    line_number: int  # of the marker, 1-based
    arguments: tuple[str, ...]
    lines: tuple[str, ...]

    @property
    def main_script(self) -> str:
        """The path of the lesson's main.py, relative to the repository root."""
        return str((self.readme.parent / "main.py").relative_to(REPOSITORY_ROOT))

    @property
    def where(self) -> str:
        return f"{self.readme.relative_to(REPOSITORY_ROOT)}:{self.line_number}"

    def mismatch(self, output: str, database_description: str) -> str | None:
        """None when the sample has the shape of `output`, else a readable line diff."""
        sample = [normalize(line) for line in self.lines]
        real = without_blank_ends(
            [normalize(line) for line in real_output(output, database_description)]
        )
        if lines_match(sample, real):
            return None
        # The longest start of the sample that the output has, in order: the line
        # after it is the first one the output does not have where the sample says.
        matched = max(
            k for k in range(len(sample) + 1) if lines_match([*sample[:k], ANY_LINES], real)
        )
        first_missing = (
            f"README line {self.line_number + 2 + matched}: {self.lines[matched].strip()!r}"
            if matched < len(sample)
            else "the output has lines after the sample's last"
        )
        diff = difflib.unified_diff(
            sample, real, f"{self.where} (normalized)", "real output (normalized)", lineterm=""
        )
        return (
            f"the sample at {self.where} does not have the shape of the output of "
            f"`python main.py{''.join(' ' + a for a in self.arguments)}`; first line "
            f"not matched: {first_missing}. A sample line `{ANY_LINES}` stands for any "
            "lines.\n" + "\n".join(diff)
        )


def samples_in(readme: Path) -> list[ReadmeSample]:
    """Every marked sample of a README, in order. A marker must be followed by a fence."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    samples = []
    for index, line in enumerate(lines):
        if "output of:" not in line:
            continue
        marker = MARKER.fullmatch(line)
        if marker is None:
            raise ValueError(f"{readme}:{index + 1}: not a sample marker: {line!r}")
        if index + 1 >= len(lines) or not lines[index + 1].startswith("```"):
            raise ValueError(f"{readme}:{index + 1}: a marker must be followed by a fenced block")
        end = next((i for i in range(index + 2, len(lines)) if lines[i].startswith("```")), None)
        if end is None:
            raise ValueError(f"{readme}:{index + 2}: the fenced block never ends")
        samples.append(
            ReadmeSample(
                readme=readme,
                line_number=index + 1,
                arguments=tuple(shlex.split(marker["arguments"])),
                lines=tuple(lines[index + 2 : end]),
            )
        )
    return samples


def real_output(output: str, database_description: str) -> list[str]:
    """The real output with the database and the repository spelled as the READMEs do."""
    text = output.replace(database_description, README_DATABASE)
    text = text.replace(str(REPOSITORY_ROOT), README_REPOSITORY_PATH)
    return text.splitlines()


def without_blank_ends(lines: list[str]) -> list[str]:
    start = next((i for i, line in enumerate(lines) if line), len(lines))
    end = next((i for i in range(len(lines), start, -1) if lines[i - 1]), start)
    return lines[start:end]


def normalize(line: str) -> str:
    for pattern, placeholder in PLACEHOLDERS:
        line = pattern.sub(placeholder, line)
    return SPACES.sub(" ", line).strip()


def lines_match(sample: list[str], real: list[str]) -> bool:
    """Whether `real` is `sample` with each `...` line replaced by any lines (a glob
    over lines: the last `...` seen takes more lines whenever the rest fails)."""
    at_sample = at_real = 0
    resume_sample = resume_real = -1  # where to go on after the last `...`, if any
    while at_real < len(real):
        if at_sample < len(sample) and sample[at_sample] == ANY_LINES:
            resume_sample, resume_real = at_sample + 1, at_real
            at_sample += 1
        elif at_sample < len(sample) and sample[at_sample] == real[at_real]:
            at_sample += 1
            at_real += 1
        elif resume_sample >= 0:
            resume_real += 1
            at_sample, at_real = resume_sample, resume_real
        else:
            return False
    return all(line == ANY_LINES for line in sample[at_sample:])
