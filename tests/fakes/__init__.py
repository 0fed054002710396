"""Fake provider APIs on loopback that speak the vendors' wire formats; scriptable, and they record requests."""

from tests.fakes.bedrock_server import FakeBedrock
from tests.fakes.chat_server import FakeAnthropic, FakeOpenAIChat
from tests.fakes.github_server import FakeGitHub
from tests.fakes.kubernetes_server import FakeKubernetes
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.server import Fault, FakeAPI, Seen, vector
from tests.fakes.voyage_server import FakeVoyage

__all__ = ["FakeAPI", "FakeAnthropic", "FakeBedrock", "FakeOpenAIChat", "FakeGitHub", "FakeKubernetes", "FakeOpenAI", "FakeVoyage", "Fault", "Seen", "vector"]
