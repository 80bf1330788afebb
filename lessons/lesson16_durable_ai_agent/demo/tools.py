"""The agent's tools, each a plain task function: the agent runs each call as a child task.

A child task is the right shape for a tool: its input (the model's arguments)
and its output (what the model is told) are recorded, it runs on any worker,
and a worker that dies in the middle of it is replaced and the tool tried
again. Tried again: a tool runs *at least* once. So a tool with an effect on
the world takes a business idempotency key and hands it to the service it
calls, which does the effect once (`world.MailService`): two requests, one
email.

- `search`: the lesson's small corpus (`corpus/*.md`), by words in common.
- `calculate`: arithmetic, parsed (never `eval`).
- `draft_email`, `send_email`, `discard_draft`: the mail service. The model
  sees one tool, `send_email`; the agent turns a call of it into a draft, a
  person's approval, then the send (or the draft discarded), see `agent.py`.

`TOOLS` is what the model is told it may call (JSON schemas, as the
chat-completions API takes them).
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..engine.crash_points import crash_point
from .world import MailService, World

CORPUS = Path(__file__).resolve().parent / "corpus"
WORD = re.compile(r"[a-z0-9]{3,}")
RESULTS = 2

# The tools that act on the world, which a person approves first.
RISKY_TOOLS = {"send_email"}

TOOLS: list[dict[str, Any]] = [
    {
        "name": "search",
        "description": "Search the team's notes; returns the best matching passages.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    },
    {
        "name": "calculate",
        "description": "Evaluate an arithmetic expression: numbers, + - * / ** and brackets.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
    {
        "name": "send_email",
        "description": "Email someone. A person approves each email before it is sent.",
        "parameters": {
            "type": "object",
            "properties": {
                "to": {"type": "string"},
                "subject": {"type": "string"},
                "body": {"type": "string"},
            },
            "required": ["to", "subject", "body"],
        },
    },
]


def words(text: str) -> set[str]:
    return set(WORD.findall(text.lower()))


def search(input: dict[str, Any]) -> dict[str, Any]:
    """The corpus's passages with the most words in common with the query, best first."""
    wanted = words(input["query"])
    scored = []
    for path in sorted(CORPUS.glob("*.md")):
        title, _, text = path.read_text().partition("\n")
        for passage in text.strip().split("\n\n"):
            score = len(wanted & words(title + " " + passage))
            if score:
                scored.append((-score, path.name, title.lstrip("# "), " ".join(passage.split())))
    scored.sort()
    return {
        "results": [
            {"document": name, "title": title, "passage": passage}
            for _, name, title, passage in scored[:RESULTS]
        ]
    }


OPERATORS: dict[type[ast.AST], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}


def evaluate(node: ast.AST) -> int | float:
    """The value of an arithmetic expression's tree; anything else is refused."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        if isinstance(node.value, bool):
            raise ValueError(f"not a number: {node.value}")
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        result: int | float = OPERATORS[type(node.op)](evaluate(node.left), evaluate(node.right))
        return result
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -evaluate(node.operand)
    raise ValueError(f"not arithmetic: {ast.unparse(node)}")


def calculate(input: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the expression; an error is an answer too (the model reads it)."""
    expression = input["expression"]
    try:
        value = evaluate(ast.parse(expression, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError) as error:
        return {"expression": expression, "error": str(error)}
    return {"expression": expression, "value": value}


def draft_email(input: dict[str, Any]) -> dict[str, Any]:
    """Keep the email as a draft, under its key, for the person who approves it."""
    draft = MailService(World.here()).save_draft(
        input["key"], input["to"], input["subject"], input["body"]
    )
    crash_point("draft_email:saved")
    return {"key": draft["key"], "drafted": True}


def send_email(input: dict[str, Any]) -> dict[str, Any]:
    """Send the approved draft, once however often this runs (the key)."""
    sent = MailService(World.here()).send(input["key"])
    # The mail service has sent it; this task has not said so yet. A worker that
    # dies here leaves the task to another worker, which sends again: the key
    # makes that second request answer with the first one's message.
    crash_point("send_email:sent")
    return {"sent": True, "to": sent["to"], "message_id": sent["message_id"]}


def discard_draft(input: dict[str, Any]) -> dict[str, Any]:
    """Throw the draft away (it was refused, its approval timed out, or the run was
    cancelled): the compensation of `draft_email`."""
    discarded = MailService(World.here()).discard(input["key"])
    crash_point("discard_draft:discarded")
    return {"key": input["key"], "discarded": discarded}
