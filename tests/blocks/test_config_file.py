"""devmesh.yaml: the guide's production.yaml keys map onto settings, devmesh's own keys work by name, the environment
overrides the file, and every key or value without a meaning is an error naming it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from blocks.errors import ConfigError
from blocks.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# The guide's config/production.yaml, as printed in its "Environment Configuration" section, plus the one line it
# needs here: which embedder block produces its default model.
GUIDE_FILE = """
api:
  mcp_server:
    url: https://mcp.your-domain.com
    timeout: 30
    retry_attempts: 3

  vector_api:
    url: https://vector.your-domain.com
    connection_pool_size: 20

embedding:
  default_model: "text-embedding-3-small"
  models: {text-embedding-3-small: openai-embedder/prod}
  batch_size: 100
  cache_ttl: 3600

security:
  api_key_rotation_days: 90
  encrypt_contexts: true
  audit_logging: true

performance:
  max_context_size_mb: 10
  vector_search_timeout: 5
  concurrent_tool_executions: 5
"""


@pytest.fixture
def config(tmp_path, monkeypatch):
    def write(text: str) -> Path:
        path = tmp_path / "devmesh.yaml"
        path.write_text(text)
        monkeypatch.setenv("DEVMESH_CONFIG", str(path))
        return path

    return write


def test_the_guides_keys_set_the_settings_that_implement_them(config):
    config(GUIDE_FILE)
    s = Settings()
    assert (s.client.base_url, s.client.vector_url) == ("https://mcp.your-domain.com", "https://vector.your-domain.com")
    assert (s.client.timeout_s, s.client.retry_attempts, s.client.pool_size) == (30, 3, 20)
    assert s.embedder == "openai-embedder/prod" and s.embedders == {"text-embedding-3-small": "openai-embedder/prod"}
    assert s.ingest.embed_batch == 100
    assert s.keys.rotation_days == 90 and s.contexts.encrypt is True
    assert s.contexts.max_size_mb == 10 and s.contexts.max_bytes == 10 * 1024 * 1024
    assert s.search.timeout_s == 5 and s.ops.max_concurrent_tools == 5


def test_environment_and_arguments_override_the_file(config, monkeypatch):
    config(GUIDE_FILE + "search: {ef_search: 150}\nkeys: {rotation_grace_hours: 2}\n")
    monkeypatch.setenv("DEVMESH_SEARCH__TIMEOUT_S", "9")
    monkeypatch.setenv("DEVMESH_EMBEDDER", "local")
    s = Settings(pool_max_size=3)
    assert s.search.timeout_s == 9 and s.embedder == "local" and s.pool_max_size == 3
    assert s.search.ef_search == 150 and s.keys.rotation_grace_hours == 2  # devmesh's own names, from the file
    assert s.keys.rotation_days == 90  # the rest of the file still applies


def test_the_shipped_example_loads(monkeypatch):
    monkeypatch.setenv("DEVMESH_CONFIG", str(ROOT / "devmesh.example.yaml"))
    s = Settings()
    assert s.embedder == "local" and s.keys.rotation_days == 90 and s.search.timeout_s == 5


def test_without_a_file_the_defaults_hold(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = Settings()
    assert s.search.timeout_s == 30 and s.keys.rotation_days is None and s.contexts.max_bytes == 50 * 1024 * 1024
    (tmp_path / "devmesh.yaml").write_text("performance: {vector_search_timeout: 2}\n")
    assert Settings().search.timeout_s == 2  # ./devmesh.yaml when DEVMESH_CONFIG is unset


@pytest.mark.parametrize("text, message", [
    ("performance: {vector_search_timeot: 5}\n", "unknown key performance.vector_search_timeot"),
    ("search: {ef_serch: 5}\nfoo: 1\n", "unknown keys foo, search.ef_serch"),
    ("security: {audit_logging: false}\n", "audit_logging must be true"),
    ("embedding: {cache_ttl: -1}\n", "cache_ttl must be a whole number"),
    ("embedding: {default_model: text-embedding-3-small}\n", "map the model under embedding.models"),
    ("embedding: {default_model: claude-3-haiku}\n", "Anthropic has no embeddings API"),
    ("- a list\n", "expected a mapping"),
    ("api: [unclosed\n", "not a readable YAML file"),
])
def test_keys_and_values_without_a_meaning_are_refused_by_name(config, text, message):
    path = config(text)
    with pytest.raises(ConfigError, match=message) as caught:
        Settings()
    assert str(path) in str(caught.value)


def test_a_value_the_setting_refuses_names_the_setting(config):
    config("performance: {vector_search_timeout: -5}\n")
    with pytest.raises(ValidationError, match="search.timeout_s"):
        Settings()


def test_a_named_file_that_is_missing_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DEVMESH_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="no such file"):
        Settings()


def test_the_settings_repr_never_shows_the_database_password():
    from blocks.settings import Settings

    settings = Settings(database_url="postgresql://app:s3cret-pw@db.example:5432/devmesh")
    assert "s3cret-pw" not in repr(settings) and "s3cret-pw" not in str(settings)
    assert settings.database_url.endswith("/devmesh")  # still there for the code that connects
