"""Hosted embedders through their real client libraries against loopback fakes of the vendors' APIs."""

from __future__ import annotations

import json

import logging
import traceback
import typing
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from email.utils import format_datetime

import numpy as np
import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from prefect_aws import AwsCredentials
from pydantic import ValidationError

from blocks.embedders import check_embedding_model, load_embedder
from blocks import retry as retry_module
from blocks.embedders.bedrock import BedrockEmbedder
from blocks.embedders.hosted import HostedEmbedder, clear_clients, collect_usage
from blocks.embedders.openai import OpenAIEmbedder
from blocks.embedders.pricing import PRICES_PER_MTOK, cost_usd
from blocks.retry import MalformedResponse, error_for_status, parse_retry_after
from blocks.embedders.voyage import VoyageEmbedder
from blocks.errors import AuthFailed, ConfigError, InvalidRequest, ProviderTimeout, RateLimited, TransientError
from tasks.embed import embed_batch, embed_texts
from tasks.usage import record_usage, usage_summary
from tests.fakes import FakeAPI, FakeBedrock, FakeOpenAI, FakeVoyage, Fault, vector

CANARY = "canary-7f3a9c0d51e2-never-log-me"
TEXTS = ["deploy the api to staging", "roll back the payments service", "scale workers to 5", "rotate the tls cert"]


@dataclass
class Case:
    name: str
    api: FakeAPI
    per_text: bool  # Titan: one InvokeModel per text

    def embedder(self, **options) -> HostedEmbedder:
        # Generous: a loaded CI machine took over 0.3 s for a Titan call (a spurious timeout retry); the timeout test
        # sets its own short one.
        options = {"timeout": 5.0, **options}
        if self.name in ("openai", "voyage"):
            options.setdefault("api_key", self.api.api_key)
        if self.name == "openai":
            return OpenAIEmbedder(base_url=f"{self.api.url}/v1", output_dimensions=256, **options)
        if self.name == "voyage":
            return VoyageEmbedder(base_url=self.api.url, output_dimensions=256, **options)
        secret = options.pop("secret", "test-secret")
        credentials = AwsCredentials(aws_access_key_id="AKIATEST", aws_secret_access_key=secret,
                                     region_name="us-east-1")
        model = {"titan": "amazon.titan-embed-text-v2:0", "cohere": "cohere.embed-english-v3"}[self.name]
        dims = {"output_dimensions": 256} if self.name == "titan" else {}
        return BedrockEmbedder(aws_credentials=credentials, model=model, endpoint_url=self.api.url, **dims, **options)

    def calls(self, texts: list[str]) -> int:
        return len(texts) if self.per_text else 1


pytestmark = pytest.mark.usefixtures("slept")  # the retry loop's sleeps recorded, not slept (tests.fakes.fixtures)


@pytest.fixture(scope="module")
def fakes():
    """One fake per vendor for the module, so the cached clients (and their connections) are reused."""
    with FakeOpenAI() as openai, FakeVoyage() as voyage, FakeBedrock() as bedrock:
        yield {"openai": openai, "voyage": voyage, "titan": bedrock, "cohere": bedrock}
    clear_clients()


@pytest.fixture(params=["openai", "voyage", "titan", "cohere"])
def case(request, fakes):
    api = fakes[request.param]
    api.reset()
    return Case(request.param, api, per_text=request.param == "titan")


def test_embed_returns_unit_vectors_in_input_order_and_sends_credentials(case):
    embedder = case.embedder()
    vectors = embedder.embed(TEXTS)
    assert vectors.shape == (4, embedder.dimensions) and vectors.dtype == np.float32
    expected = np.array([vector(t, embedder.dimensions) for t in TEXTS])
    np.testing.assert_allclose(vectors, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-6)
    assert len(case.api.requests) == case.calls(TEXTS)
    seen = case.api.requests[0]
    if case.name in ("openai", "voyage"):
        assert seen.headers["authorization"] == f"Bearer {case.api.api_key}"
        assert seen.body.get("dimensions", seen.body.get("output_dimension")) == 256
    else:
        assert seen.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIATEST/")
        assert case.api.model_of(seen) == embedder.model
    if case.name == "titan":
        assert sorted(r.body["inputText"] for r in case.api.requests) == sorted(TEXTS)
        assert seen.body["dimensions"] == 256 and seen.body["normalize"] is True
    if case.name == "cohere":
        assert seen.body == {"texts": TEXTS, "input_type": "search_document", "truncate": "END"}


def test_usage_is_recorded_with_list_price_cost_and_drained_once(case):
    embedder = case.embedder()
    embedder.embed(TEXTS)
    usages = embedder.drain_usage()
    assert len(usages) == 1 and embedder.drain_usage() == []
    usage = usages[0]
    assert (usage.provider, usage.model, usage.texts) == (embedder.provider, embedder.model, 4)
    assert usage.estimated is (case.name == "cohere")  # Cohere on Bedrock reports no token count
    if not usage.estimated:
        assert usage.tokens == sum(len(t.split()) for t in TEXTS)
    assert usage.cost_usd == PRICES_PER_MTOK[embedder.model] * usage.tokens / 1_000_000 > 0


def test_rate_limit_waits_the_retry_after_then_succeeds(case, slept):
    case.api.script(Fault.error(429, "slow down", headers={"Retry-After": "7"}))
    assert case.embedder().embed(TEXTS).shape[0] == 4
    assert slept == [7.0]
    assert len(case.api.requests) == case.calls(TEXTS) + 1


def test_server_error_then_success_backs_off_with_jitter(case, slept):
    case.api.script(Fault.error(500))
    case.embedder().embed(TEXTS)
    assert len(slept) == 1 and 0.25 <= slept[0] <= 0.5
    assert len(case.api.requests) == case.calls(TEXTS) + 1


def test_timeout_then_success(case, slept):
    case.api.script(Fault.slow(1.0))
    assert case.embedder(timeout=0.3).embed(TEXTS).shape[0] == 4
    assert len(slept) == 1 and len(case.api.requests) == case.calls(TEXTS) + 1


def test_bad_request_is_not_retried(case, slept):
    case.api.script(Fault.error(400, "input is invalid"))
    with pytest.raises(InvalidRequest, match="input is invalid"):
        case.embedder().embed(TEXTS)
    # no retry; a per-text provider (Titan) may stop sending the other texts once one call failed
    assert slept == [] and 1 <= len(case.api.requests) <= case.calls(TEXTS)
    assert len({json.dumps(r.body, sort_keys=True, default=str) for r in case.api.requests}) == len(case.api.requests)


def test_retries_stop_after_max_retries(case, slept):
    case.api.script(*[Fault.error(503)] * 3)
    with pytest.raises(TransientError):
        case.embedder(max_retries=2).embed(TEXTS[:1])
    assert len(slept) == 2 and len(case.api.requests) == 3


@pytest.mark.parametrize(
    "fault, message",
    [(Fault.malformed(), "JSON"), (Fault.missing(), "embedding|data"), (Fault.fewer(), "3 vectors for 4 texts"),
     (Fault.wrong_dim(128), "expected (256|1024) dimensions, got 128")],
    ids=["malformed", "missing", "fewer", "wrong-dim"],
)
def test_unusable_bodies_are_clear_permanent_errors(case, slept, fault, message):
    if case.per_text and fault.kind == "fewer":
        message = "embedding"  # Titan answers one vector per call: a short answer lacks it
    case.api.script(fault)
    with pytest.raises(MalformedResponse, match=message):
        case.embedder().embed(TEXTS)
    assert slept == []


def test_secrets_never_reach_messages_logs_or_repr(case, caplog):
    caplog.set_level(logging.DEBUG)
    http = case.name in ("openai", "voyage")
    # HTTP fakes echo the key in error bodies (OpenAI's 401 does, masked). SigV4 never sends AWS's secret key,
    # so Bedrock's check is that neither we nor botocore (at DEBUG, where it logs bodies) write it anywhere.
    echo = CANARY if http else "the caller"
    if http:
        embedder = case.embedder(api_key=CANARY)  # the fake expects another key: 401, echoing it
    else:
        embedder = case.embedder(secret=CANARY)
        case.api.script(Fault.error(403, f"{echo} is not authorized to perform: bedrock:InvokeModel"))
    with pytest.raises(AuthFailed) as caught:
        embedder.embed(TEXTS[:1])
    case.api.api_key = CANARY  # now accepted; the retry loop logs a 500 that echoes it
    case.api.script(Fault.error(500, f"upstream failed for {echo}"))
    embedder.embed(TEXTS[:1])
    leaks = [str(caught.value), repr(caught.value), "".join(traceback.format_exception(caught.value)),
             repr(embedder), str(embedder), embedder.model_dump_json(), caplog.text, repr(embedder.drain_usage())]
    assert "retry 1 of 3" in caplog.text
    assert not [text for text in leaks if CANARY in text]


def test_queries_use_the_query_input_type():
    with FakeVoyage() as voyage, FakeBedrock() as bedrock:
        Case("voyage", voyage, False).embedder().embed_queries(["where is the runbook"])
        Case("cohere", bedrock, False).embedder().embed_queries(["where is the runbook"])
    assert voyage.requests[0].body["input_type"] == "query"
    assert bedrock.requests[0].body["input_type"] == "search_query"


def test_openai_splits_5000_texts_into_3_requests():
    with FakeOpenAI() as api:
        vectors = embed_texts(Case("openai", api, False).embedder(timeout=30), [f"text {i}" for i in range(5000)])
    assert [len(r.body["input"]) for r in api.requests] == [2048, 2048, 904]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_openai_splits_by_the_300k_token_budget():
    with FakeOpenAI() as api:
        Case("openai", api, False).embedder(timeout=30).embed(["x" * 1500] * 1000)  # ~501 estimated tokens each
    sizes = [len(r.body["input"]) for r in api.requests]
    assert sum(sizes) == 1000 and len(sizes) == 2 and max(sizes) * 501 <= 300_000


def test_voyage_splits_at_1000_texts_and_by_model_token_limit():
    with FakeVoyage(shuffle=True) as api:  # answers out of order: the client sorts by index
        embedder = Case("voyage", api, False).embedder(timeout=30)
        texts = [f"text {i}" for i in range(2100)]
        vectors = embedder.embed(texts)
        np.testing.assert_allclose(vectors[1234], vector(texts[1234], 256), atol=1e-6)
        assert [len(r.body["input"]) for r in api.requests] == [1000, 1000, 100]
        api.requests.clear()
        code = VoyageEmbedder(api_key=api.api_key, base_url=api.url, model="voyage-code-3", output_dimensions=256)
        code.embed(["y" * 1200] * 600)
        assert [len(r.body["input"]) for r in api.requests] == [299, 299, 2]  # 120K tokens at ~401 each


def test_cohere_splits_at_96_texts_and_uses_bedrock_token_header():
    with FakeBedrock(token_header=True) as api:
        embedder = Case("cohere", api, False).embedder()
        assert embedder.embed([f"text number {i}" for i in range(200)]).shape == (200, 1024)
    assert [len(r.body["texts"]) for r in api.requests] == [96, 96, 8]
    assert [u.estimated for u in embedder.drain_usage()] == [False] * 3


def test_titan_fans_out_one_text_per_call_with_bounded_concurrency():
    with FakeBedrock() as api:
        api.latency = 0.02
        texts = [f"text {i}" for i in range(24)]
        vectors = Case("titan", api, True).embedder(max_workers=4).embed(texts)
    assert len(api.requests) == 24 and 2 <= api.max_in_flight <= 4
    np.testing.assert_allclose(vectors[17], vector(texts[17], 256), atol=1e-6)


@pytest.mark.parametrize(
    "headers, seconds",
    [({"Retry-After": "3"}, 3.0), ({"retry-after-ms": "1500", "Retry-After": "9"}, 1.5), ({}, None),
     ({"Retry-After": "soon"}, None)],
)
def test_parse_retry_after(headers, seconds):
    assert parse_retry_after(headers) == seconds


def test_retry_after_as_http_date_and_capped_at_60_seconds(slept):
    when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=120), usegmt=True)
    assert 118 <= parse_retry_after({"Retry-After": when}) <= 120
    attempts = iter([RateLimited("busy", provider="p", operation="o", retry_after=600.0)])

    def flaky() -> str:
        for error in attempts:
            raise error
        return "ok"

    assert retry_module.call_with_retries(flaky, max_retries=1) == "ok"
    assert slept == [60.0]


@pytest.mark.parametrize(
    "status, kind",
    [(429, RateLimited), (500, TransientError), (503, TransientError), (408, ProviderTimeout), (400, InvalidRequest),
     (404, InvalidRequest), (422, InvalidRequest), (401, AuthFailed), (403, AuthFailed)],
)
def test_status_codes_map_to_the_error_tree(status, kind):
    assert type(error_for_status(status, "m", provider="p")) is kind


@pytest.mark.parametrize("name", ["claude-3-5-sonnet", "anthropic/claude-3-haiku",
                                  "anthropic.claude-3-5-sonnet-20240620-v1:0",
                                  "us.anthropic.claude-3-7-sonnet-20250219-v1:0"])
def test_anthropic_models_are_refused_with_the_way_out(name):
    with pytest.raises(ConfigError, match=r"Anthropic has no embeddings API \(model '.*'\); use Voyage AI"):
        load_embedder(name)
    assert check_embedding_model("voyage-3.5") == "voyage-3.5"


def test_dimension_options_are_validated_and_name_the_model():
    assert OpenAIEmbedder(api_key="k", output_dimensions=512).model_id == "openai/text-embedding-3-small@512"
    assert OpenAIEmbedder(api_key="k", model="text-embedding-3-large").model_id == "openai/text-embedding-3-large"
    assert BedrockEmbedder(output_dimensions=512).model_id == "bedrock/amazon.titan-embed-text-v2:0@512"
    for bad in [lambda: OpenAIEmbedder(api_key="k", output_dimensions=2048),
                lambda: OpenAIEmbedder(api_key="k", model="text-embedding-ada-002", output_dimensions=512),
                lambda: BedrockEmbedder(model="cohere.embed-english-v3", output_dimensions=256),
                lambda: VoyageEmbedder(api_key="k", output_dimensions=300)]:
        with pytest.raises(ValidationError):
            bad()


def test_every_model_a_block_accepts_has_a_list_price():
    for block in (OpenAIEmbedder, BedrockEmbedder, VoyageEmbedder):
        for model in typing.get_args(block.model_fields["model"].annotation):
            assert cost_usd(model, 1_000_000) == PRICES_PER_MTOK[model] > 0
    assert cost_usd("text-embedding-3-small", 1_000_000) == Decimal("0.02")
    with pytest.raises(ConfigError, match="no list price"):
        cost_usd("mystery-model", 1)


def test_usage_is_summed_per_tenant_and_model(pool, tenant):
    with FakeBedrock() as api:
        cohere = Case("cohere", api, False).embedder()
        cohere.embed(TEXTS)
        cohere.embed(TEXTS[:2])
        assert record_usage(pool, tenant, cohere.drain_usage()) == 2
    with FakeOpenAI() as api:
        openai = Case("openai", api, False).embedder()
        openai.embed(TEXTS)
        record_usage(pool, tenant, openai.drain_usage())
        record_usage(pool, tenant, [])
    rows = {row["model"]: row for row in usage_summary(pool, tenant)}
    assert rows["cohere.embed-english-v3"]["calls"] == 2 and rows["cohere.embed-english-v3"]["texts"] == 6
    assert rows["cohere.embed-english-v3"]["estimated"] is True
    small = rows["text-embedding-3-small"]
    assert (small["tokens"], small["estimated"]) == (sum(len(t.split()) for t in TEXTS), False)
    assert small["cost_usd"] == Decimal("0.02") * small["tokens"] / 1_000_000
    assert usage_summary(pool, tenant + "-other") == []


def test_collect_usage_gathers_the_calls_of_its_context_and_of_tasks_it_submits(prefect_harness, fakes):
    from prefect import flow
    from prefect.task_runners import ThreadPoolTaskRunner

    fakes["openai"].reset()
    embedder = Case("openai", fakes["openai"], False).embedder()
    embedder.embed(TEXTS[:1])  # outside any collector

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def ingest_like() -> list:
        with collect_usage() as usages:
            futures = [embed_batch.submit(embedder, TEXTS[:2]), embed_batch.submit(embedder, TEXTS[2:])]
            assert [future.result().shape for future in futures] == [(2, 256)] * 2
        return usages

    usages = ingest_like()
    assert sorted(u.texts for u in usages) == [2, 2] and all(u.model == "text-embedding-3-small" for u in usages)
    assert len(embedder.drain_usage()) == 3


def test_blocks_register_with_prefect_and_load_by_slug(prefect_harness):
    from prefect.testing.cli import invoke_and_assert

    for module, name in [("openai", "OpenAI Embedder"), ("bedrock", "Bedrock Embedder"), ("voyage", "Voyage Embedder")]:
        invoke_and_assert(["block", "register", "-m", f"blocks.embedders.{module}"], expected_output_contains=name,
                          echo=False)
    OpenAIEmbedder(api_key=CANARY, output_dimensions=512).save("test-providers", overwrite=True)
    loaded = load_embedder("openai-embedder/test-providers")
    assert isinstance(loaded, OpenAIEmbedder) and loaded.model_id == "openai/text-embedding-3-small@512"
    assert loaded.api_key.get_secret_value() == CANARY and CANARY not in repr(loaded)


class _Standards(BlockStandardTestSuite):
    test_has_a_valid_image = None  # no logo: the check downloads it, and tests reach no network


class TestOpenAIEmbedderStandards(_Standards):
    @pytest.fixture
    def block(self):
        return OpenAIEmbedder


class TestBedrockEmbedderStandards(_Standards):
    @pytest.fixture
    def block(self):
        return BedrockEmbedder


class TestVoyageEmbedderStandards(_Standards):
    @pytest.fixture
    def block(self):
        return VoyageEmbedder
