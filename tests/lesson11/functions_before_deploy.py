"""The task functions of lesson 11's workers as they were before the durable function
`new_kind` was written: what an old worker runs, side by side with new ones, during
a rolling deploy."""

from __future__ import annotations

from lessons.lesson11_retries_replays_forks.engine.durable import DurableFunction
from tests.lesson11.functions import DURABLE_FUNCTIONS as DURABLE_FUNCTIONS_AFTER_THE_DEPLOY
from tests.lesson11.functions import FUNCTIONS as FUNCTIONS

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {
    name: function
    for name, function in DURABLE_FUNCTIONS_AFTER_THE_DEPLOY.items()
    if name != "new_kind"
}
