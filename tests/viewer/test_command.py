"""`python -m viewer` (what `make viewer` runs): it prints its address, serves there
on 127.0.0.1, and stops at Ctrl-C even with a live page's stream open; a lesson
it cannot show is one line on stderr and exit code 2."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
from typing import Any

from tests.conftest import LessonDatabase
from tests.waiting import wait_until

LESSON = "lesson11_retries_replays_forks"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_the_command_prints_its_address_serves_and_stops_at_ctrl_c_with_a_stream_open(
    lesson_database: Any,
) -> None:
    database: LessonDatabase = lesson_database(LESSON)
    port = free_port()
    viewer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "viewer",
            "--lesson",
            "11",
            "--schema",
            database.schema,
            "--port",
            str(port),
            "--poll-interval",
            "0.2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DATABASE_URL": database.url},
    )
    try:
        assert viewer.stdout is not None
        first_line = viewer.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in first_line and "read-only" in first_line
        streams: list[http.client.HTTPConnection] = []

        def answers() -> bool:
            stream = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                stream.request("GET", "/", headers={"Accept": "text/event-stream"})
            except ConnectionRefusedError:
                return False
            streams.append(stream)
            return True

        wait_until(answers, timeout=20, message="the viewer never answered")
        response = streams[0].getresponse()
        assert response.status == 200
        assert response.readline() == b"event: update\n"
        viewer.send_signal(signal.SIGINT)
        # uvicorn ends the process by the signal it stopped for, once it has stopped:
        # a shell sees what it sees of any program stopped by Ctrl-C.
        assert viewer.wait(timeout=10) in (0, -signal.SIGINT)
    finally:
        viewer.kill()
        viewer.wait()


def test_a_lesson_the_viewer_cannot_show_is_one_line_and_exit_code_2() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "viewer", "--lesson", "7"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert (
        completed.stderr.strip()
        == "error: the viewer shows lessons 11, 12, 13, 14, 15, 16, not lesson 07"
    )
