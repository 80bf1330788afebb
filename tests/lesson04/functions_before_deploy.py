"""The task functions of lesson 04's workers as they were before `new_kind` was written:
what an old worker runs, side by side with new ones, during a rolling deploy."""

from __future__ import annotations

from lessons.lesson04_queue_improvements.engine.worker import TaskFunction
from tests.lesson04.functions import FUNCTIONS as FUNCTIONS_AFTER_THE_DEPLOY

FUNCTIONS: dict[str, TaskFunction] = {
    name: function for name, function in FUNCTIONS_AFTER_THE_DEPLOY.items() if name != "new_kind"
}
