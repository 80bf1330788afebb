"""What a figure was measured on: the machine, the server and its settings, the libraries.

Absolute numbers drift between machines and runs, so every report carries these
next to its figures.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import psycopg

from lessons.common.database import describe_url, locate_database

# The server settings that move queue throughput the most.
SERVER_SETTINGS = (
    "shared_buffers",
    "fsync",
    "synchronous_commit",
    "wal_level",
    "max_wal_size",
    "autovacuum",
    "autovacuum_naptime",
    "autovacuum_vacuum_scale_factor",
    "autovacuum_vacuum_threshold",
    "autovacuum_vacuum_cost_delay",
)


@dataclass(frozen=True)
class Machine:
    cores: int
    memory_bytes: int
    cpu_model: str
    system: str
    python: str

    def describe(self) -> str:
        memory_gib = self.memory_bytes / 2**30
        return (
            f"{self.cores} cores ({self.cpu_model}), {memory_gib:.0f} GiB memory, "
            f"{self.system}, Python {self.python}"
        )


@dataclass(frozen=True)
class Server:
    version: str
    location: str
    settings: dict[str, str]

    def describe(self) -> str:
        return f"PostgreSQL {self.version} ({self.location})"

    def describe_settings(self) -> str:
        return ", ".join(f"{name}={value}" for name, value in self.settings.items())


def this_machine() -> Machine:
    return Machine(
        cores=os.cpu_count() or 1,
        memory_bytes=psutil.virtual_memory().total,
        cpu_model=_cpu_model(),
        system=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
    )


def this_server(conn: psycopg.Connection[Any]) -> Server:
    row = conn.execute("SHOW server_version").fetchone()
    version = str(row[0]).split()[0] if row else "unknown"
    rows = conn.execute(
        "SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s) ORDER BY name",
        (list(SERVER_SETTINGS),),
    ).fetchall()
    settings = {str(name): _with_unit(str(setting), unit) for name, setting, unit in rows}
    location = locate_database()
    where = "embedded" if location.embedded else describe_url(location.url)
    return Server(version=version, location=where, settings=settings)


def library_versions(*names: str) -> dict[str, str]:
    """The installed version of each distribution, or "not installed"."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    return platform.processor() or "unknown CPU"


def _with_unit(setting: str, unit: str | None) -> str:
    """pg_settings gives shared_buffers as 16384 of unit 8kB: say 128MB instead."""
    if unit == "8kB" and setting.isdigit():
        return _bytes(int(setting) * 8192)
    if unit == "MB" and setting.isdigit():
        return _bytes(int(setting) * 2**20)
    if unit in ("s", "ms"):
        return f"{setting}{unit}"
    return setting


def _bytes(count: int) -> str:
    if count % 2**30 == 0:
        return f"{count // 2**30}GB"
    return f"{count // 2**20}MB"
