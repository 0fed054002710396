"""github.get_file: read one UTF-8 text file of at most MAX_FILE_BYTES (a directory, a binary or a larger file is
an InputError naming it)."""

from __future__ import annotations

import urllib.parse
from typing import Annotated, Any

from pydantic import AfterValidator, Field, StringConstraints

from blocks.errors import InputError
from tasks.ops.base import Connections, OpInput, Operation, Plan, register
from tasks.ops.github.client import client, github_errors, owner_of, repo_facts
from tasks.ops.github.fields import Ref, Repo, check_path

__all__ = ["GET_FILE", "GetFileInput", "MAX_FILE_BYTES"]

MAX_FILE_BYTES = 1_048_576  # get_file refuses larger files (the contents API inlines at most 1 MiB)
GET_FILE = "github.get_file"


class GetFileInput(OpInput):
    """Read one UTF-8 text file of at most 1 MiB."""

    repo: Repo = Field(description="owner/name")
    path: Annotated[str, StringConstraints(max_length=1024), AfterValidator(check_path)]
    ref: Ref | None = Field(default=None, description="branch, tag or commit sha; unset: the default branch")


def plan_get_file(conns: Connections, inp: GetFileInput) -> Plan:
    params = {"ref": inp.ref} if inp.ref else {}
    return Plan(operation=GET_FILE, target=f"github:{inp.repo}",
                summary=f"Read {inp.path} of {inp.repo} at {inp.ref or 'the default branch'}.",
                request={"method": "GET", "path": f"/repos/{inp.repo}/contents/{urllib.parse.quote(inp.path)}",
                         "params": params, "json": None},
                facts={"repo": inp.repo, "owner": owner_of(inp.repo), "path": inp.path, "ref": inp.ref},
                mutating=False)


def run_get_file(conns: Connections, inp: GetFileInput, key: str = "") -> dict[str, Any]:
    item = f"{inp.repo}:{inp.path}"
    with github_errors(conns, GET_FILE):
        repo = client(conns).get_repo(inp.repo)
        found = repo.get_contents(inp.path, **({"ref": inp.ref} if inp.ref else {}))
        if isinstance(found, list):
            raise InputError("is a directory, not a file", item=item)
        if found.type != "file":
            raise InputError(f"is a {found.type}, not a file", item=item)
        if found.size > MAX_FILE_BYTES or found.encoding != "base64":
            raise InputError(f"is {found.size} bytes; get_file reads at most {MAX_FILE_BYTES}", item=item)
        data = found.decoded_content
        result = {"repo": inp.repo, "path": found.path, "ref": inp.ref, "sha": found.sha, "size": found.size,
                  "html_url": found.html_url}
    if b"\0" in data:
        raise InputError("is a binary file", item=item)
    try:
        return {**result, "text": data.decode("utf-8")}
    except UnicodeDecodeError:
        raise InputError("is not UTF-8 text", item=item) from None


register(Operation(GET_FILE, "Read one UTF-8 text file (at most 1 MiB) from a GitHub repository.", GetFileInput,
                   plan=plan_get_file, run=run_get_file, mutating=False, facts=repo_facts))
