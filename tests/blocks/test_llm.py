"""Chat blocks through the official SDKs against strict fakes of OpenAI's and Anthropic's APIs; the tool catalog's
provider converters."""

from __future__ import annotations

import json
import logging
import re
import traceback
from dataclasses import dataclass

import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite

from blocks.errors import AuthFailed, InvalidRequest, ProviderTimeout
from blocks.llm import AnthropicChat, ChatBlock, ChatMessage, OpenAIChat, ToolCall, clear_clients, wire_tool_name
from tasks.tools import list_tools, to_anthropic, to_openai, tool_name_from_provider
from tests.fakes import FakeAnthropic, FakeOpenAIChat, Fault

OPENAI_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
TOOLS = list_tools(["memory.search", "github.create_issue", "github.search_issues"])
HELLO = [ChatMessage(role="user", content="hello")]


@dataclass
class Case:
    name: str
    api: FakeOpenAIChat | FakeAnthropic

    def llm(self, **options) -> ChatBlock:
        options = {"api_key": self.api.api_key, "timeout": 2, **options}
        if self.name == "openai":
            return OpenAIChat(base_url=f"{self.api.url}/v1", model="gpt-test", **options)
        return AnthropicChat(base_url=self.api.url, model="claude-test", **options)

    def system(self, body: dict) -> str | None:
        if self.name == "openai":
            first = body["messages"][0]
            return first["content"] if first["role"] == "system" else None
        return body.get("system")


pytestmark = pytest.mark.usefixtures("slept")  # the retry loop's sleeps recorded, not slept (tests.fakes.fixtures)


@pytest.fixture(scope="module")
def fakes():
    with FakeOpenAIChat() as openai, FakeAnthropic() as anthropic:
        yield {"openai": openai, "anthropic": anthropic}
    clear_clients()


@pytest.fixture(params=["openai", "anthropic"])
def case(request, fakes):
    api = fakes[request.param]
    api.reset()
    return Case(request.param, api)


# --- tool catalog ------------------------------------------------------------------------------------------------


def test_every_tool_name_fits_openai_and_maps_back():
    tools = list_tools()
    assert {"memory.search", "github.create_issue", "kubernetes.apply", "aws.s3_list"} <= {t.name for t in tools}
    for converted, name_of in ((to_openai(tools), lambda d: d["function"]["name"]),
                               (to_anthropic(tools), lambda d: d["name"])):
        names = [name_of(d) for d in converted]
        assert all(OPENAI_PATTERN.match(n) for n in names), names
        assert [tool_name_from_provider(n) for n in names] == [t.name for t in tools]
    assert all(d["function"]["parameters"]["type"] == "object" for d in to_openai(tools))
    assert all(d["input_schema"]["type"] == "object" for d in to_anthropic(tools))


def test_tool_flags_and_allowlist():
    by_name = {t.name: t for t in list_tools()}
    assert by_name["memory.search"].read_only and by_name["github.search_issues"].read_only
    assert not by_name["github.create_issue"].read_only and not by_name["kubernetes.scale"].read_only
    assert [t.name for t in list_tools(["github.get_file", "memory.search"])] == ["github.get_file", "memory.search"]
    with pytest.raises(Exception, match="unknown tools"):
        list_tools(["github.delete_everything"])


@pytest.mark.parametrize("name", ["a__b", "a_.b", "a._b", "x" * 70, "bad name", ""])
def test_names_that_would_not_map_back_are_refused(name):
    with pytest.raises(ValueError):
        wire_tool_name(name)


# --- the blocks --------------------------------------------------------------------------------------------------


def test_plain_answer_with_usage_model_and_credentials(case):
    case.api.reply_text("Hi there", usage=(12, 3))
    turn = case.llm().complete("Be brief.", HELLO, [])
    assert (turn.text, turn.tool_calls, turn.stop_reason) == ("Hi there", [], "end_turn")
    assert (turn.usage.input_tokens, turn.usage.output_tokens) == (12, 3)
    assert turn.model.startswith("gpt-test" if case.name == "openai" else "claude-test")
    seen = case.api.requests[0]
    body = seen.body
    assert case.system(body) == "Be brief." and "tools" not in body
    if case.name == "openai":
        assert seen.headers["authorization"] == f"Bearer {case.api.api_key}"
        assert body["messages"][1] == {"role": "user", "content": "hello"} and body["max_completion_tokens"] == 4096
    else:
        assert case.api.api_key in (seen.headers.get("x-api-key"), seen.headers.get("authorization", "")[7:])
        assert seen.headers["anthropic-version"] and body["max_tokens"] == 4096
        assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]


def test_several_tool_calls_then_results_in_each_wire_format(case):
    case.api.reply_tools([("memory.search", {"query": "oom"}), ("github.search_issues", {"query": "oom"})],
                         text="Looking.")
    case.api.reply_text("Found it.")
    llm = case.llm()
    first = llm.complete("sys", HELLO, TOOLS)
    assert first.stop_reason == "tool_use" and first.text == "Looking."
    assert [(c.name, c.arguments) for c in first.tool_calls] == [("memory.search", {"query": "oom"}),
                                                                 ("github.search_issues", {"query": "oom"})]
    history = [*HELLO, ChatMessage(role="assistant", content=first.text, tool_calls=first.tool_calls),
               ChatMessage(role="tool", tool_call_id=first.tool_calls[0].id, content='{"hits": []}'),
               ChatMessage(role="tool", tool_call_id=first.tool_calls[1].id, content="boom", is_error=True)]
    assert llm.complete("sys", history, TOOLS).text == "Found it."
    body = case.api.bodies()[1]
    ids = [c.id for c in first.tool_calls]
    if case.name == "openai":
        assert [t["function"]["name"] for t in body["tools"]] == ["github__create_issue", "github__search_issues",
                                                                  "memory__search"]
        assistant, *results = body["messages"][2:]
        assert [c["function"]["name"] for c in assistant["tool_calls"]] == ["memory__search", "github__search_issues"]
        assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"query": "oom"}
        assert [(m["role"], m["tool_call_id"]) for m in results] == [("tool", ids[0]), ("tool", ids[1])]
    else:
        assert [t["name"] for t in body["tools"]] == ["github__create_issue", "github__search_issues",
                                                      "memory__search"]
        assistant, results = body["messages"][1:]
        assert [b["type"] for b in assistant["content"]] == ["text", "tool_use", "tool_use"]
        assert assistant["content"][1]["input"] == {"query": "oom"}
        assert results["role"] == "user"
        assert [(b["type"], b["tool_use_id"], b.get("is_error", False)) for b in results["content"]] == [
            ("tool_result", ids[0], False), ("tool_result", ids[1], True)]


def test_an_unanswered_tool_call_is_refused_by_the_fake_like_the_api(case, slept):
    call = ToolCall(id="call_1", name="memory.search", arguments={"query": "x"})
    history = [*HELLO, ChatMessage(role="assistant", tool_calls=[call]), ChatMessage(role="user", content="and?")]
    with pytest.raises(InvalidRequest, match="tool_result|tool messages"):
        case.llm().complete("sys", history, TOOLS)
    assert slept == [] and len(case.api.requests) == 1


def test_arguments_that_are_not_json_are_flagged_not_raised(fakes):
    api = fakes["openai"]
    api.reset()
    api.reply_tools([("memory.search", '{"query": "oo')])
    call = Case("openai", api).llm().complete("sys", HELLO, TOOLS).tool_calls[0]
    assert call.arguments == {} and "not valid JSON" in call.arguments_error


def test_rate_limit_waits_the_retry_after_then_succeeds(case, slept):
    case.api.script(Fault.error(429, "slow down", headers={"retry-after": "3"}))
    case.api.reply_text("ok")
    assert case.llm().complete("sys", HELLO, []).text == "ok"
    assert slept == [3.0] and len(case.api.requests) == 2


def test_server_error_and_timeout_are_retried(case, slept):
    case.api.script(Fault.error(529 if case.name == "anthropic" else 503, "overloaded"), Fault.slow(1.0))
    case.api.reply_text("ok")
    assert case.llm(timeout=0.3).complete("sys", HELLO, []).text == "ok"
    assert len(slept) == 2 and len(case.api.requests) == 3


def test_bad_request_and_timeouts_without_retries_left(case, slept):
    case.api.script(Fault.error(400, "messages: bad"))
    with pytest.raises(InvalidRequest, match="messages: bad"):
        case.llm().complete("sys", HELLO, [])
    assert slept == [] and len(case.api.requests) == 1
    case.api.script(Fault.slow(1.0))
    with pytest.raises(ProviderTimeout):
        case.llm(timeout=0.3, max_retries=0).complete("sys", HELLO, [])


def test_the_api_key_never_reaches_errors_or_logs(case, caplog, slept):
    caplog.set_level(logging.DEBUG)
    canary = f"sk-CANARY-{case.name}-0123456789abcdef"
    with pytest.raises(AuthFailed) as failed:  # the fakes echo the key they got, as OpenAI does
        case.llm(api_key=canary).complete("sys", HELLO, [])
    rendered = "".join(traceback.format_exception(failed.value))
    assert "HTTP 401" in str(failed.value)
    for sink in (str(failed.value), rendered, caplog.text):
        assert canary not in sink
    assert slept == []


class _Standards(BlockStandardTestSuite):
    test_has_a_valid_image = None  # no logo: the check downloads it, and tests reach no network


class TestOpenAIChatStandards(_Standards):
    @pytest.fixture
    def block(self):
        return OpenAIChat


class TestAnthropicChatStandards(_Standards):
    @pytest.fixture
    def block(self):
        return AnthropicChat
