"""The claims this worker received, to find a claim whose answer was lost.

A claim is an UPDATE that commits on the server and answers over the network.
If the connection dies after the commit and before the answer arrives, the
tasks are running on this worker in the database, and this worker never heard
of them. Nothing else would ever notice: the worker is alive and renews its
lease, so no sweep takes them back. They would stay running, nowhere, for ever.

So the poller records every claim it receives (`ClaimedAttempts.claiming` and
`received`), and each heartbeat compares them with what the database says this
worker owns (`never_received`). A claim owned and never received is lost once
no claim that could still bring it is on its way (`lost_claims`); the
heartbeat gives it back to the queue (`heartbeat.py`).

What is recorded is the claim of an attempt, not the attempt: from lesson 09
on, resuming a suspended durable task takes the same attempt up again, and the
second claim's answer can be lost as well as the first's. Each claim sets the
task's `started_at`, so (task, attempt, started_at) names one claim.

Nothing else has to tell this registry that a claim's work ended (a result
written, a durable task suspended, an attempt taken away): the heartbeat
forgets a claim once the database no longer shows it owned.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple


class Claim(NamedTuple):
    """One claim of a task: its attempt, and when the claim took it up."""

    task_id: int
    attempt: int
    started_at: datetime

    @classmethod
    def of(cls, task_id: int, attempt: int, started_at: datetime | None) -> Claim:
        """The claim a row shows; a running task always has its started_at."""
        if started_at is None:
            raise ValueError(f"task {task_id} is running with no started_at")
        return cls(task_id, attempt, started_at)


@dataclass(frozen=True)
class Suspects:
    """What one heartbeat found: claims owned but never received, and the claims on their way."""

    claims: frozenset[Claim]
    claims_in_flight: frozenset[int]


class ClaimedAttempts:
    """The claims this worker has received, until the database shows them ended."""

    def __init__(self) -> None:
        # The poller adds, the heartbeat reads and forgets.
        self._lock = threading.Lock()
        # Each claim received, with the receipt's number: the heartbeat forgets
        # only what it knows was received before it asked the database.
        self._received: dict[Claim, int] = {}
        self._last_receipt = 0
        # The claims sent and not yet answered (or failed), by number.
        self._last_claim = 0
        self._in_flight: set[int] = set()

    @contextmanager
    def claiming(self) -> Iterator[None]:
        """Wrap one claim, from before its statement is sent until its answer is in hand."""
        with self._lock:
            self._last_claim += 1
            claim = self._last_claim
            self._in_flight.add(claim)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight.discard(claim)

    def received(self, claims: Iterable[Claim]) -> None:
        """Record the tasks a claim returned, once its transaction has committed."""
        with self._lock:
            self._last_receipt += 1
            for claim in claims:
                self._received[claim] = self._last_receipt

    def last_receipt(self) -> int:
        """A mark to take before asking the database what this worker owns."""
        with self._lock:
            return self._last_receipt

    def never_received(self, owned: set[Claim], *, asked_after: int) -> Suspects:
        """The owned claims never received, as of a question asked after `asked_after`.

        Also forgets the claims received before that mark that the answer no
        longer shows owned: their work has ended, and no claim is owned twice.
        """
        with self._lock:
            for claim, receipt in list(self._received.items()):
                if receipt <= asked_after and claim not in owned:
                    del self._received[claim]
            return Suspects(
                claims=frozenset(owned - self._received.keys()),
                claims_in_flight=frozenset(self._in_flight),
            )


def lost_claims(previous: Suspects | None, current: Suspects) -> frozenset[Claim]:
    """The claims two beats in a row found owned and never received: lost with their answer.

    One beat is not enough: a claim may have committed before the beat asked,
    its answer still on its way. The claims on their way at the previous beat
    must all have ended since: then whatever they returned has been received,
    and a claim still missing came in an answer that never arrived.
    """
    if previous is None or previous.claims_in_flight & current.claims_in_flight:
        return frozenset()
    return previous.claims & current.claims
