"""Chat models with tool use, as Prefect blocks: OpenAI's Chat Completions and Anthropic's Messages API through
their official SDKs, behind one provider-neutral message model.

    ChatMessage(role="user", content="...")
    ChatMessage(role="assistant", content="...", tool_calls=[ToolCall(id, name, arguments)])
    ChatMessage(role="tool", tool_call_id="...", content="...", is_error=False)

`complete(system, messages, tools) -> ChatTurn(text, tool_calls, stop_reason, usage, model)`. Tool names are
devmesh's (`github.create_issue`); on the wire they become `github__create_issue` (both vendors allow only
[a-zA-Z0-9_-]) and are mapped back in the answer. The SDKs' own retries are off: `call_with_retries` retries 429
(Retry-After), 5xx, 408/409 and timeouts, never another 4xx. Errors are blocks.errors, with the key scrubbed.
"""

from __future__ import annotations

import json
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Literal, Protocol

from prefect.blocks.core import Block
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from blocks import tracing
from blocks.embedders.hosted import fingerprint
from blocks.redact import register_secrets
from blocks.retry import call_with_retries
from blocks.vendor_errors import map_sdk_errors

__all__ = ["AnthropicChat", "ChatBlock", "ChatMessage", "ChatTurn", "OpenAIChat", "TokenUsage", "ToolCall",
           "ToolSpec", "clear_clients", "tool_name_from_wire", "wire_tool_name"]

WIRE_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # OpenAI's function-name rule (Anthropic's is no stricter)
# A devmesh name maps reversibly when its segments are [a-z0-9] words joined by single underscores.
_REVERSIBLE = re.compile(r"^[a-zA-Z0-9]+(?:_[a-zA-Z0-9]+)*(?:\.[a-zA-Z0-9]+(?:_[a-zA-Z0-9]+)*)*$")


def wire_tool_name(name: str) -> str:
    """`github.create_issue` -> `github__create_issue`; ValueError for a name that would not map back."""
    wire = name.replace(".", "__")
    if not _REVERSIBLE.match(name) or not WIRE_NAME.match(wire):
        raise ValueError(f"tool name {name!r} cannot be sent to a model API (want dotted [a-zA-Z0-9_] words, "
                         "single underscores, at most 64 characters)")
    return wire


def tool_name_from_wire(wire: str) -> str:
    """The inverse of wire_tool_name: `github__create_issue` -> `github.create_issue`."""
    return wire.replace("__", ".")


class ToolSpec(Protocol):
    """What a model needs to know of a tool (tasks.tools.Tool satisfies it)."""

    name: str
    description: str
    input_schema: dict[str, Any]


class ToolCall(BaseModel):
    """One call the model asked for; `arguments_error` is set when its arguments were not a JSON object."""

    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    arguments_error: str | None = None


class ChatMessage(BaseModel):
    """A provider-neutral message: user text, assistant text and/or tool calls, or one tool result."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant", "tool"]
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list, description="assistant only")
    tool_call_id: str | None = Field(None, description="tool only: the call this result answers")
    is_error: bool = Field(False, description="tool only: the result is an error")

    @model_validator(mode="after")
    def _fields_fit_the_role(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("tool messages, and only they, carry a tool_call_id")
        return self


class TokenUsage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0


class ChatTurn(BaseModel):
    """One model answer. stop_reason: end_turn | tool_use | max_tokens | refusal | the vendor's own value."""

    text: str
    tool_calls: list[ToolCall]
    stop_reason: str
    usage: TokenUsage
    model: str


_LOCK = threading.Lock()
_CLIENTS: dict[tuple, Any] = {}  # one SDK client per configuration and process (keep-alive connections)


def clear_clients() -> None:
    """Close and forget the cached SDK clients (tests, key rotation)."""
    with _LOCK:
        clients = list(_CLIENTS.values())
        _CLIENTS.clear()
    for client in clients:
        client.close()


def _arguments(raw: Any) -> tuple[dict[str, Any], str | None]:
    if isinstance(raw, dict):
        return raw, None
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError as exc:
        return {}, f"arguments are not valid JSON ({exc.msg})"
    return (value, None) if isinstance(value, dict) else ({}, "arguments are not a JSON object")


class ChatBlock(Block, ABC):
    """Shared fields and the retry loop of the chat model blocks."""

    _block_schema_capabilities: ClassVar[list[str]] = ["chat"]
    provider: ClassVar[str]

    api_key: SecretStr = Field(description="The vendor's API key.")
    base_url: str | None = Field(default=None,
                                 description="Another endpoint speaking the same API. Unset: the vendor's.")
    model: str = Field(description="The model id.")
    max_tokens: int = Field(default=4096, ge=1, le=200_000, description="Most tokens one answer may have.")
    timeout: float = Field(default=120.0, gt=0, le=900, description="Seconds to wait for one HTTP request.")
    max_retries: int = Field(default=3, ge=0, le=10, description="Retries of a 429, 5xx or timed-out request.")

    def complete(self, system: str, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]) -> ChatTurn:
        """One model turn over the conversation so far, with these tools offered."""
        if not messages:
            raise ValueError("complete() needs at least one message")
        request = self._build(system, list(messages), list(tools))
        key = self.api_key.get_secret_value()
        client = self._client(key)
        with tracing.span("chat", provider=self.provider, model=self.model, messages=len(messages), tools=len(tools)):
            turn = call_with_retries(lambda: self._send(client, request, key), max_retries=self.max_retries,
                                     what=f"{self.provider} {self.model} chat")
            tracing.set_attributes(input_tokens=turn.usage.input_tokens, output_tokens=turn.usage.output_tokens,
                                   stop_reason=turn.stop_reason)
        return turn

    def _client(self, key: str) -> Any:
        cache_key = (type(self).__qualname__, fingerprint(key), self.base_url, self.timeout)
        with _LOCK:
            if cache_key not in _CLIENTS:
                register_secrets([key])  # SDKs log request headers at DEBUG
                _CLIENTS[cache_key] = self._new_client(key)
            return _CLIENTS[cache_key]

    @abstractmethod
    def _new_client(self, key: str) -> Any: ...

    @abstractmethod
    def _build(self, system: str, messages: list[ChatMessage], tools: list[ToolSpec]) -> dict[str, Any]: ...

    @abstractmethod
    def _send(self, client: Any, request: dict[str, Any], key: str) -> ChatTurn: ...


_OPENAI_STOP = {"stop": "end_turn", "tool_calls": "tool_use", "function_call": "tool_use", "length": "max_tokens",
                "content_filter": "refusal"}


class OpenAIChat(ChatBlock):
    """OpenAI's Chat Completions API with function tools, or a compatible endpoint.

    Args:
        api_key: The OpenAI API key.
        model: The chat model, e.g. gpt-5.4-mini.
        base_url: Another endpoint speaking the same API, e.g. 'https://example.test/v1'.
        temperature: Sampling temperature; unset: the model's default (some models accept no other).
        max_tokens: Most tokens one answer may have (the API's max_completion_tokens).

    Example:
        Ask a stored block one question:
        ```python
        from blocks.llm import ChatMessage
        from blocks.llm import OpenAIChat

        llm = OpenAIChat.load("BLOCK_NAME")
        turn = llm.complete("Be brief.", [ChatMessage(role="user", content="Hello")], tools=[])
        ```
    """

    _block_type_name: ClassVar[str] = "OpenAI Chat"
    _documentation_url: ClassVar[str] = "https://platform.openai.com/docs/api-reference/chat/create"
    provider: ClassVar[str] = "openai"

    temperature: float | None = Field(default=None, ge=0, le=2, description="Sampling temperature.")

    def _new_client(self, key: str) -> Any:
        import openai

        return openai.OpenAI(api_key=key, base_url=self.base_url, timeout=self.timeout, max_retries=0)

    def _build(self, system: str, messages: list[ChatMessage], tools: list[ToolSpec]) -> dict[str, Any]:
        wire: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        for m in messages:
            if m.role == "tool":
                wire.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content})
            elif m.role == "assistant" and m.tool_calls:
                wire.append({"role": "assistant", "content": m.content or None, "tool_calls": [
                    {"id": c.id, "type": "function",
                     "function": {"name": wire_tool_name(c.name), "arguments": json.dumps(c.arguments)}}
                    for c in m.tool_calls]})
            else:
                wire.append({"role": m.role, "content": m.content})
        request: dict[str, Any] = {"model": self.model, "messages": wire, "max_completion_tokens": self.max_tokens}
        if self.temperature is not None:
            request["temperature"] = self.temperature
        if tools:
            request["tools"] = [{"type": "function", "function": {
                "name": wire_tool_name(t.name), "description": t.description, "parameters": t.input_schema}}
                for t in tools]
        return request

    def _send(self, client: Any, request: dict[str, Any], key: str) -> ChatTurn:
        import openai

        with map_sdk_errors(openai, "chat", provider=self.provider, secrets=[key]):
            response = client.chat.completions.create(**request)
            choice = response.choices[0]
            calls = []
            for call in choice.message.tool_calls or []:
                if call.type != "function":
                    continue  # custom (free-text) tools are never offered
                arguments, error = _arguments(call.function.arguments)
                calls.append(ToolCall(id=call.id, name=tool_name_from_wire(call.function.name), arguments=arguments,
                                      arguments_error=error))
            usage = response.usage
            return ChatTurn(text=choice.message.content or choice.message.refusal or "", tool_calls=calls,
                            stop_reason=_OPENAI_STOP.get(choice.finish_reason, str(choice.finish_reason)),
                            usage=TokenUsage(input_tokens=usage.prompt_tokens if usage else 0,
                                             output_tokens=usage.completion_tokens if usage else 0),
                            model=response.model)


class AnthropicChat(ChatBlock):
    """Anthropic's Messages API with client tools.

    Args:
        api_key: The Anthropic API key.
        model: The Claude model, e.g. claude-sonnet-4-6.
        base_url: Another endpoint speaking the same API.
        max_tokens: Most tokens one answer may have (required by the API).

    Example:
        Ask a stored block one question:
        ```python
        from blocks.llm import ChatMessage
        from blocks.llm import AnthropicChat

        llm = AnthropicChat.load("BLOCK_NAME")
        turn = llm.complete("Be brief.", [ChatMessage(role="user", content="Hello")], tools=[])
        ```
    """

    _block_type_name: ClassVar[str] = "Anthropic Chat"
    _documentation_url: ClassVar[str] = "https://docs.anthropic.com/en/api/messages"
    provider: ClassVar[str] = "anthropic"

    def _new_client(self, key: str) -> Any:
        import anthropic

        return anthropic.Anthropic(api_key=key, base_url=self.base_url, timeout=self.timeout, max_retries=0)

    def _build(self, system: str, messages: list[ChatMessage], tools: list[ToolSpec]) -> dict[str, Any]:
        wire: list[dict[str, Any]] = []

        def add(role: str, blocks: list[dict[str, Any]]) -> None:
            if not blocks:
                return
            if wire and wire[-1]["role"] == role:  # tool results and a following user text share one message
                wire[-1]["content"].extend(blocks)
            else:
                wire.append({"role": role, "content": blocks})

        for m in messages:
            text = [{"type": "text", "text": m.content}] if m.content else []  # empty text blocks are refused
            if m.role == "tool":
                add("user", [{"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.content,
                              **({"is_error": True} if m.is_error else {})}])
            elif m.role == "assistant":
                add("assistant", text + [{"type": "tool_use", "id": c.id, "name": wire_tool_name(c.name),
                                          "input": c.arguments} for c in m.tool_calls])
            else:
                add("user", text)
        request: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens, "messages": wire}
        if system:
            request["system"] = system
        if tools:
            request["tools"] = [{"name": wire_tool_name(t.name), "description": t.description,
                                 "input_schema": t.input_schema} for t in tools]
        return request

    def _send(self, client: Any, request: dict[str, Any], key: str) -> ChatTurn:
        import anthropic

        with map_sdk_errors(anthropic, "chat", provider=self.provider, secrets=[key]):
            response = client.messages.create(**request)
            text, calls = [], []
            for block in response.content:
                if block.type == "text":
                    text.append(block.text)
                elif block.type == "tool_use":
                    arguments, error = _arguments(block.input)
                    calls.append(ToolCall(id=block.id, name=tool_name_from_wire(block.name), arguments=arguments,
                                          arguments_error=error))
            usage = response.usage
            read, written = usage.cache_read_input_tokens or 0, usage.cache_creation_input_tokens or 0
            return ChatTurn(text="".join(text), tool_calls=calls, stop_reason=str(response.stop_reason),
                            usage=TokenUsage(input_tokens=usage.input_tokens + read + written,
                                             output_tokens=usage.output_tokens),
                            model=response.model)
