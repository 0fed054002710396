"""`make audit`: the known vulnerabilities of requirements.lock, each fixed or explained in docs/security.md.

1. pip-audit (PyPI's advisory feed, the per-release JSON API), strict: a package it cannot look up fails the run.
2. Where that API is not served (this workplace's PyPI answers 404 for every /pypi/<name>/<version>/json, which
   plain pip-audit turns into a silent "No known vulnerabilities found"), the same advisories are read from the
   per-project JSON API: it lists the advisories of the newest release, so pins at the newest release are audited
   exactly and the pins held back below it are named as not audited (docs/security.md says why each is held).

Exit 0: no vulnerability outside the accepted list. Exit 1: a vulnerability, or PyPI unreachable (never a pass).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
POLICY = ROOT / "docs" / "security.md"
PYPI = "https://pypi.org/pypi"
TIMEOUT = 30


def accepted_ids(policy: Path = POLICY) -> list[str]:
    """Advisory ids of the table under '## Accepted vulnerabilities' (first column, in backticks)."""
    text = policy.read_text(encoding="utf-8")
    section = text.split("## Accepted vulnerabilities", 1)[1].split("\n## ", 1)[0] if "## Accepted vulnerabilities" \
        in text else ""
    return re.findall(r"^\|\s*`([A-Za-z0-9-]+)`", section, re.M)


def pins(lock: Path = LOCK) -> list[tuple[str, str]]:
    return re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", lock.read_text(encoding="utf-8"), re.M)


def run_pip_audit(ignored: list[str]) -> tuple[int, str]:
    command = [str(Path(sys.executable).with_name("pip-audit")), "-r", str(LOCK), "--disable-pip", "--require-hashes",
               "--strict", "--progress-spinner", "off", "--timeout", str(TIMEOUT)]
    for vuln in ignored:
        command += ["--ignore-vuln", vuln]
    done = subprocess.run(command, capture_output=True, text=True)
    return done.returncode, (done.stdout + done.stderr).strip()


def _project(name: str) -> dict:
    with urllib.request.urlopen(f"{PYPI}/{name}/json", timeout=TIMEOUT) as response:
        return json.load(response)


def project_json_audit(ignored: list[str]) -> int:
    """The fallback: advisories of each pinned project's newest release, from /pypi/<name>/json."""
    locked = pins()
    try:
        with cf.ThreadPoolExecutor(8) as pool:
            projects = list(pool.map(lambda pin: _project(pin[0]), locked))
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        print(f"audit FAILED: PyPI's JSON API is unreachable ({exc}); no audit was done", file=sys.stderr)
        return 1
    found, held = [], []
    for (name, version), project in zip(locked, projects):
        newest = project["info"]["version"]
        if version != newest:
            held.append(f"{name} {version} (newest {newest})")
        for vuln in project.get("vulnerabilities") or []:
            ids = {vuln["id"], *vuln.get("aliases", [])}
            if vuln.get("withdrawn") or ids & set(ignored):
                continue
            scope = "this pin" if version == newest else f"the newest release {newest}, held-back pin {version}"
            found.append(f"{name} {version}: {vuln['id']} ({', '.join(sorted(vuln.get('aliases', [])))}) affects "
                         f"{scope}; fixed in {', '.join(vuln.get('fixed_in') or []) or 'no release yet'}")
    print(f"audited {len(locked) - len(held)} of {len(locked)} pins exactly (pinned at their newest release)")
    if held:
        print(f"NOT AUDITED here: {len(held)} pins held below their newest release (see docs/security.md): "
              + "; ".join(held))
    for line in found:
        print("VULNERABLE: " + line)
    if found:
        print(f"audit FAILED: {len(found)} known vulnerabilities are neither fixed nor accepted in docs/security.md")
        return 1
    print("no known vulnerability outside docs/security.md's accepted list")
    return 0


def per_release_api_missing() -> bool:
    """True when PyPI answers 404 for a release that exists (pip-audit's own, pinned in the lock)."""
    version = dict(pins()).get("pip-audit", "2.10.1")
    try:
        urllib.request.urlopen(f"{PYPI}/pip-audit/{version}/json", timeout=TIMEOUT).close()
    except urllib.error.HTTPError as exc:
        return exc.code == 404
    except (urllib.error.URLError, OSError):
        return False
    return False


def main() -> int:
    ignored = accepted_ids()
    code, output = run_pip_audit(ignored)
    if code == 0:
        print(output)
        return 0
    if "Dependency not found on PyPI" in output and per_release_api_missing():
        print("pip-audit: PyPI's per-release JSON API is not served here (404); using the per-project JSON API")
        return project_json_audit(ignored)
    print(output, file=sys.stderr)
    print("audit FAILED (pip-audit above): fix or accept each finding in docs/security.md", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
