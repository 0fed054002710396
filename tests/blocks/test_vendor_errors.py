"""Each vendor's mapper (blocks/vendor_errors) against the real client library's exceptions: PyGithub, the
Kubernetes client and the openai SDK against the loopback fakes, botocore against moto, httpx against a closed
port. Status and retryability are kept, secrets never reach the message, and both shapes (with, @) behave alike."""

from __future__ import annotations

import socket
import traceback

import boto3
import httpx
import openai
import psycopg
import pytest
from botocore.config import Config
from kubernetes import client as kube_client
from moto import mock_aws
from pydantic import SecretStr

from blocks.errors import (
    AuthFailed,
    ConfigError,
    Conflict,
    InvalidRequest,
    NotFound,
    PermanentError,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    StoreUnavailable,
    TransientError,
)
from blocks.kubernetes import KubernetesConnection
from blocks.postgres import PgVectorStore
from blocks.vendor_errors import (
    map_aws_errors,
    map_github_errors,
    map_httpx_errors,
    map_kube_errors,
    map_postgres_errors,
    map_sdk_errors,
)
from tests.fakes import FakeOpenAI, Fault
from tests.fakes.fixtures import github_connection

CANARY = "sk-CANARY-0123456789abcdefghij"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _text(error: BaseException) -> str:
    return str(error) + repr(error) + "".join(traceback.format_exception(error))


# ---- GitHub (PyGithub against the fake) ----

@pytest.mark.parametrize("status, kind, retryable", [
    (404, NotFound, False), (401, AuthFailed, False), (422, InvalidRequest, False), (502, TransientError, True),
    (429, RateLimited, True)])
def test_github_statuses(github, status, kind, retryable):
    gh = github_connection(github).client()
    github.script(Fault.error(status, f"failed for {github.token}"))
    with pytest.raises(kind) as caught, map_github_errors("get_repo", secrets=[github.token]):
        gh.get_repo("octo/app").id
    assert type(caught.value) is kind and caught.value.status == status
    assert isinstance(caught.value, TransientError) is retryable
    assert caught.value.provider == "github" and str(caught.value).startswith(f"github get_repo: HTTP {status}")
    assert github.token not in _text(caught.value)


def test_github_decorator_and_missing_repository(github):
    gh = github_connection(github).client()

    @map_github_errors("get_repo", secrets=lambda: [github.token])
    def repository(name: str):
        return gh.get_repo(name).id

    assert isinstance(repository("octo/app"), int)
    with pytest.raises(NotFound, match="github get_repo: HTTP 404: Not Found") as caught:
        repository("octo/missing")
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no raw vendor body attached


def test_github_unreachable_is_transient_and_parse_errors_are_opt_out(github):
    from github import Github

    gh = Github(base_url=f"http://127.0.0.1:{_closed_port()}", retry=None, timeout=2)
    with pytest.raises(TransientError, match="connection failed"), map_github_errors("get_repo"):
        gh.get_repo("octo/app").id
    with pytest.raises(KeyError), map_github_errors("sync", unusable=()):
        {}["a bug of ours, not GitHub's answer"]
    with pytest.raises(PermanentError, match="unusable response"), map_github_errors("read"):
        {}["field GitHub did not send"]


# ---- Kubernetes (the official client against the fake) ----

def _apps(cluster) -> kube_client.AppsV1Api:
    return kube_client.AppsV1Api(KubernetesConnection(kubeconfig=cluster.kubeconfig(), request_timeout=5).api_client())


def test_kube_not_found_and_conflict(cluster):
    apps = _apps(cluster)
    with pytest.raises(NotFound, match="kubernetes read: HTTP 404") as caught, map_kube_errors("read"):
        apps.read_namespaced_deployment("absent", "default", _request_timeout=5)
    assert caught.value.status == 404 and not isinstance(caught.value, TransientError)
    cluster.script(Fault.error(409, "the object has been modified"))

    @map_kube_errors("read", secrets=[cluster.token])
    def read():
        return apps.read_namespaced_deployment("absent", "default", _request_timeout=5)

    with pytest.raises(Conflict) as caught:
        read()
    assert caught.value.status == 409 and isinstance(caught.value, TransientError)
    cluster.script(Fault.error(429, "slow down", headers={"Retry-After": "3"}))
    with pytest.raises(RateLimited) as caught:
        read()
    assert caught.value.retry_after == 3 and cluster.token not in _text(caught.value)


def test_kube_unreachable_is_transient():
    configuration = kube_client.Configuration(host=f"http://127.0.0.1:{_closed_port()}")
    configuration.retries = False
    apps = kube_client.AppsV1Api(kube_client.ApiClient(configuration))
    with pytest.raises(TransientError, match="cannot reach the API server"), map_kube_errors("read", timeout=2):
        apps.read_namespaced_deployment("x", "default", _request_timeout=2)


# ---- AWS (boto3 against moto; a closed port for the network) ----

@pytest.fixture
def aws(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEFAKEFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CANARY)
    with mock_aws():
        yield boto3.client("s3", region_name="us-east-1")


def test_aws_missing_bucket_refused_parameters_and_throttling(aws):
    with pytest.raises(NotFound) as caught, map_aws_errors("aws.s3_list", secrets=[CANARY]):
        aws.list_objects_v2(Bucket="no-such-bucket")
    assert caught.value.status == 404 and "NoSuchBucket" in str(caught.value)
    assert str(caught.value).startswith("aws aws.s3_list: ")

    @map_aws_errors("aws.s3_put_object")
    def put(**params):
        return aws.put_object(**params)

    with pytest.raises(InvalidRequest, match="Parameter validation failed"):
        put(Bucket="b", Key=7, Body=b"x")

    from botocore.exceptions import ClientError

    throttled = ClientError({"Error": {"Code": "ThrottlingException", "Message": f"rate for {CANARY}"},
                             "ResponseMetadata": {"HTTPStatusCode": 400, "HTTPHeaders": {"retry-after": "2"}}},
                            "InvokeModel")
    with pytest.raises(RateLimited) as caught, map_aws_errors("embed", provider="bedrock", secrets=[CANARY]):
        raise throttled
    assert caught.value.retry_after == 2 and caught.value.status == 400 and CANARY not in _text(caught.value)
    assert str(caught.value).startswith("bedrock embed: ")


def test_aws_unreachable_and_no_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEFAKEFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CANARY)
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{_closed_port()}",
                      config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=2))
    with pytest.raises(TransientError) as caught, map_aws_errors("aws.s3_list", secrets=[CANARY]):
        s3.list_buckets()
    assert type(caught.value) is TransientError and caught.value.status is None
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    anonymous = boto3.session.Session().client("s3", region_name="us-east-1",
                                               endpoint_url=f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(AuthFailed, match="AWS credentials"), map_aws_errors("aws.s3_list"):
        anonymous.list_buckets()


# ---- the openai / anthropic SDKs (openai against the fake), httpx ----

def test_sdk_statuses_and_scrubbed_key():
    with FakeOpenAI() as fake:
        client = openai.OpenAI(api_key=CANARY, base_url=fake.url + "/v1", max_retries=0, timeout=5)
        with pytest.raises(AuthFailed) as caught, map_sdk_errors(openai, "embed", provider="openai",
                                                                  secrets=[CANARY]):
            client.embeddings.create(input=["x"], model="text-embedding-3-small")
        assert caught.value.status == 401 and CANARY not in _text(caught.value)
        client = openai.OpenAI(api_key=fake.api_key, base_url=fake.url + "/v1", max_retries=0, timeout=5)
        fake.script(Fault.error(429, "slow down", headers={"retry-after": "4"}))
        with pytest.raises(RateLimited) as caught, map_sdk_errors(openai, "embed", provider="openai"):
            client.embeddings.create(input=["x"], model="text-embedding-3-small")
        assert caught.value.retry_after == 4 and str(caught.value) == "openai embed: HTTP 429: slow down"


def test_httpx_unreachable_is_transient_and_devmesh_errors_pass_through():
    with pytest.raises(TransientError, match="voyage embed: connection failed"), \
            map_httpx_errors("embed", provider="voyage"):
        httpx.get(f"http://127.0.0.1:{_closed_port()}/v1/embeddings", timeout=2)
    own = ConfigError("not a vendor's")
    with pytest.raises(ConfigError) as caught, map_httpx_errors("embed", provider="voyage"), \
            map_github_errors("x"), map_aws_errors("x"), map_kube_errors("x"):
        raise own
    assert caught.value is own
    with pytest.raises(ProviderTimeout), map_github_errors("outer"), map_httpx_errors("inner", provider="voyage"):
        raise httpx.ReadTimeout("slow")
    assert issubclass(ProviderTimeout, ProviderError)


# ---- PostgreSQL (psycopg against a dead address and the real server) ----

def test_postgres_a_lost_server_is_store_unavailable_a_statement_error_passes(pool):
    dead = "postgresql://nobody@127.0.0.1:9/none"
    store = PgVectorStore(url=SecretStr(dead))
    with pytest.raises(StoreUnavailable, match="lost the connection") as caught, map_postgres_errors(store):
        psycopg.connect(dead, connect_timeout=2)
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)
    with pytest.raises(psycopg.errors.UndefinedTable), map_postgres_errors(store), pool.connection() as conn:
        conn.execute("SELECT * FROM no_such_table_here")
