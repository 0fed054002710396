"""Fake chat APIs with tool use: OpenAI's POST /v1/chat/completions and Anthropic's POST /v1/messages.

Both check the credentials, validate the request as strictly as the real API does where devmesh could get it
wrong (message order, every tool call answered, tool names, schemas) and answer 400 with the vendor's error body
when it is wrong. Answers are scripted: `reply_text("...")`, `reply_tools([("github.create_issue", {...}), ...])`
(several calls in one turn; devmesh names are sent in wire form, `.` -> `__`). With nothing scripted a request
gets a 400 naming that. Faults (FakeAPI.script) answer the vendor's error shapes (429 with retry-after, 5xx, 400).
Usage is deterministic: input tokens ~ request bytes / 4, output tokens ~ answer bytes / 4, unless scripted.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from tests.fakes.server import FakeAPI, Fault, Response, Seen, json_response

__all__ = ["FakeAnthropic", "FakeOpenAIChat", "Scripted"]

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_ids = itertools.count(1)


@dataclass
class Scripted:
    """One scripted model turn."""

    text: str | None
    calls: list[tuple[str, Any]]  # (name, arguments); arguments a dict, or a str sent verbatim (OpenAI)
    usage: tuple[int, int] | None = None
    stop: str | None = None  # overrides the stop / finish reason


class _BadRequest(Exception):
    pass


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise _BadRequest(message)


class _ChatFake(FakeAPI):
    """The script queue and request log shared by both fakes."""

    path = ""

    def __init__(self, api_key: str) -> None:
        super().__init__()
        self.api_key = self.expected_key = api_key
        self.turns: deque[Scripted] = deque()

    def reset(self) -> None:
        super().reset()
        self.turns.clear()
        self.api_key = self.expected_key

    def reply_text(self, text: str, *, usage: tuple[int, int] | None = None, stop: str | None = None) -> None:
        """Queue a plain answer."""
        self.turns.append(Scripted(text, [], usage, stop))

    def reply_tools(self, calls: list[tuple[str, Any]], *, text: str | None = None,
                    usage: tuple[int, int] | None = None) -> None:
        """Queue a turn that calls these tools (in this order), with optional text before them."""
        self.turns.append(Scripted(text, list(calls), usage))

    def bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of the requests to the endpoint, in order."""
        return [r.body for r in self.requests if r.path.split("?")[0].endswith(self.path)]

    def _next(self) -> Scripted | None:
        with self._lock:
            return self.turns.popleft() if self.turns else None

    @staticmethod
    def _usage(seen: Seen, turn: Scripted) -> tuple[int, int]:
        if turn.usage is not None:
            return turn.usage
        produced = len(turn.text or "") + sum(len(json.dumps(a)) + len(n) for n, a in turn.calls)
        return len(json.dumps(seen.body)) // 4 + 1, produced // 4 + 1

    @staticmethod
    def _wire(name: str) -> str:
        return name.replace(".", "__")


# --- OpenAI ------------------------------------------------------------------------------------------------------

_OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
                 404: "invalid_request_error", 429: "requests", 500: "server_error", 503: "server_error"}
_OPENAI_PARAMS = {"model", "messages", "tools", "tool_choice", "parallel_tool_calls", "temperature", "top_p",
                  "max_tokens", "max_completion_tokens", "n", "stop", "seed", "user", "metadata", "store",
                  "response_format", "stream", "stream_options", "reasoning_effort", "service_tier",
                  "frequency_penalty", "presence_penalty", "logprobs", "top_logprobs", "logit_bias"}


class FakeOpenAIChat(_ChatFake):
    """POST /v1/chat/completions with a Bearer key; checks message order and tool definitions like the real API."""

    path = "/chat/completions"

    def __init__(self, api_key: str = "sk-test-chat") -> None:
        super().__init__(api_key)

    def error(self, fault: Fault) -> Response:
        code = fault.code or ("rate_limit_exceeded" if fault.status == 429 else None)
        body = {"error": {"message": fault.message, "type": _OPENAI_TYPES.get(fault.status, "api_error"),
                          "param": None, "code": code}}
        return json_response(fault.status, body, {"x-request-id": f"req_{next(_ids)}", **fault.headers})

    def answer(self, seen: Seen, fault: Fault | None) -> Response:
        if seen.method != "POST" or not seen.path.endswith("/v1/chat/completions"):
            return self.error(Fault.error(404, f"Invalid URL ({seen.method} {seen.path})"))
        key = seen.headers.get("authorization", "").removeprefix("Bearer ")
        if key != self.api_key:  # the real API echoes (a masked form of) the key: clients must never repeat it
            return self.error(Fault.error(401, f"Incorrect API key provided: {key}.", code="invalid_api_key"))
        try:
            self._validate(seen.body)
        except _BadRequest as exc:
            return self.error(Fault.error(400, str(exc)))
        turn = self._next()
        if turn is None:
            return self.error(Fault.error(400, "fake: no scripted reply left"))
        return json_response(200, self._completion(seen, turn), {"x-request-id": f"req_{next(_ids)}"})

    def _validate(self, body: Any) -> None:
        _require(isinstance(body, dict), "We could not parse the JSON body of your request.")
        unknown = sorted(set(body) - _OPENAI_PARAMS)
        _require(not unknown, f"Unrecognized request argument supplied: {', '.join(unknown)}")
        _require(isinstance(body.get("model"), str) and body["model"], "you must provide a model parameter")
        messages = body.get("messages")
        _require(isinstance(messages, list) and messages, "[] is too short - 'messages'")
        if "tools" in body:
            tools = body["tools"]
            _require(isinstance(tools, list) and tools, "[] is too short - 'tools'")
            names = []
            for i, tool in enumerate(tools):
                fn = tool.get("function") if isinstance(tool, dict) else None
                _require(tool.get("type") == "function" and isinstance(fn, dict), f"Invalid value at 'tools[{i}]'")
                name = fn.get("name")
                _require(isinstance(name, str) and TOOL_NAME.match(name),
                         f"Invalid 'tools[{i}].function.name': string does not match pattern. Expected a string "
                         "that matches the pattern '^[a-zA-Z0-9_-]+$'.")
                params = fn.get("parameters", {"type": "object"})
                _require(isinstance(params, dict) and params.get("type") == "object",
                         f"Invalid schema for function '{name}': schema must be a JSON Schema of 'type: \"object\"'")
                names.append(name)
            dupes = sorted({n for n in names if names.count(n) > 1})
            _require(not dupes, f"Duplicate tool names: {', '.join(dupes)}")
        pending: list[str] = []
        for i, m in enumerate(messages):
            role = m.get("role") if isinstance(m, dict) else None
            _require(role in ("system", "developer", "user", "assistant", "tool"),
                     f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'tool', "
                     f"'function', and 'developer'. (messages[{i}].role)")
            if role == "tool":
                _require(m.get("tool_call_id") in pending,
                         "Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
                         "with 'tool_calls'.")
                _require(isinstance(m.get("content"), (str, list)), f"Missing content in messages[{i}]")
                pending.remove(m["tool_call_id"])
                continue
            _require(not pending, "An assistant message with 'tool_calls' must be followed by tool messages "
                                  "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                                  f"response messages: {', '.join(pending)}")
            if role == "assistant":
                calls = m.get("tool_calls")
                _require(isinstance(m.get("content"), str) or calls,
                         f"Invalid value for 'content': expected a string, got null. (messages[{i}].content)")
                if calls is not None:
                    _require(isinstance(calls, list) and calls, f"[] is too short - 'messages.{i}.tool_calls'")
                    for j, call in enumerate(calls):
                        fn = call.get("function") or {}
                        _require(isinstance(call.get("id"), str) and call.get("type") == "function"
                                 and isinstance(fn.get("name"), str) and isinstance(fn.get("arguments"), str),
                                 f"Invalid 'messages[{i}].tool_calls[{j}]': id, type 'function', function.name and "
                                 "function.arguments (a string) are required")
                        pending.append(call["id"])
            else:
                _require(isinstance(m.get("content"), (str, list)), f"Missing content in messages[{i}]")
        _require(not pending, "An assistant message with 'tool_calls' must be followed by tool messages responding "
                              f"to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
                              f"{', '.join(pending)}")

    def _completion(self, seen: Seen, turn: Scripted) -> dict[str, Any]:
        calls = [{"id": f"call_{next(_ids):06d}", "type": "function",
                  "function": {"name": self._wire(name),
                               "arguments": args if isinstance(args, str) else json.dumps(args)}}
                 for name, args in turn.calls]
        message: dict[str, Any] = {"role": "assistant", "content": turn.text, "refusal": None, "annotations": []}
        if calls:
            message["tool_calls"] = calls
        given, produced = self._usage(seen, turn)
        return {"id": f"chatcmpl-{next(_ids)}", "object": "chat.completion", "created": int(time.time()),
                "model": f"{seen.body['model']}-2026-01-01", "service_tier": "default",
                "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": turn.stop or ("tool_calls" if calls else "stop")}],
                "usage": {"prompt_tokens": given, "completion_tokens": produced, "total_tokens": given + produced,
                          "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                          "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                        "accepted_prediction_tokens": 0,
                                                        "rejected_prediction_tokens": 0}}}

    def offered(self, index: int = -1) -> list[str]:
        """The tool names (wire form) offered in request `index`."""
        return [t["function"]["name"] for t in self.bodies()[index].get("tools", [])]


# --- Anthropic ---------------------------------------------------------------------------------------------------

_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                    529: "overloaded_error"}
_ANTHROPIC_PARAMS = {"model", "messages", "max_tokens", "system", "tools", "tool_choice", "temperature", "top_p",
                     "top_k", "stop_sequences", "stream", "metadata", "thinking", "service_tier"}


class FakeAnthropic(_ChatFake):
    """POST /v1/messages with `x-api-key` (or a Bearer key) and `anthropic-version`; checks tool_use / tool_result
    pairing, roles, content blocks and tool definitions like the real API."""

    path = "/messages"

    def __init__(self, api_key: str = "sk-ant-test-chat") -> None:
        super().__init__(api_key)

    def error(self, fault: Fault) -> Response:
        request_id = f"req_{next(_ids)}"
        body = {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(fault.status, "api_error"),
                                           "message": fault.message}, "request_id": request_id}
        return json_response(fault.status, body, {"request-id": request_id, **fault.headers})

    def answer(self, seen: Seen, fault: Fault | None) -> Response:
        if seen.method != "POST" or not seen.path.split("?")[0].endswith("/v1/messages"):
            return self.error(Fault.error(404, f"Not found: {seen.path}"))
        key = seen.headers.get("x-api-key") or seen.headers.get("authorization", "").removeprefix("Bearer ")
        if key != self.api_key:
            return self.error(Fault.error(401, f"invalid x-api-key: {key}"))
        if not seen.headers.get("anthropic-version"):
            return self.error(Fault.error(400, "anthropic-version: header is required"))
        try:
            self._validate(seen.body)
        except _BadRequest as exc:
            return self.error(Fault.error(400, str(exc)))
        turn = self._next()
        if turn is None:
            return self.error(Fault.error(400, "fake: no scripted reply left"))
        return json_response(200, self._message(seen, turn), {"request-id": f"req_{next(_ids)}"})

    def _validate(self, body: Any) -> None:
        _require(isinstance(body, dict), "invalid JSON body")
        unknown = sorted(set(body) - _ANTHROPIC_PARAMS)
        _require(not unknown, f"{', '.join(unknown)}: Extra inputs are not permitted")
        _require(isinstance(body.get("model"), str) and body["model"], "model: Field required")
        _require(isinstance(body.get("max_tokens"), int) and body["max_tokens"] >= 1, "max_tokens: Field required")
        system = body.get("system")
        _require(system is None or isinstance(system, str)
                 or (isinstance(system, list) and all(b.get("type") == "text" for b in system)),
                 "system: Input should be a valid string or a list of text blocks")
        tools = body.get("tools")
        if tools is not None:
            _require(isinstance(tools, list), "tools: Input should be a valid list")
            names = []
            for i, tool in enumerate(tools):
                name = tool.get("name")
                _require(isinstance(name, str) and TOOL_NAME.match(name),
                         f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
                schema = tool.get("input_schema")
                _require(isinstance(schema, dict) and schema.get("type") == "object",
                         f"tools.{i}.custom.input_schema.type: Input should be 'object'")
                names.append(name)
            _require(len(set(names)) == len(names), "tools: Tool names must be unique.")
        messages = body.get("messages")
        _require(isinstance(messages, list) and messages, "messages: at least one message is required")
        uses_tools = False
        expected: set[str] = set()  # tool_use ids of the previous assistant message
        for i, m in enumerate(messages):
            role = m.get("role") if isinstance(m, dict) else None
            if role == "system":
                raise _BadRequest('messages: Unexpected role "system". The Messages API accepts a top-level '
                                  '`system` parameter, not "system" as an input message role.')
            _require(role in ("user", "assistant"), f"messages.{i}.role: Input should be 'user' or 'assistant'")
            _require(i > 0 or role == "user", "messages: first message must use the \"user\" role")
            content = m.get("content")
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
            _require(isinstance(blocks, list) and blocks,
                     f"messages.{i}: all messages must have non-empty content except for the optional final "
                     "assistant message")
            results = [b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"]
            if expected:
                missing = sorted(expected - set(results))
                _require(role == "user" and not missing,
                         f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                         f"{', '.join(missing or sorted(expected))}. Each `tool_use` block must have a "
                         "corresponding `tool_result` block in the next message.")
            extra = sorted(set(results) - expected)
            _require(not extra, f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks: "
                                f"{', '.join(map(str, extra))}. Each `tool_result` block must have a corresponding "
                                "`tool_use` block in the previous message.")
            first_other = next((k for k, b in enumerate(blocks) if b.get("type") != "tool_result"), len(blocks))
            _require(all(b.get("type") != "tool_result" for b in blocks[first_other:]),
                     f"messages.{i}.content: tool_result blocks must come first in the content array")
            expected = set()
            for j, block in enumerate(blocks):
                kind = block.get("type")
                if kind == "text":
                    _require(isinstance(block.get("text"), str) and block["text"],
                             f"messages.{i}.content.{j}: text content blocks must be non-empty")
                elif kind == "tool_use":
                    _require(role == "assistant", f"messages.{i}.content.{j}: tool_use blocks are only allowed in "
                                                  "assistant messages")
                    _require(isinstance(block.get("id"), str) and isinstance(block.get("name"), str)
                             and isinstance(block.get("input"), dict),
                             f"messages.{i}.content.{j}.tool_use: id, name and input (an object) are required")
                    expected.add(block["id"])
                    uses_tools = True
                elif kind == "tool_result":
                    _require(role == "user", f"messages.{i}.content.{j}: tool_result blocks are only allowed in "
                                             "user messages")
                    _require(isinstance(block.get("content", ""), (str, list)),
                             f"messages.{i}.content.{j}.tool_result.content: Input should be a string or a list")
                    uses_tools = True
                else:
                    raise _BadRequest(f"messages.{i}.content.{j}: unsupported content block type {kind!r}")
        _require(not expected, f"messages: `tool_use` ids were found without `tool_result` blocks immediately after: "
                               f"{', '.join(sorted(expected))}")
        _require(not uses_tools or tools, "Requests which include `tool_use` or `tool_result` blocks must define "
                                          "tools.")

    def _message(self, seen: Seen, turn: Scripted) -> dict[str, Any]:
        content: list[dict[str, Any]] = [{"type": "text", "text": turn.text}] if turn.text else []
        content += [{"type": "tool_use", "id": f"toolu_{next(_ids):06d}", "name": self._wire(name), "input": args}
                    for name, args in turn.calls]
        given, produced = self._usage(seen, turn)
        return {"id": f"msg_{next(_ids):06d}", "type": "message", "role": "assistant", "model": seen.body["model"],
                "content": content, "stop_reason": turn.stop or ("tool_use" if turn.calls else "end_turn"),
                "stop_sequence": None,
                "usage": {"input_tokens": given, "output_tokens": produced, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0, "service_tier": "standard"}}

    def offered(self, index: int = -1) -> list[str]:
        """The tool names (wire form) offered in request `index`."""
        return [t["name"] for t in self.bodies()[index].get("tools", [])]
