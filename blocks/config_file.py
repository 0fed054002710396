"""devmesh.yaml: the settings file, read by pydantic-settings below the environment (DEVMESH_* variables win).

The file is found at $DEVMESH_CONFIG, else ./devmesh.yaml when it exists. It holds devmesh's own settings by their
nested names (`search: {ef_search: 200}`, `keys: {rotation_grace_hours: 12}`) and the keys of the Developer Mesh
guide's `config/production.yaml`, each mapped onto the setting that implements it (GUIDE_KEYS). A key that is
neither is an error naming it and the file, never silently ignored, and so is a value the setting refuses.

Why a translation: pydantic-settings' YamlConfigSettingsSource reads a file shaped like the settings model, and
the guide's shape (`performance.vector_search_timeout`) groups keys by theme rather than by the component that
owns them (`search.timeout_s`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_settings import BaseSettings, YamlConfigSettingsSource

from blocks.errors import ConfigError

__all__ = ["ENV_VAR", "DEFAULT_FILE", "GUIDE_KEYS", "GuideYamlSource", "config_path"]

ENV_VAR = "DEVMESH_CONFIG"
DEFAULT_FILE = "devmesh.yaml"
# The guide's key → the setting that implements it ("" means: checked here, no setting of its own; see README).
GUIDE_KEYS: dict[str, str] = {
    "api.mcp_server.url": "client.base_url",
    "api.mcp_server.timeout": "client.timeout_s",
    "api.mcp_server.retry_attempts": "client.retry_attempts",
    "api.vector_api.url": "client.vector_url",
    "api.vector_api.connection_pool_size": "client.pool_size",
    "embedding.default_model": "embedder",
    "embedding.models": "embedders",
    "embedding.batch_size": "ingest.embed_batch",
    "embedding.cache_ttl": "",
    "security.api_key_rotation_days": "keys.rotation_days",
    "security.encrypt_contexts": "contexts.encrypt",
    "security.audit_logging": "",
    "performance.max_context_size_mb": "contexts.max_size_mb",
    "performance.vector_search_timeout": "search.timeout_s",
    "performance.concurrent_tool_executions": "ops.max_concurrent_tools",
}
_SECTIONS = {key.split(".", 1)[0] for key in GUIDE_KEYS}
_LOCAL_MODELS = ("all-MiniLM-L6-v2", "all-MiniLM-L6-v2-onnx-int8", "sentence-transformers/all-MiniLM-L6-v2")


def config_path() -> Path | None:
    """The settings file in force: $DEVMESH_CONFIG (which must exist), else ./devmesh.yaml if present."""
    named = os.environ.get(ENV_VAR, "").strip()
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise ConfigError(f"{ENV_VAR}={named}: no such file")
        return path
    default = Path(DEFAULT_FILE)
    return default if default.is_file() else None


class GuideYamlSource(YamlConfigSettingsSource):
    """YamlConfigSettingsSource over the guide's keys and devmesh's own: translated, every key checked."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        self._path, self._model = path, settings_cls
        super().__init__(settings_cls, yaml_file=path)

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            raw = super()._read_file(file_path)
        except Exception as exc:  # yaml.YAMLError, UnicodeDecodeError, OSError: say which file and why
            raise ConfigError(f"{self._path}: not a readable YAML file ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{self._path}: expected a mapping of settings at the top, got {type(raw).__name__}")
        return translate(raw, self._model, str(self._path))


def _flatten(data: dict[str, Any], leaves: set[str], prefix: str = "") -> dict[str, Any]:
    """{"a.b": value} for every leaf; a mapping stays whole where a key or setting takes a mapping."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path not in GUIDE_KEYS and path not in leaves:
            if not value:
                continue
            out.update(_flatten(value, leaves, path + "."))
        else:
            out[path] = value
    return out


def _native_paths(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Every settable dotted path of the settings model (a nested model's fields, not the model itself)."""
    paths: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths.update(_native_paths(annotation, f"{prefix}{name}."))
        else:
            paths[f"{prefix}{name}"] = field
    return paths


def _put(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def _embedder_of(value: Any, models: dict[str, Any], where: str) -> str:
    """embedding.default_model as an embedder name: 'local', a block slug, or a model the file maps to one."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: embedding.default_model must be a non-empty string")
    value = value.strip()
    from blocks.embedders import check_embedding_model  # imports Prefect: only when the key is used

    try:
        check_embedding_model(value)
    except ConfigError as exc:
        raise ConfigError(f"{where}: embedding.default_model: {exc}") from None
    if value == "local" or "/" in value and value not in _LOCAL_MODELS:
        return value
    if value in _LOCAL_MODELS:
        return "local"
    if isinstance(models.get(value), str):
        return models[value]
    raise ConfigError(
        f"{where}: embedding.default_model {value!r} is a model name that nothing here maps to an embedder; give "
        "'local' (the in-process all-MiniLM-L6-v2), an embedder block slug such as 'openai-embedder/prod', or map "
        f"the model under embedding.models (e.g. embedding: {{models: {{{value}: openai-embedder/prod}}}})")


def translate(raw: dict[str, Any], settings_cls: type[BaseModel], where: str) -> dict[str, Any]:
    """The file's values under the settings' own names; ConfigError naming each key that has no meaning."""
    native = _native_paths(settings_cls)
    flat = _flatten(raw, set(native))
    unknown = sorted(k for k in flat if k not in GUIDE_KEYS and k not in native)
    if unknown:
        known = sorted(GUIDE_KEYS) + [f"<setting> ({', '.join(sorted({p.split('.')[0] for p in native}))})"]
        raise ConfigError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                          f"known: {', '.join(known)}")
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        target = GUIDE_KEYS.get(key, key)
        if key == "security.audit_logging":
            if value is not True:
                raise ConfigError(f"{where}: security.audit_logging must be true: every operation is audited "
                                  "(an append-only, hash-chained trail), and that cannot be turned off")
            continue
        if key == "embedding.cache_ttl":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{where}: embedding.cache_ttl must be a whole number of seconds >= 0")
            continue  # accepted for compatibility; README says why it changes nothing
        if key == "embedding.default_model":
            value = _embedder_of(value, flat.get("embedding.models") or {}, where)
        if key in ("api.mcp_server.url", "api.vector_api.url") and isinstance(value, str):
            value = value.rstrip("/")
        _put(tree, target, value)
    return tree
