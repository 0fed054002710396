"""Settings: the non-secret knobs of devmesh, read from DEVMESH_* environment variables and, below them, from the
settings file devmesh.yaml (blocks/config_file.py: $DEVMESH_CONFIG or ./devmesh.yaml; the guide's keys too)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = ["AdmissionSettings", "AuditSettings", "ChunkSettings", "SearchSettings", "IngestSettings", "OpsSettings",
           "GatewaySettings", "TracingSettings", "TenancySettings", "KeySettings", "ContextSettings", "ClientSettings",
           "Settings"]


class ChunkSettings(BaseModel):
    """How documents are cut into chunks (sizes in model tokens)."""

    size: int = Field(256, ge=16, le=8192, description="Target chunk size in model tokens.")
    overlap: int = Field(32, ge=0, description="Overlap between neighbouring chunks in model tokens.")
    conversation: Literal["turns", "windows"] = Field(
        "turns", description="How context messages are indexed: each message its own chunk (turns), or whole "
        "messages packed into chunks of `size` tokens with `overlap` (windows).")

    @field_validator("overlap")
    @classmethod
    def _overlap_below_size(cls, v: int, info) -> int:
        size = info.data.get("size", 256)
        if v >= size:
            raise ValueError(f"overlap ({v}) must be smaller than size ({size})")
        return v


class SearchSettings(BaseModel):
    """Ranking knobs for vector, keyword and hybrid search."""

    fusion: Literal["convex", "rrf"] = Field(
        "convex", description="Hybrid fusion: convex (weighted mean of min-max normalised scores, tasks/fusion.py) "
        "or rrf (Reciprocal Rank Fusion).")
    rrf_k: int = Field(60, ge=1, description="Reciprocal Rank Fusion constant k.")
    # Weights and turn re-scoring chosen on the LoCoMo development conversations (docs/locomo.md).
    vector_weight: float = Field(0.3, ge=0, description="Weight of the vector ranking in hybrid fusion (relative).")
    keyword_weight: float = Field(0.7, ge=0, description="Weight of the BM25 ranking in hybrid fusion (relative).")
    turn_neighbour_weight: float = Field(
        0.4, ge=0, description="Hybrid search of conversation turns: share of the best neighbouring turn's score.")
    turn_window: int = Field(2, ge=0, le=20, description="Turns on each side whose mean score a turn gains.")
    turn_window_weight: float = Field(3.0, ge=0, description="Weight of that mean in a turn's hybrid score.")
    speaker_boost: float = Field(
        0.6, ge=0, description="Added to the hybrid score of turns by the one speaker a query names.")
    bm25_k1: float = Field(0.9, gt=0, description="BM25 term-frequency saturation.")
    bm25_b: float = Field(0.4, ge=0, le=1, description="BM25 length normalisation.")
    ef_search: int = Field(100, ge=1, le=1000, description="HNSW candidate list size at query time.")
    candidates: int = Field(50, ge=1, le=1000, description="Rows each ranking contributes to hybrid fusion.")
    max_scan_tuples: int = Field(20000, ge=1, description="Cap of pgvector iterative scans for filtered search.")
    postings_cache_mb: int = Field(
        64, ge=0, le=65536, description="BM25 postings segments kept decoded in each process, in MiB (0: none); "
        "a segment is immutable, so a hit is exact (tasks/postings.py).")
    timeout_s: float | None = Field(
        30.0, gt=0, le=3600, description="Longest a search's ranking query may run (PostgreSQL statement_timeout); "
        "past it the search fails with SearchTimeout (HTTP 504). None: unbounded. "
        "devmesh.yaml: performance.vector_search_timeout.")


class IngestSettings(BaseModel):
    """Limits of the ingest pipeline."""

    max_file_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Larger files are refused.")
    embed_batch: int = Field(64, ge=1, le=100_000, description="Texts per embedding step of an ingest (one task run, "
                             "one tick of the progress bar); providers split it further into their own request "
                             "limits. devmesh.yaml: embedding.batch_size.")
    store_batch: int = Field(2000, ge=1, description="Chunks per store transaction.")
    workers: int = Field(2, ge=1, le=32, description="Bound of the flow's task runner thread pool.")
    index_memory_mb: int | None = Field(
        None, ge=64, le=1048576, description="Most maintenance_work_mem (MB) an index build asks of the server. "
        "Unset: a quarter of this machine's RAM for the embedded server, 1024 for an external one.")


class OpsSettings(BaseModel):
    """Guarded operations: which blocks hold the policy and the credentials, and how the guard waits and retries."""

    policy_block: str = Field("devmesh-policy", description="Name of the OperationPolicy block.")
    github_block: str = Field("devmesh-github", description="Name of the GitHubConnection block.")
    kubernetes_block: str = Field("devmesh-kubernetes", description="Name of the KubernetesConnection block.")
    aws_block: str = Field("devmesh-aws", description="Name of the prefect-aws AwsCredentials block.")
    approval_poll_s: int = Field(1, ge=1, le=300, description="How often a paused run checks for a decision (a read "
                                 "of its own state: cheap; an approved run resumes within about this).")
    max_retries: int = Field(4, ge=0, le=20, description="Retries of a transient provider failure.")
    max_concurrent_tools: int = Field(
        5, ge=1, le=1000, description="Most tool executions (guarded operations) running at once; the cap is a "
        "Prefect global concurrency limit. devmesh.yaml: performance.concurrent_tool_executions.")
    max_concurrent_tools_per_tenant: int = Field(
        3, ge=1, le=1000, description="Most of those slots one tenant may hold at once (at most max_concurrent_tools): "
        "a Prefect global concurrency limit per tenant, taken together with the cap, so one tenant cannot keep "
        "the others out.")
    slot_api_timeout_s: float = Field(
        10.0, gt=0, le=600, description="How long a tool-slot request bears with an unavailable Prefect API (503, "
        "no answer, refused) before the step fails with a TransientError; waiting for a busy slot is not counted.")


class GatewaySettings(BaseModel):
    """The webhook gateway / REST API process."""

    host: str = Field("127.0.0.1", description="Bind address; loopback unless you put a proxy in front.")
    port: int = Field(8787, ge=1, le=65535)
    webhook_block: str = Field("devmesh-github-webhook", description="Name of the GitHubWebhook block.")
    routes_file: Path | None = Field(None, description="prefect.yaml whose triggers route events (default: the repo's).")
    # Small batches keep the event loop free: 200 per POST raised the gateway's p99 from 83 to 110 ms at 500/s.
    emit_batch: int = Field(50, ge=1, le=5000, description="Events per POST to the Prefect API.")
    emit_interval_s: float = Field(0.5, gt=0, le=60, description="Longest wait before pending events are sent.")
    retry_interval_s: float = Field(5.0, gt=0, le=600, description="Wait after the Prefect API refused or was down.")
    metrics_token: SecretStr | None = Field(
        None, description="When set, GET /metrics needs `Authorization: Bearer <token>` (its labels name tenants); "
        "unset or empty: open, for a gateway bound to loopback or behind a proxy that guards /metrics. Leading and "
        "trailing whitespace is not part of the token (HTTP trims it from header values)."
    )

    mcp_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Host header values the MCP endpoint accepts (DNS-rebinding protection), "
        "comma-separated; `name:*` allows any port. Empty: loopback names and the bind host, any port.")
    mcp_allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origin header values the MCP endpoint accepts, comma-separated "
        "(`http://name:*` allows any port); a request without Origin passes. Empty: http(s) on loopback names and "
        "the bind host.")
    header_timeout_s: float = Field(5.0, gt=0, le=300, description="Time a client has to send a request's line and "
                                    "headers from its first byte (or from connecting): then 408 and the connection "
                                    "closes (slowloris).")
    body_timeout_s: float = Field(30.0, gt=0, le=3600, description="Time a client has to send a request's body once "
                                  "its headers are in: then 408 and the connection closes.")
    request_deadline_s: float = Field(60.0, gt=0, le=3600, description="Longest a request may take to be answered: "
                                      "then 504 `deadline_exceeded` naming the request id (the work may still "
                                      "finish; check before retrying a write).")

    @field_validator("mcp_allowed_hosts", "mcp_allowed_origins", mode="before")
    @classmethod
    def _comma_separated(cls, v):
        return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v

    @field_validator("metrics_token")
    @classmethod
    def _blank_token_is_unset(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return None
        token = v.get_secret_value().strip()
        return SecretStr(token) if token else None


class AdmissionSettings(BaseModel):
    """Who gets in, how often: per-key rate limits, the failed-authentication lockout, registrations per address,
    and which proxies may name the client (tasks/ratelimit.py, deployments/admission.py; docs/security.md)."""

    rate_per_minute: int = Field(1000, ge=1, le=10_000_000, description="Token refill of a key without its own.")
    burst: int = Field(3000, ge=1, le=10_000_000, description="Bucket capacity of a key without its own.")
    max_failures: int = Field(10, ge=1, le=1_000_000, description="Failed authentications from one address (within "
                              "failure_window_s, decaying) that lock it out.")
    failure_window_s: float = Field(60, gt=0, le=86400, description="The window of max_failures.")
    lockout_s: float = Field(300, gt=0, le=86400, description="How long a locked address is refused new keys.")
    trusted_for_s: float = Field(86400, ge=0, le=90 * 86400, description="A key that authenticated from an address "
                                 "within this time is still admitted there while the address is locked out.")
    register_rate_per_minute: int = Field(10, ge=1, le=1_000_000, description="Organization registrations per "
                                          "client address (each costs a 16 MiB scrypt).")
    register_burst: int = Field(5, ge=1, le=1_000_000)
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Addresses or networks (CIDR) of the reverse proxies whose forwarded "
        "header names the client, comma-separated; empty (the default): the peer address is the client, and "
        "forwarded headers are ignored.")
    forwarded_header: Literal["x-forwarded-for", "forwarded"] = Field(
        "x-forwarded-for", description="The header your proxy sets (and overwrites): X-Forwarded-For or RFC 7239 "
        "Forwarded. Only this one is read.")

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split(cls, v):
        return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for entry in v:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network (CIDR)") from None
        return v


class AuditSettings(BaseModel):
    """The audit trail's signing key and where checkpoints of its head are kept (tasks/audit.py)."""

    key_block: str = Field("devmesh-audit-key", min_length=1, description="Prefect Secret block holding the Ed25519 "
                           "signing key (created on first use; `devmesh up` creates it at start-up).")
    checkpoint_file: Path | None = Field(None, description="Append-only file of signed checkpoints of the trail's "
                                         "head, written by each successful verify (default <home>/audit-checkpoints"
                                         ".jsonl). Keep it where the database's administrators cannot write.")


class TracingSettings(BaseModel):
    """OpenTelemetry traces of flows, tasks and provider calls (blocks/tracing.py); off by default."""

    exporter: Literal["none", "console", "otlp"] = Field(
        "none", description="none: no tracer provider, spans are no-ops; console: JSON spans on stderr; "
        "otlp: OTLP/HTTP protobuf to `endpoint`."
    )
    endpoint: str | None = Field(
        None, description="OTLP/HTTP traces URL, e.g. http://127.0.0.1:4318/v1/traces. Unset: the exporter's own "
        "default (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT, else localhost:4318)."
    )
    headers: SecretStr | None = Field(
        None, description="Headers sent to the collector, 'name=value,name2=value2' (an API key: kept secret; "
        "checked by blocks.tracing, whose error never repeats the text)."
    )
    service_name: str = Field("devmesh", min_length=1, max_length=200, description="The resource's service.name.")
    timeout_s: float = Field(10.0, gt=0, le=120, description="Seconds the exporter waits for the collector.")


class TenancySettings(BaseModel):
    """Who may register an organization, which tenant ids nobody can claim, and how fast webhook bindings and
    secrets changed elsewhere reach the gateway (tasks/claims.py, tasks/webhook_bindings.py)."""

    registration: Literal["open", "invite", "closed"] = Field(
        "open", description="open: anyone may register an organization; invite: only with a one-time token an "
        "operator minted (`devmesh orgs invite`); closed: nobody (the operator's tenants only)."
    )
    reserved_slugs: list[str] = Field(
        default_factory=list, description="Tenant ids nobody may register, on top of the built-in list "
        "(default, admin, system, root, devmesh, api, www, operator, ...) and the operator's own tenants."
    )
    webhook_cache_s: float = Field(
        5.0, ge=0, le=300, description="How long the gateway keeps webhook secrets and its GitHubWebhook block "
        "before reading them again: a rotated secret is accepted within this time, without a restart (0: read "
        "them for every delivery)."
    )


class KeySettings(BaseModel):
    """Lifetime of API keys."""

    rotation_days: int | None = Field(
        None, ge=1, le=3650, description="New keys expire this many days after they are issued (a key presented "
        "after that gets 401 saying it expired); rotate before then. None: keys do not expire. "
        "devmesh.yaml: security.api_key_rotation_days.")
    rotation_grace_hours: float = Field(
        24.0, ge=0, le=720, description="After a rotation the old key keeps working this long, so that every "
        "agent can switch to its successor; 0 revokes it at once.")


class ContextSettings(BaseModel):
    """Defaults of new conversation contexts (a request may set its own), and the caps of one append (REST, MCP,
    Memory): an append is chunked and embedded while its request waits, so its size bounds the request's time
    (10,000 messages took 236 s on two cores)."""

    max_append_messages: int = Field(500, ge=1, le=10_000, description="Messages per append; more: 422 naming it.")
    max_append_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024,
                                  description="UTF-8 bytes of message content per append; more: 422 naming it.")

    max_size_mb: float = Field(50.0, gt=0, le=1 << 20, description="Largest a context may grow: its messages' "
                               "content plus its metadata, in MiB. devmesh.yaml: performance.max_context_size_mb.")
    encrypt: bool = Field(False, description="Encrypt new contexts' messages at rest with the key in the Secret "
                          "block `key_name` (blocks/cipher.py). devmesh.yaml: security.encrypt_contexts.")
    key_name: str = Field("devmesh-context-key", min_length=1, max_length=200,
                          description="Secret block holding the Fernet key of encrypted contexts.")

    @property
    def max_bytes(self) -> int:
        return int(self.max_size_mb * 1024 * 1024)


class ClientSettings(BaseModel):
    """How the guide's Python clients (devops_mcp) reach the API when their arguments do not say."""

    base_url: str = Field("http://localhost:8787/api/v1", min_length=1,
                          description="The API's base URL. devmesh.yaml: api.mcp_server.url.")
    vector_url: str | None = Field(None, description="The vector API's base URL (default: base_url). "
                                   "devmesh.yaml: api.vector_api.url.")
    timeout_s: float = Field(30.0, gt=0, le=3600, description="Seconds per request. "
                             "devmesh.yaml: api.mcp_server.timeout.")
    retry_attempts: int = Field(4, ge=0, le=20, description="Retries of a 429, a 5xx or a lost connection, where "
                                "a retry cannot act twice. devmesh.yaml: api.mcp_server.retry_attempts.")
    pool_size: int = Field(20, ge=1, le=1000, description="HTTP connections a client keeps open at most. "
                           "devmesh.yaml: api.vector_api.connection_pool_size.")


class Settings(BaseSettings):
    """All devmesh settings; build once at the entry point and pass it down."""

    model_config = SettingsConfigDict(env_prefix="DEVMESH_", env_nested_delimiter="__", extra="ignore")

    database_url: str | None = Field(
        None, repr=False, description="PostgreSQL URL. Unset: an embedded PostgreSQL under home/pgdata. Left out of "
        "repr(): it may hold a password, and a failing assertion or a log line prints the settings."
    )
    home: Path = Field(Path(".devmesh"), description="Where embedded data lives.")
    prefect_database: Literal["postgres", "sqlite"] = Field(
        "postgres", description="Where the Prefect server of `devmesh up` keeps its state: 'postgres' (a `prefect` "
        "database in the embedded PostgreSQL; with DEVMESH_DATABASE_URL set, give PREFECT_SERVER_DATABASE_"
        "CONNECTION_URL, else SQLite is used) or 'sqlite' (Prefect's default file under home/prefect).")
    tenant: str = Field("default", min_length=1, max_length=128, description="Default tenant id.")
    embedder: str = Field(
        "local", description="Embedder: 'local' (in-process MiniLM) or a block slug such as 'openai-embedder/prod'."
    )
    embedders: dict[str, str] = Field(
        default_factory=dict, description="Embedding models a client may name (POST /contexts/{id}/embeddings, "
        "search `model`) → the embedder producing each ('local' or a block slug); the configured `embedder` "
        "needs no entry. devmesh.yaml: embedding.models.")
    pool_max_size: int = Field(8, ge=1, le=256, description="Connections in the pool.")
    chunk: ChunkSettings = ChunkSettings()
    search: SearchSettings = SearchSettings()
    ingest: IngestSettings = IngestSettings()
    ops: OpsSettings = OpsSettings()
    contexts: ContextSettings = ContextSettings()
    gateway: GatewaySettings = GatewaySettings()
    tracing: TracingSettings = TracingSettings()
    tenancy: TenancySettings = TenancySettings()
    audit: AuditSettings = AuditSettings()
    admission: AdmissionSettings = AdmissionSettings()
    keys: KeySettings = KeySettings()
    contexts: ContextSettings = ContextSettings()
    client: ClientSettings = ClientSettings()

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource):
        """Arguments, then DEVMESH_* variables, then devmesh.yaml, then the defaults."""
        from blocks.config_file import GuideYamlSource, config_path

        path = config_path()
        file = (GuideYamlSource(settings_cls, path),) if path is not None else ()
        return (init_settings, env_settings, dotenv_settings, file_secret_settings, *file)

    @field_validator("tracing", mode="wrap")
    @classmethod
    def _tracing_off_when_invalid(cls, value, handler):
        """A bad DEVMESH_TRACING__* setting is tracing off, not an error: importing blocks already warned, naming
        the variable (blocks/tracing.py configure_from_environment), and no process fails over its traces."""
        try:
            return handler(value)
        except ValidationError:
            return TracingSettings()
