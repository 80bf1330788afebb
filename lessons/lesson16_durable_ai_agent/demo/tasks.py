"""The task functions of this lesson's demonstration: a durable AI agent and its tools.

A task function takes the task's JSON input and returns a JSON output. A worker
finds it by the name it is registered under; `FUNCTIONS` and
`DURABLE_FUNCTIONS` list them all, and are what `worker_process --functions`
loads.

`agent` (agent.py) is the agent loop, a durable function; the model calls
(`call_model`, agent.py) and the tools it calls (tools.py) are plain task
functions, each call of one a child task of the agent's. They act on the
outside world (world.py): a model provider that keeps the bill, a mail
service that keeps what it sent.
"""

from __future__ import annotations

from ..engine.durable import DurableFunction
from ..engine.worker import TaskFunction
from .agent import agent, call_model
from .tools import calculate, discard_draft, draft_email, search, send_email

FUNCTIONS: dict[str, TaskFunction] = {
    "call_model": call_model,
    "search": search,
    "calculate": calculate,
    "draft_email": draft_email,
    "send_email": send_email,
    "discard_draft": discard_draft,
}

DURABLE_FUNCTIONS: dict[str, DurableFunction] = {"agent": agent}
