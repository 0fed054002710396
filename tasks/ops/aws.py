"""AWS operations through boto3, with credentials from prefect-aws's `AwsCredentials` block (reused as is: it
already holds keys, profiles, assumed roles and client parameters such as an endpoint URL)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any, Literal

from botocore.config import Config
from pydantic import Field, field_validator, model_validator

from blocks.errors import ConfigError, InvalidRequest, MalformedResponse, NotFound
from blocks.vendor_errors import map_aws_errors
from tasks.ops.base import Connections, OpInput, Operation, Plan, register

__all__ = ["S3PutObject", "S3List", "EcsUpdateService", "Describe"]

KEY_META = "devmesh-idempotency-key"
SHA_META = "devmesh-sha256"
READ_CALL = re.compile(r"^(describe|list)_[a-z0-9_]+$|^get_caller_identity$")
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _call(conns: Connections, operation: str, service: str, region: str, method: str, /, **params: Any) -> dict:
    client = _client(conns, service, region)
    with map_aws_errors(operation, secrets=conns.secrets):
        return getattr(client, method)(**params)


def _client(conns: Connections, service: str, region: str):
    creds = conns.aws
    if creds is None:
        raise ConfigError("no AWS credentials block configured")

    def make():
        params = creds.aws_client_parameters.get_params_override() if creds.aws_client_parameters else {}
        params.setdefault("config", Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=10,
                                           read_timeout=30))
        return creds.get_boto3_session().client(service, region_name=region, **params)

    return conns.client(f"aws:{service}:{region}", make)


def _region(conns: Connections, region: str | None) -> str:
    region = region or (conns.aws.region_name if conns.aws is not None else None)
    if not region:
        raise ConfigError("no AWS region: pass `region` or set region_name on the AwsCredentials block")
    return region


def _plain(response: dict) -> dict:
    """A boto3 response as JSON (datetimes as ISO strings, bytes dropped), without ResponseMetadata."""
    response = {k: v for k, v in response.items() if k != "ResponseMetadata"}
    return json.loads(json.dumps(response, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else None))


class _AwsInput(OpInput):
    region: str | None = Field(None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d$", description="Default: the block's region.")


class S3PutObject(_AwsInput):
    bucket: str = Field(..., description="Bucket name.")
    key: str = Field(..., min_length=1, max_length=1024, description="Object key.")
    body: str = Field(..., max_length=5 * 1024 * 1024, description="Text content (UTF-8), or base64 with encoding.")
    encoding: Literal["utf-8", "base64"] = "utf-8"
    content_type: str = Field("text/plain; charset=utf-8", max_length=200)

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str) -> str:
        if not BUCKET.match(v):
            raise ValueError("not a valid S3 bucket name")
        return v

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        if v.startswith("/") or "\x00" in v or any(part == ".." for part in v.split("/")):
            raise ValueError("key must be relative, without '..' segments or NUL")
        return v

    def data(self) -> bytes:
        return base64.b64decode(self.body, validate=True) if self.encoding == "base64" else self.body.encode()


def _head(conns: Connections, op: str, region: str, bucket: str, key: str) -> dict | None:
    try:
        return _call(conns, op, "s3", region, "head_object", Bucket=bucket, Key=key)
    except NotFound:
        return None


def _put_plan(conns: Connections, inp: S3PutObject) -> Plan:
    region, data = _region(conns, inp.region), inp.data()
    sha = hashlib.sha256(data).hexdigest()
    live = _head(conns, "aws.s3_put_object", region, inp.bucket, inp.key)
    if live is None:
        change = f"create s3://{inp.bucket}/{inp.key} ({len(data)} bytes)"
    elif live.get("Metadata", {}).get(SHA_META) == sha:
        change = f"s3://{inp.bucket}/{inp.key} already has this content (no change)"
    else:
        change = f"overwrite s3://{inp.bucket}/{inp.key} ({live.get('ContentLength')} → {len(data)} bytes)"
    return Plan(operation="aws.s3_put_object", target=f"aws:s3:{inp.bucket}/{inp.key}", summary=change,
                request={"call": "s3.put_object", "region": region,
                         "params": {"Bucket": inp.bucket, "Key": inp.key, "ContentType": inp.content_type,
                                    "ContentLength": len(data), "sha256": sha}},
                facts={"region": region, "bucket": inp.bucket, "aws_service": "s3"})


def _put_run(conns: Connections, inp: S3PutObject, key: str) -> dict:
    region, data = _region(conns, inp.region), inp.data()
    sha = hashlib.sha256(data).hexdigest()
    live = _head(conns, "aws.s3_put_object", region, inp.bucket, inp.key)
    if live is not None and live.get("Metadata", {}).get(KEY_META) == key:
        return {"bucket": inp.bucket, "key": inp.key, "etag": live.get("ETag"), "version_id": live.get("VersionId"),
                "replayed": True}
    out = _call(conns, "aws.s3_put_object", "s3", region, "put_object", Bucket=inp.bucket, Key=inp.key, Body=data,
                ContentType=inp.content_type, Metadata={KEY_META: key, SHA_META: sha})
    return {"bucket": inp.bucket, "key": inp.key, "etag": out.get("ETag"), "version_id": out.get("VersionId"),
            "replayed": False}


def _put_verify(conns: Connections, inp: S3PutObject, result: dict) -> dict:
    live = _head(conns, "aws.s3_put_object", _region(conns, inp.region), inp.bucket, inp.key)
    sha = hashlib.sha256(inp.data()).hexdigest()
    if live is None or live.get("Metadata", {}).get(SHA_META) != sha:
        raise MalformedResponse("the object read back does not hold the content written", provider="aws",
                                operation="aws.s3_put_object")
    return {"etag": live.get("ETag"), "size": live.get("ContentLength")}


class S3List(_AwsInput):
    bucket: str
    prefix: str = Field("", max_length=1024)
    max_keys: int = Field(100, ge=1, le=1000)


def _list_plan(conns: Connections, inp: S3List) -> Plan:
    region = _region(conns, inp.region)
    return Plan(operation="aws.s3_list", target=f"aws:s3:{inp.bucket}/{inp.prefix}", mutating=False,
                summary=f"list up to {inp.max_keys} keys of s3://{inp.bucket}/{inp.prefix}",
                request={"call": "s3.list_objects_v2", "region": region,
                         "params": {"Bucket": inp.bucket, "Prefix": inp.prefix, "MaxKeys": inp.max_keys}},
                facts={"region": region, "bucket": inp.bucket, "aws_service": "s3"})


def _list_run(conns: Connections, inp: S3List, key: str) -> dict:
    out = _call(conns, "aws.s3_list", "s3", _region(conns, inp.region), "list_objects_v2", Bucket=inp.bucket,
                Prefix=inp.prefix, MaxKeys=inp.max_keys)
    objects = [{"key": o["Key"], "size": o["Size"], "etag": o.get("ETag"),
                "last_modified": o["LastModified"].isoformat()} for o in out.get("Contents", [])]
    return {"bucket": inp.bucket, "prefix": inp.prefix, "objects": objects, "truncated": out.get("IsTruncated", False)}


class EcsUpdateService(_AwsInput):
    cluster: str = Field(..., min_length=1, max_length=255)
    service: str = Field(..., min_length=1, max_length=255)
    desired_count: int | None = Field(None, ge=0, le=10_000)
    task_definition: str | None = Field(None, min_length=1, max_length=500, description="family:revision or ARN.")

    @model_validator(mode="after")
    def _something(self) -> EcsUpdateService:
        if self.desired_count is None and self.task_definition is None:
            raise ValueError("give desired_count, task_definition or both")
        return self


def _ecs_live(conns: Connections, inp: EcsUpdateService, region: str) -> dict:
    out = _call(conns, "aws.ecs_update_service", "ecs", region, "describe_services", cluster=inp.cluster,
                services=[inp.service])
    services = [s for s in out.get("services", []) if s.get("status") != "INACTIVE"]
    if not services:
        raise NotFound(f"service {inp.service} not found in cluster {inp.cluster}", provider="aws",
                       operation="aws.ecs_update_service")
    return services[0]


def _ecs_plan(conns: Connections, inp: EcsUpdateService) -> Plan:
    region = _region(conns, inp.region)
    live = _ecs_live(conns, inp, region)
    params: dict[str, Any] = {"cluster": inp.cluster, "service": inp.service}
    changes = []
    if inp.desired_count is not None:
        params["desiredCount"] = inp.desired_count
        changes.append(f"-desiredCount: {live.get('desiredCount')}\n+desiredCount: {inp.desired_count}")
    if inp.task_definition is not None:
        params["taskDefinition"] = inp.task_definition
        changes.append(f"-taskDefinition: {live.get('taskDefinition')}\n+taskDefinition: {inp.task_definition}")
    return Plan(operation="aws.ecs_update_service", target=f"aws:ecs:{inp.cluster}/{inp.service}",
                summary=f"update ECS service {inp.cluster}/{inp.service} in {region}",
                request={"call": "ecs.update_service", "region": region, "params": params},
                diff="\n".join(changes),
                facts={"region": region, "service": f"{inp.cluster}/{inp.service}", "aws_service": "ecs",
                       "replicas": inp.desired_count,
                       "current_replicas": live.get("desiredCount") if inp.desired_count is not None else None})


def _ecs_run(conns: Connections, inp: EcsUpdateService, key: str) -> dict:
    # Idempotent by nature: it sets a desired state; a repeat sets the same state again.
    params: dict[str, Any] = {"cluster": inp.cluster, "service": inp.service}
    if inp.desired_count is not None:
        params["desiredCount"] = inp.desired_count
    if inp.task_definition is not None:
        params["taskDefinition"] = inp.task_definition
    out = _call(conns, "aws.ecs_update_service", "ecs", _region(conns, inp.region), "update_service", **params)
    svc = out["service"]
    return {"service_arn": svc.get("serviceArn"), "desired_count": svc.get("desiredCount"),
            "task_definition": svc.get("taskDefinition")}


def _ecs_verify(conns: Connections, inp: EcsUpdateService, result: dict) -> dict:
    live = _ecs_live(conns, inp, _region(conns, inp.region))
    wrong = (inp.desired_count is not None and live.get("desiredCount") != inp.desired_count) or \
        (inp.task_definition is not None and inp.task_definition not in (live.get("taskDefinition") or ""))
    if wrong:
        raise MalformedResponse("the service read back does not have the requested state", provider="aws",
                                operation="aws.ecs_update_service")
    return {"desired_count": live.get("desiredCount"), "running_count": live.get("runningCount")}


class Describe(_AwsInput):
    service: str = Field(..., pattern=r"^[a-z0-9-]{2,40}$", description="boto3 service name, e.g. 'ecs', 'ec2'.")
    call: str = Field(..., description="A describe_* or list_* method (or get_caller_identity).")
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("call")
    @classmethod
    def _read_only(cls, v: str) -> str:
        if not READ_CALL.match(v):
            raise ValueError("only describe_*, list_* and get_caller_identity calls are allowed (read-only)")
        return v


def _describe_plan(conns: Connections, inp: Describe) -> Plan:
    region = _region(conns, inp.region)
    return Plan(operation="aws.describe", target=f"aws:{inp.service}:{region}", mutating=False,
                summary=f"{inp.service}.{inp.call} in {region}",
                request={"call": f"{inp.service}.{inp.call}", "region": region, "params": inp.params},
                facts={"region": region, "aws_service": inp.service})


def _describe_run(conns: Connections, inp: Describe, key: str) -> dict:
    client = _client(conns, inp.service, _region(conns, inp.region))
    if not hasattr(client, inp.call):
        raise InvalidRequest(f"{inp.service} has no call {inp.call}", provider="aws", operation="aws.describe")
    return _plain(_call(conns, "aws.describe", inp.service, _region(conns, inp.region), inp.call, **inp.params))


def _facts(conns: Connections, inp: _AwsInput) -> dict[str, Any]:
    """What the input fixes: the region (given, else the credentials block's configured default: no AWS call),
    the bucket or the ECS service, the desired count."""
    region = inp.region or (conns.aws.region_name if conns.aws is not None else None)
    facts: dict[str, Any] = {"region": region}
    if isinstance(inp, (S3PutObject, S3List)):
        prefix = inp.key if isinstance(inp, S3PutObject) else inp.prefix
        facts.update(bucket=inp.bucket, aws_service="s3", target=f"aws:s3:{inp.bucket}/{prefix}")
    elif isinstance(inp, EcsUpdateService):
        facts.update(service=f"{inp.cluster}/{inp.service}", aws_service="ecs", replicas=inp.desired_count,
                     target=f"aws:ecs:{inp.cluster}/{inp.service}")
    else:
        facts.update(aws_service=inp.service, target=f"aws:{inp.service}:{region}")
    return facts


register(Operation("aws.s3_put_object", "Write a text (or base64) object to S3; idempotent per key.", S3PutObject,
                   _put_plan, _put_run, _put_verify, facts=_facts))
register(Operation("aws.s3_list", "List objects of an S3 bucket under a prefix.", S3List, _list_plan, _list_run,
                   mutating=False, facts=_facts))
register(Operation("aws.ecs_update_service", "Set an ECS service's desired count and/or task definition.",
                   EcsUpdateService, _ecs_plan, _ecs_run, _ecs_verify, facts=_facts))
register(Operation("aws.describe", "Any read-only AWS describe_*/list_* call.", Describe, _describe_plan,
                   _describe_run, mutating=False, facts=_facts))
