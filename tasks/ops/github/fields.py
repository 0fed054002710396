"""The typed fields of the GitHub operations' inputs: a repository, a login, a label, a search query (no
org:/user: scope), a ref, a file path; and GitHub's `q` with qualifiers lifted into fields, so that the policy
judges the repository a search names."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, StringConstraints

__all__ = ["Label", "Login", "Query", "Ref", "Repo", "check_path", "lift_qualifiers"]

_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})")
_REPO_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
_SCOPE_QUALIFIER = re.compile(r"(?:^|\s)-?(?:repo|org|user|owner):", re.IGNORECASE)


def _check_repo(value: str) -> str:
    owner, sep, name = value.partition("/")
    if not (sep and _NAME.fullmatch(owner) and _REPO_NAME.fullmatch(name) and name not in (".", "..")):
        raise ValueError("must be 'owner/name' (letters, digits, '-', and '.', '_' in the name)")
    return value


def _check_query(value: str) -> str:
    if _SCOPE_QUALIFIER.search(value):
        raise ValueError("scope the search with the `repo` field (or one repo:owner/name qualifier), not "
                         "org:/user:/owner: or negated qualifiers")
    return value


_LIFTED = re.compile(r'(?:^|(?<=\s))(-?)(repo|language|state|is):("[^"]*"|\S+)', re.IGNORECASE)


def lift_qualifiers(data: Any, fields: tuple[str, ...]) -> Any:
    """GitHub's `q` as the guide writes it ("TODO repo:acme/app language:python"): the qualifiers that have a
    field become that field, so that the policy judges the repository named (one repo: qualifier at most)."""
    if not isinstance(data, dict):
        return data
    if "q" in data:
        if "query" in data:
            raise ValueError("give query or q, not both")
        data = {("query" if k == "q" else k): v for k, v in data.items()}
    query = data.get("query")
    if not isinstance(query, str):
        return data
    lifted: dict[str, str] = {}

    def take(match: re.Match) -> str:
        negated, key, value = match.group(1), match.group(2).lower(), match.group(3).strip('"')
        key = "state" if key == "is" and value.lower() in ("open", "closed") else key
        if key not in fields:
            return match.group(0)
        if negated:
            raise ValueError(f"-{key}: cannot be a field; scope the search positively")
        if key in lifted or data.get(key) not in (None, value):
            raise ValueError(f"the search names {key} twice ({data.get(key) or lifted[key]!r} and {value!r})")
        lifted[key] = value.lower() if key == "state" else value
        return ""

    rest = " ".join(_LIFTED.sub(take, query).split())
    return {**data, **lifted, "query": rest}


def check_path(value: str) -> str:
    value = value.strip("/")
    if not value or any(part in ("", ".", "..") for part in value.split("/")) or "\0" in value:
        raise ValueError("must be a relative file path without '.' or '..' segments")
    return value


Repo = Annotated[str, AfterValidator(_check_repo)]
Login = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$")]
Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=50)]
Query = Annotated[str, StringConstraints(min_length=1, max_length=256), AfterValidator(_check_query)]
Ref = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_./@-]+$")]
