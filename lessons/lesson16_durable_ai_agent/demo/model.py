"""The model behind the agent: one small interface, two implementations.

    model = model_from({"kind": "scripted", "script": "research"})
    response = model.complete(request)

A request is what the agent records before the call (JSON, so a step can keep
it): the conversation so far and the tools the model may call,

    {"model": {...}, "turn": 3, "messages": [...], "tools": [...]}

and a response is what it records after it:

    {"status": 200, "message": {"role": "assistant", "content": "...",
                                "tool_calls": [{"id": "call-3-1", "name": "calculate",
                                                "arguments": {"expression": "2 * 21"}}]},
     "usage": {"prompt_tokens": 120, "completion_tokens": 14}}

or `{"status": 429, "retry_after": 0.2}` when the provider is busy. A message
is `{"role": "system"|"user"|"assistant"|"tool", "content": ...}`, an
assistant's may carry `tool_calls`, and a tool's names the call it answers
(`tool_call_id`).

- `ScriptedModel`, the default, is *scripted*: it does not understand
  anything. It plays a fixed script (`script.py`), deterministically, so
  that the lesson runs offline and its tests can be exact. Like a real
  provider it keeps a ledger of every request it is sent (`world.py`), which
  is how the lesson counts model calls, and it is busy now and then: it
  refuses every `BUSY_EVERY`-th request with a 429. Asked the very same
  question a second time (a fork re-asks a turn), it gives the script's next
  alternative answer, as a sampling model would answer differently.
- `OpenAICompatibleModel` speaks the chat-completions API of OpenAI and of
  the many servers that copy it (vLLM, llama.cpp's server, Ollama, ...), with
  the standard library's urllib. It is used only when the agent's input asks
  for it and COURSE_AGENT_MODEL_URL is set (see `model_from`); no test calls it.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from typing import Any, Protocol

from .script import SCRIPTS
from .world import World

# The scripted provider refuses every fourth request it receives (429): by count, not by
# the clock, so that a run, crashes included, is exact.
BUSY_EVERY = 4
RETRY_AFTER_SECONDS = 0.2

URL_VARIABLE = "COURSE_AGENT_MODEL_URL"  # e.g. https://api.openai.com/v1
NAME_VARIABLE = "COURSE_AGENT_MODEL_NAME"  # e.g. gpt-4o-mini
KEY_VARIABLE = "COURSE_AGENT_MODEL_KEY"  # sent as a bearer token; never recorded
TIMEOUT_SECONDS = 60.0


class Model(Protocol):
    """What the agent needs of a model: one request in, one response out."""

    def complete(self, request: dict[str, Any]) -> dict[str, Any]: ...


def model_from(config: dict[str, Any]) -> Model:
    """The model an agent's input names: `{"kind": "scripted", "script": NAME}` or
    `{"kind": "openai"}` (the endpoint, model name and key from the environment)."""
    if config["kind"] == "scripted":
        return ScriptedModel(World.here(), config["script"])
    if config["kind"] == "openai":
        return OpenAICompatibleModel.from_environment()
    raise ValueError(f"there is no model of kind {config['kind']!r}")


def request_digest(request: dict[str, Any]) -> str:
    """A short name of a request's content: two identical requests have the same."""
    text = json.dumps(request, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def count_tokens(value: Any) -> int:
    """The scripted provider's token count: words, roughly what a tokenizer gives."""
    return len(json.dumps(value).split())


class ScriptedModel:
    """A deterministic stand-in for a model API: it plays a script, and keeps the bill."""

    def __init__(self, world: World, script: str) -> None:
        self.ledger = world.model_requests
        self.script = SCRIPTS[script]

    def complete(self, request: dict[str, Any]) -> dict[str, Any]:
        digest = request_digest(request)
        with self.ledger.locked() as received:
            number = len(received) + 1
            record = {"number": number, "turn": request["turn"], "request": digest}
            if number % BUSY_EVERY == 0:
                self.ledger.append({**record, "status": 429})
                return {"status": 429, "retry_after": RETRY_AFTER_SECONDS}
            # A question asked again gets the script's next answer to it.
            asked_before = sum(1 for r in received if r["request"] == digest and r["status"] == 200)
            message = self.script(request["turn"], asked_before, request["messages"])
            self.ledger.append({**record, "status": 200})
        return {
            "status": 200,
            "message": message,
            "usage": {
                "prompt_tokens": count_tokens(request["messages"]),
                "completion_tokens": count_tokens(message),
            },
        }


class OpenAICompatibleModel:
    """A chat-completions endpoint (OpenAI's API, or a server that speaks it).

    What the agent records of a call is the same as for the scripted model:
    the request as the agent built it (conversation, tools, the model's name;
    never the URL's key) and the response translated back (the assistant's
    message, its tool calls, the token usage), or the 429 and its Retry-After.
    """

    def __init__(self, url: str, name: str, key: str | None) -> None:
        self.url = url.rstrip("/") + "/chat/completions"
        self.name = name
        self.key = key

    @classmethod
    def from_environment(cls) -> OpenAICompatibleModel:
        url = os.environ.get(URL_VARIABLE)
        if not url:
            raise RuntimeError(f"{URL_VARIABLE} is not set: there is no model API to call")
        return cls(url, os.environ.get(NAME_VARIABLE, "gpt-4o-mini"), os.environ.get(KEY_VARIABLE))

    def complete(self, request: dict[str, Any]) -> dict[str, Any]:
        body = {
            "model": self.name,
            "messages": [to_openai_message(message) for message in request["messages"]],
            "tools": [{"type": "function", "function": tool} for tool in request["tools"]],
        }
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        http_request = urllib.request.Request(
            self.url, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(http_request, timeout=TIMEOUT_SECONDS) as reply:
                answer = json.load(reply)
        except urllib.error.HTTPError as error:
            if error.code == 429:
                return {"status": 429, "retry_after": float(error.headers.get("Retry-After", 1))}
            raise
        usage = answer.get("usage") or {}
        return {
            "status": 200,
            "message": from_openai_message(answer["choices"][0]["message"]),
            "usage": {
                "prompt_tokens": int(usage.get("prompt_tokens", 0)),
                "completion_tokens": int(usage.get("completion_tokens", 0)),
            },
        }


def to_openai_message(message: dict[str, Any]) -> dict[str, Any]:
    """Our message as the chat-completions API writes it (arguments as JSON text)."""
    wire = {"role": message["role"], "content": message.get("content")}
    if message.get("tool_calls"):
        wire["tool_calls"] = [
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])},
            }
            for call in message["tool_calls"]
        ]
    if message["role"] == "tool":
        wire["tool_call_id"] = message["tool_call_id"]
    return wire


def from_openai_message(wire: dict[str, Any]) -> dict[str, Any]:
    """The API's assistant message as ours (arguments parsed)."""
    message: dict[str, Any] = {"role": "assistant", "content": wire.get("content")}
    calls = wire.get("tool_calls") or []
    if calls:
        message["tool_calls"] = [
            {
                "id": call["id"],
                "name": call["function"]["name"],
                "arguments": json.loads(call["function"]["arguments"] or "{}"),
            }
            for call in calls
        ]
    return message
