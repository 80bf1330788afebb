"""The outside world the agent acts on: a model provider's ledger, and a mail service.

Neither lives in the engine's database, because in real life neither does: a
model API bills you for every request it answers, and a mail service delivers
what you asked it to, whatever happens to your worker afterwards. Here each
is a file of JSON lines in one directory (COURSE_AGENT_WORLD), written under a
file lock, so that every worker process sees the same world and a test can
count, after a run, what the world saw:

- `model_requests.jsonl`: every request the model provider received, in
  order, with what it answered (a reply, or 429, busy). A request the agent
  repeated after a crash would be a second line: this is the bill.
- `mail.jsonl`: what the mail service was asked (`request` lines) and what it
  did (`draft`, `sent`, `discarded` lines). Like a real mail API it takes a
  business idempotency key: a second send with the key of a sent email does
  nothing, and answers with the first send's message id. So a tool retried
  after a crash (two `request` lines) still sends one email (one `sent` line).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORLD_VARIABLE = "COURSE_AGENT_WORLD"

MODEL_REQUESTS = "model_requests.jsonl"
MAIL = "mail.jsonl"


class Ledger:
    """One file of JSON lines, read and appended to under an exclusive lock."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self) -> list[dict[str, Any]]:
        """What the file holds now (a reader takes the lock too: no torn line)."""
        with self.locked() as records:
            return records

    @contextmanager
    def locked(self) -> Iterator[list[dict[str, Any]]]:
        """The records, with the lock held until the block ends: read, decide, `append`."""
        self.path.touch(exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                text = self.path.read_text()
                yield [json.loads(line) for line in text.splitlines() if line]
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def append(self, record: dict[str, Any]) -> None:
        """Add one record, on disk before this returns (call it inside `locked`)."""
        with open(self.path, "a") as file:
            file.write(json.dumps(record, sort_keys=True) + "\n")
            file.flush()
            os.fsync(file.fileno())


@dataclass(frozen=True)
class World:
    """The directory that holds the world's files."""

    directory: Path

    @classmethod
    def here(cls) -> World:
        """The world this process acts on: COURSE_AGENT_WORLD names its directory."""
        directory = os.environ.get(WORLD_VARIABLE)
        if not directory:
            raise RuntimeError(
                f"{WORLD_VARIABLE} is not set: it names the directory of the agent's "
                "outside world (the model provider's ledger, the mail service)"
            )
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    @property
    def model_requests(self) -> Ledger:
        return Ledger(self.directory / MODEL_REQUESTS)

    @property
    def mail(self) -> Ledger:
        return Ledger(self.directory / MAIL)

    def mail_records(self, kind: str) -> list[dict[str, Any]]:
        """The mail service's records of one kind: `request`, `draft`, `sent`, `discarded`."""
        return [record for record in self.mail.records() if record["kind"] == kind]


class MailService:
    """A mail API with drafts and business idempotency keys, as real ones have."""

    def __init__(self, world: World) -> None:
        self.ledger = world.mail

    def save_draft(self, key: str, to: str, subject: str, body: str) -> dict[str, Any]:
        """Keep the email as a draft under `key`, once; a person reads it before it goes."""
        with self.ledger.locked() as records:
            self.ledger.append({"kind": "request", "operation": "save_draft", "key": key})
            for record in records:
                if record["kind"] == "draft" and record["key"] == key:
                    return record
            draft = {"kind": "draft", "key": key, "to": to, "subject": subject, "body": body}
            self.ledger.append(draft)
            return draft

    def send(self, key: str) -> dict[str, Any]:
        """Send the draft `key`, once: a repeat answers with the first send's message id."""
        with self.ledger.locked() as records:
            self.ledger.append({"kind": "request", "operation": "send", "key": key})
            drafts = [r for r in records if r["kind"] == "draft" and r["key"] == key]
            if not drafts:
                raise LookupError(f"the mail service has no draft {key}")
            for record in records:
                if record["kind"] == "sent" and record["key"] == key:
                    return {**record, "repeated": True}
            sent = {"kind": "sent", "key": key, "to": drafts[0]["to"], "message_id": f"m-{key}"}
            self.ledger.append(sent)
            return {**sent, "repeated": False}

    def discard(self, key: str) -> bool:
        """Throw the draft `key` away, once, unless it was sent; True if this call did."""
        with self.ledger.locked() as records:
            self.ledger.append({"kind": "request", "operation": "discard", "key": key})
            done = {(r["kind"], r["key"]) for r in records}
            if ("sent", key) in done or ("discarded", key) in done or ("draft", key) not in done:
                return False
            self.ledger.append({"kind": "discarded", "key": key})
            return True
