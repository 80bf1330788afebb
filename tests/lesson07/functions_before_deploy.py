"""The task functions of lesson 07's workers as they were before `process_order` was
written: an old worker, side by side with new ones during a rolling deploy, runs
the children (charge_payment, send_confirmation_email) but no order."""

from __future__ import annotations

from lessons.lesson07_durable_tasks.demo.tasks import FUNCTIONS as LESSON_FUNCTIONS
from lessons.lesson07_durable_tasks.engine.durable import DurableFunction
from lessons.lesson07_durable_tasks.engine.worker import TaskFunction

FUNCTIONS: dict[str, TaskFunction] = dict(LESSON_FUNCTIONS)

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {}
