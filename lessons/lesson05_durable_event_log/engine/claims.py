"""The attempts this worker's claims returned, to find a claim whose answer was lost.

A claim is an UPDATE that commits on the server and answers over the network.
If the connection dies after the commit and before the answer arrives, the
tasks are running on this worker in the database, and this worker never heard
of them. Nothing else would ever notice: the worker is alive and renews its
lease, so no sweep takes them back. They would stay running, nowhere, for ever.

So the poller records every attempt a claim returns (`ClaimedAttempts.claiming`
and `received`), and each heartbeat compares them with the attempts the
database says this worker owns (`never_received`). An attempt owned and never
received is lost once no claim that could still bring it is on its way
(`lost_attempts`); the heartbeat gives it back to the queue (`heartbeat.py`).

Nothing else has to tell this registry that an attempt ended (a result
written, a durable task suspended, an attempt taken away): the heartbeat
forgets an attempt once the database no longer shows it owned.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# A task and one attempt of it: what a claim hands to one worker.
AttemptKey = tuple[int, int]


@dataclass(frozen=True)
class Suspects:
    """What one heartbeat found: attempts owned but never received, and the claims on their way."""

    attempts: frozenset[AttemptKey]
    claims_in_flight: frozenset[int]


class ClaimedAttempts:
    """The attempts this worker's claims have returned, until the database shows them ended."""

    def __init__(self) -> None:
        # The poller adds, the heartbeat reads and forgets.
        self._lock = threading.Lock()
        # Each attempt received, with the receipt's number: the heartbeat forgets
        # only what it knows was received before it asked the database.
        self._received: dict[AttemptKey, int] = {}
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

    def received(self, attempts: Iterable[AttemptKey]) -> None:
        """Record the attempts a claim returned, once its transaction has committed."""
        with self._lock:
            self._last_receipt += 1
            for attempt in attempts:
                self._received[attempt] = self._last_receipt

    def last_receipt(self) -> int:
        """A mark to take before asking the database what this worker owns."""
        with self._lock:
            return self._last_receipt

    def never_received(self, owned: set[AttemptKey], *, asked_after: int) -> Suspects:
        """The owned attempts no claim returned, as of a question asked after `asked_after`.

        Also forgets the attempts received before that mark that the answer no
        longer shows owned: they have ended. (A later claim that takes the same
        attempt up again, as resuming a suspended task does from lesson 09 on,
        is received anew, with a later receipt.)
        """
        with self._lock:
            for attempt, receipt in list(self._received.items()):
                if receipt <= asked_after and attempt not in owned:
                    del self._received[attempt]
            return Suspects(
                attempts=frozenset(owned - self._received.keys()),
                claims_in_flight=frozenset(self._in_flight),
            )


def lost_attempts(previous: Suspects | None, current: Suspects) -> frozenset[AttemptKey]:
    """The attempts two beats in a row found owned and never received: lost with their answer.

    One beat is not enough: a claim may have committed before the beat asked,
    its answer still on its way. The claims on their way at the previous beat
    must all have ended since: then whatever they returned has been received,
    and an attempt still missing came in an answer that never arrived.
    """
    if previous is None or previous.claims_in_flight & current.claims_in_flight:
        return frozenset()
    return previous.attempts & current.attempts
