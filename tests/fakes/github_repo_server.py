"""FakeGitHub with commits: branch heads, commit snapshots, compare, git trees, pull requests in the issue list,
and the repository-wide comment list (`GET /repos/{o}/{r}/issues/comments?since=`).

`commit(repo, {path: text | bytes | None})` makes a commit on a branch (None deletes the path) and returns its sha;
the contents API then answers at that sha and at the branch name. `parent=` starts from another commit (a force
push when the branch moves to a commit that does not descend from its old head).
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from typing import Any

from tests.fakes.github_server import FakeGitHub
from tests.fakes.server import Response, Seen

__all__ = ["FakeGitHubRepo", "blob_sha"]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def blob_sha(data: bytes) -> str:
    """Git's blob sha of `data` (what the contents and trees APIs answer)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeGitHubRepo(FakeGitHub):
    """FakeGitHub plus commits, compare, trees, pull requests and the repository-wide comment list."""

    def _clear(self) -> None:
        super()._clear()
        self.commits: dict[str, dict[str, Any]] = {}  # sha -> {"repo", "parent", "files", "tree", "message"}
        self.heads: dict[tuple[str, str], str] = {}  # (repo, branch) -> sha

    # --- state ---------------------------------------------------------------------------------------------------

    def commit(self, repo: str, changes: dict[str, str | bytes | None], *, branch: str = "main",
               parent: str | None = None, message: str = "change") -> str:
        """Commit `changes` on `branch` (on top of `parent`, default the branch head); returns the commit sha."""
        with self._state:
            key = (repo.lower(), branch)
            parent = parent or self.heads.get(key)
            files = dict(self.commits[parent]["files"]) if parent else {}
            for path, text in changes.items():
                if text is None:
                    files.pop(path.strip("/"), None)
                else:
                    files[path.strip("/")] = text.encode() if isinstance(text, str) else text
            seed = f"{parent}:{len(self.commits)}:{sorted((p, blob_sha(d)) for p, d in files.items())}"
            sha = hashlib.sha1(seed.encode()).hexdigest()
            tree = hashlib.sha1(f"tree:{sha}".encode()).hexdigest()
            self.commits[sha] = {"repo": repo.lower(), "parent": parent, "files": files, "tree": tree,
                                 "message": message}
            self.heads[key] = sha
            stored = self._repo(repo)["files"]
            stored[sha] = stored[branch] = files
            return sha

    def add_pull(self, repo: str, title: str, body: str = "", *, merged: bool = False) -> dict[str, Any]:
        """Store a pull request as the issues API lists it (an issue with a `pull_request` key)."""
        with self._state:
            stored = self._repo(repo)
            issue = self._new_issue(stored, {"title": title, "body": body}, self.login)
            full, number = stored["json"]["full_name"], issue["number"]
            issue["html_url"] = f"{self.url}/{full}/pull/{number}"
            issue["pull_request"] = {"url": f"{self.url}/repos/{full}/pulls/{number}",
                                     "html_url": issue["html_url"], "diff_url": f"{issue['html_url']}.diff",
                                     "patch_url": f"{issue['html_url']}.patch",
                                     "merged_at": _now() if merged else None}
            if merged:
                issue.update(state="closed", closed_at=_now())
            return self._public(issue)

    # --- HTTP ------------------------------------------------------------------------------------------------------

    def _route(self, seen: Seen, path: str, params: dict[str, str], login: str) -> Response:
        m = re.fullmatch(r"/repos/([^/]+/[^/]+)(/.*)", path)
        if seen.method == "GET" and m and m.group(1).lower() in self.repos:
            repo, rest = m.group(1).lower(), m.group(2)
            if rest == "/issues/comments":
                return self._all_comments(seen, repo, params)
            if c := re.fullmatch(r"/commits/(.+)", rest):
                if not any(commit["repo"] == repo for commit in self.commits.values()):
                    return self._fail(409, "Git Repository is empty.")
                sha = self._resolve(repo, c.group(1))
                return self._reply(200, self._commit_json(repo, sha)) if sha else self._fail(
                    422, f"No commit found for SHA: {c.group(1)}")
            if c := re.fullmatch(r"/compare/(.+)\.\.\.(.+)", rest):
                return self._compare(repo, c.group(1), c.group(2))
            if t := re.fullmatch(r"/git/trees/([^/]+)", rest):
                return self._tree(repo, t.group(1), params.get("recursive") not in (None, "", "0", "false"))
        return super()._route(seen, path, params, login)

    def _resolve(self, repo: str, ref: str) -> str | None:
        """A commit sha for a branch name, a commit sha or a tree sha of `repo`."""
        if (repo, ref) in self.heads:
            return self.heads[(repo, ref)]
        if ref in self.commits and self.commits[ref]["repo"] == repo:
            return ref
        return next((s for s, c in self.commits.items() if c["tree"] == ref and c["repo"] == repo), None)

    def _api(self, repo: str) -> str:
        return self.repos[repo]["json"]["url"]

    def _commit_json(self, repo: str, sha: str) -> dict[str, Any]:
        commit, api = self.commits[sha], self._api(repo)
        person = {"name": self.login, "email": f"{self.login}@example.com", "date": _now()}
        parents = [{"sha": commit["parent"], "url": f"{api}/commits/{commit['parent']}"}] if commit["parent"] else []
        return {"sha": sha, "node_id": f"C_{sha[:12]}", "url": f"{api}/commits/{sha}",
                "html_url": f"{self.url}/{self.repos[repo]['json']['full_name']}/commit/{sha}",
                "commit": {"message": commit["message"], "author": person, "committer": person,
                           "tree": {"sha": commit["tree"], "url": f"{api}/git/trees/{commit['tree']}"}},
                "parents": parents, "files": []}

    def _ancestors(self, sha: str | None) -> list[str]:
        chain = []
        while sha:
            chain.append(sha)
            sha = self.commits[sha]["parent"]
        return chain

    def _compare(self, repo: str, base_ref: str, head_ref: str) -> Response:
        base, head = self._resolve(repo, base_ref), self._resolve(repo, head_ref)
        if base is None or head is None:
            return self._fail(404, "Not Found")
        base_line, head_line = self._ancestors(base), self._ancestors(head)
        merge_base = next((s for s in head_line if s in base_line), None)
        if merge_base is None:
            return self._fail(404, f"No common ancestor between {base_ref} and {head_ref}.")
        status = ("identical" if base == head else "ahead" if merge_base == base else
                  "behind" if merge_base == head else "diverged")
        old, new = self.commits[merge_base]["files"], self.commits[head]["files"]
        files = []
        for path in sorted(set(old) | set(new)):
            if old.get(path) == new.get(path):
                continue
            state = "added" if path not in old else "removed" if path not in new else "modified"
            files.append({"filename": path, "status": state, "sha": blob_sha(new.get(path, old.get(path))),
                          "additions": 0, "deletions": 0, "changes": 0})
        for added in [f for f in files if f["status"] == "added"]:  # same content removed elsewhere: a rename
            gone = next((f for f in files if f["status"] == "removed" and f["sha"] == added["sha"]), None)
            if gone:
                files.remove(gone)
                added.update(status="renamed", previous_filename=gone["filename"])
        api = self._api(repo)
        return self._reply(200, {
            "url": f"{api}/compare/{base_ref}...{head_ref}", "status": status,
            "ahead_by": head_line.index(merge_base), "behind_by": base_line.index(merge_base),
            "total_commits": head_line.index(merge_base), "base_commit": self._commit_json(repo, base),
            "merge_base_commit": self._commit_json(repo, merge_base),
            "commits": [self._commit_json(repo, s) for s in reversed(head_line[:head_line.index(merge_base)])],
            "files": files})

    def _tree(self, repo: str, ref: str, recursive: bool) -> Response:
        sha = self._resolve(repo, ref)
        if sha is None:
            return self._fail(404, "Not Found")
        commit, api = self.commits[sha], self._api(repo)
        entries, dirs = [], set()
        for path, data in sorted(commit["files"].items()):
            parts = path.split("/")
            if len(parts) > 1 and not recursive:
                dirs.add(parts[0])
                continue
            dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
            entries.append({"path": path, "mode": "100644", "type": "blob", "sha": blob_sha(data), "size": len(data),
                            "url": f"{api}/git/blobs/{blob_sha(data)}"})
        entries += [{"path": d, "mode": "040000", "type": "tree", "sha": hashlib.sha1(d.encode()).hexdigest(),
                     "url": f"{api}/git/trees/{d}"} for d in sorted(dirs)]
        return self._reply(200, {"sha": commit["tree"], "url": f"{api}/git/trees/{commit['tree']}",
                                 "tree": sorted(entries, key=lambda e: e["path"]), "truncated": False})

    def _all_comments(self, seen: Seen, repo: str, params: dict[str, str]) -> Response:
        api = self._api(repo)
        rows = [c for c in self._comments.values() if c["issue_url"].startswith(api + "/issues/")]
        if since := params.get("since"):
            rows = [c for c in rows if c["updated_at"] >= since]
        key = "updated_at" if params.get("sort") == "updated" else "created_at"
        rows.sort(key=lambda c: (c[key], c["id"]), reverse=params.get("direction") == "desc")
        return self._paged(seen, params, [self._public(c) for c in rows])
