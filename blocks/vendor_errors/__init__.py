"""Each vendor's client-library exceptions mapped once onto devmesh's error tree (blocks/errors.py), in one shape.

    map_github_errors     PyGithub and requests                 (tasks/ops/github/, flows/sync_repository.py)
    map_kube_errors       kubernetes' ApiException and urllib3   (tasks/ops/kubernetes/)
    map_aws_errors        botocore / boto3                       (tasks/ops/aws.py, blocks/embedders/bedrock.py)
    map_sdk_errors        the openai and anthropic SDKs          (blocks/embedders/openai.py, blocks/llm.py)
    map_httpx_errors      httpx transport failures               (blocks/embedders/voyage.py)
    map_postgres_errors   psycopg: the database as a whole failed (flows/ingest.py's ingest_documents)

Each is a context manager that is also a decorator (contextlib's `@contextmanager` objects are ContextDecorators):

    with map_github_errors("github.create_issue", secrets=conns.secrets):
        gh.get_repo(name).create_issue(...)

    @map_aws_errors("aws.describe", secrets=keys)
    def describe(...): ...

Within, a vendor failure comes out as a ProviderError: a TransientError (RateLimited, ProviderTimeout, Conflict:
retried) or a PermanentError (AuthFailed, NotFound, InvalidRequest, MalformedResponse: never retried), with the
vendor's HTTP status on `.status` when it answered one, every secret masked in the message, and raised `from None`
where the vendor exception holds the raw body and headers (a vendor or a proxy may echo a credential there).
map_postgres_errors is the one exception: the database failing as a whole becomes a StoreUnavailable. devmesh's own
errors pass through unchanged, so mappers nest. `secrets` is an iterable of values or a callable returning them,
called only when a failure is mapped; secrets registered in the process (blocks.redact) are masked too. Each
vendor's library is imported when its mapper is entered, not when this package is: a GitHub operation does not pay
for the Kubernetes client's import.

Written by hand because no library maps these vendors' exceptions to one tree; the statuses' meaning is shared in
blocks.retry.error_for_status.
"""

from blocks.vendor_errors.aws import map_aws_errors
from blocks.vendor_errors.github import PARSE_ERRORS, map_github_errors
from blocks.vendor_errors.http import map_httpx_errors
from blocks.vendor_errors.kubernetes import map_kube_errors
from blocks.vendor_errors.postgres import map_postgres_errors
from blocks.vendor_errors.sdk import map_sdk_errors

__all__ = ["PARSE_ERRORS", "map_aws_errors", "map_github_errors", "map_httpx_errors", "map_kube_errors",
           "map_postgres_errors", "map_sdk_errors"]
