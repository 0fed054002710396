"""GitHub operations through PyGithub: create_issue and comment_issue (idempotent), search_code, search_issues,
get_file.

Idempotency: a mutating run appends `<!-- devmesh:idempotency-key=KEY -->` to the body it posts and, before
posting, looks for an issue or comment that already carries it (the repository's newest issues by the same
author, or the issue's newest comments; GitHub's search index lags, so it is not used for this). A run repeated
after a lost answer (timeout, 502) returns the first result instead of posting twice. A plan, made before any
key exists, shows the marker with the placeholder `{idempotency_key}`; otherwise its request is the one sent.

One module per operation family, each holding its inputs and the plan / run / verify / facts functions of the
contract in tasks/ops/base.py (`Operation`), and registering its operations when imported:

    client.py   the PyGithub client, failures mapped once (map_github_errors), the idempotency marker, facts
    fields.py   typed input fields (repository, login, query, ref, path)
    issues.py   github.create_issue, github.comment_issue
    search.py   github.search_code, github.search_issues
    files.py    github.get_file
"""

from tasks.ops.github.client import KEY_PLACEHOLDER, marker, with_marker
from tasks.ops.github.files import GetFileInput
from tasks.ops.github.issues import CommentIssueInput, CreateIssueInput
from tasks.ops.github.search import SearchCodeInput, SearchIssuesInput

__all__ = ["CommentIssueInput", "CreateIssueInput", "GetFileInput", "KEY_PLACEHOLDER", "SearchCodeInput",
           "SearchIssuesInput", "marker", "with_marker"]
