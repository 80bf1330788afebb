"""The scripted model's script: what it answers at each turn of a conversation.

This is not a model. It is a play with one part written out, so that the
lesson runs offline, the same way every time, and the tests can say exactly
what a run must give. A script is a function of the turn (1, 2, ...), of how
many times this very question was answered before (0 the first time: a fork
that asks a turn again gets alternative 1), and of the conversation so far,
whose tool results it reads back into its answers, as a model would.

The research script answers the question that `main.py` asks: how many orders
a month one worker can take, and what the database costs, by email to Ana.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

Script = Callable[[int, int, list[dict[str, Any]]], dict[str, Any]]

RECIPIENT = "ana@example.com"

# Turn 3, the one a fork asks again: a month of round-the-clock orders, or (the
# second answer) of office hours only, 8 hours a day on 22 working days.
MONTH_OF_ORDERS = ("140 * 3600 * 24 * 30", "140 * 3600 * 8 * 22")


def tool_call(turn: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """An assistant message that calls one tool."""
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": f"call-{turn}-1", "name": name, "arguments": arguments}],
    }


def last_result(messages: list[dict[str, Any]], tool: str) -> dict[str, Any]:
    """The output of the latest call of `tool` in the conversation."""
    for message in reversed(messages):
        if message["role"] == "tool" and message["name"] == tool:
            result: dict[str, Any] = json.loads(message["content"])
            return result
    raise LookupError(f"the conversation has no result of {tool}")


def research(turn: int, alternative: int, messages: list[dict[str, Any]]) -> dict[str, Any]:
    if turn == 1:
        return tool_call(turn, "search", {"query": "durable orders a second one worker"})
    if turn == 2:
        return tool_call(turn, "search", {"query": "database server price a month"})
    if turn == 3:
        expression = MONTH_OF_ORDERS[min(alternative, len(MONTH_OF_ORDERS) - 1)]
        return tool_call(turn, "calculate", {"expression": expression})
    if turn == 4:
        orders = last_result(messages, "calculate")["value"]
        return tool_call(
            turn,
            "send_email",
            {
                "to": RECIPIENT,
                "subject": "Orders a month on one worker",
                "body": (
                    f"One worker takes about {orders:,} orders a month (140 a second, "
                    f"{last_result(messages, 'calculate')['expression']}), on a database "
                    "server of 61 EUR a month."
                ),
            },
        )
    sent = last_result(messages, "send_email")
    outcome = "I emailed Ana" if sent.get("sent") else "I did not email Ana"
    orders = last_result(messages, "calculate")["value"]
    return {
        "role": "assistant",
        "content": f"{outcome}: one worker, about {orders:,} orders a month, 61 EUR a month.",
    }


SCRIPTS: dict[str, Script] = {"research": research}
