"""Fixtures every test may use (a pytest plugin, registered by tests/conftest.py): the fake GitHub and Kubernetes
servers as most operation tests want them, the connections that reach them, and the retry loop's sleeps recorded
instead of slept.

A module gives the fake GitHub its own token by overriding `github_token`, and adds issues or files by overriding
`github` with a fixture that requests `github` (pytest hands it this one) and adds to it.
"""

from __future__ import annotations

import pytest

from blocks import retry as retry_module
from blocks.github import GitHubConnection
from blocks.kubernetes import KubernetesConnection
from tasks.ops.base import Connections
from tests.fakes.github_server import FakeGitHub
from tests.fakes.kubernetes_server import FakeKubernetes

__all__ = ["github_connection", "github_connections", "kubernetes_connections"]

GITHUB_TOKEN = "ghp_CANARY0123456789abcdefghijklmnop"  # a canary: tests check it reaches no log, error or audit


@pytest.fixture
def github_token() -> str:
    """The token the fake GitHub accepts (and the connections send)."""
    return GITHUB_TOKEN


@pytest.fixture
def github(github_token):
    """A fake GitHub with the repositories octo/app (the policies' allowed one) and evil/app (a refused one)."""
    with FakeGitHub(token=github_token) as fake:
        fake.add_repo("octo/app")
        fake.add_repo("evil/app")
        yield fake


@pytest.fixture
def cluster():
    """A fake Kubernetes API server (empty; tests load what they need)."""
    with FakeKubernetes() as fake:
        yield fake


@pytest.fixture
def slept(monkeypatch) -> list[float]:
    """The retry loop's sleeps (blocks.retry), recorded instead of slept."""
    sleeps: list[float] = []
    monkeypatch.setattr(retry_module, "sleep", sleeps.append)
    return sleeps


def github_connection(fake: FakeGitHub, token: str | None = None, timeout: float = 2) -> GitHubConnection:
    """A GitHubConnection to `fake`, with its token (or `token`) and no pauses between requests."""
    return GitHubConnection(base_url=fake.url, token=fake.token if token is None else token, timeout=timeout,
                            seconds_between_requests=0, seconds_between_writes=0)


def github_connections(fake: FakeGitHub, token: str | None = None) -> Connections:
    return Connections(github=github_connection(fake, token))


def kubernetes_connections(fake: FakeKubernetes) -> Connections:
    return Connections(kubernetes=KubernetesConnection(kubeconfig=fake.kubeconfig(), request_timeout=5))
