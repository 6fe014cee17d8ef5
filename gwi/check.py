"""``gwi check``: which platforms and which store can be used now, and the exact fix for the rest
(what ``sky check`` does for SkyPilot's clouds).

Per platform profile: its credentials (where each was found: the environment, ``~/.kaggle/kaggle.json``,
Lambda's key file; never a value), then, once they are there, one live call under a short deadline
(the API answers; GPU types and capacity where the API says). For the store: its credentials
(boto3's chain: environment, shared files, a profile, an instance role) and a real write, read and
delete of a small object. Each adapter says what it checks (:meth:`Adapter.credentials_found`,
:meth:`Adapter.probe`); this module only asks them all, side by side, within the deadline.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .adapters.base import Finding, Profile, get_adapter
from .errors import GwiError


@dataclass
class Section:
    """What was found for one platform or the store."""

    name: str
    kind: str  # the adapter's name, or "store"
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.findings) and all(f.ok for f in self.findings)

    def as_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "ok": self.ok,
                "findings": [{"ok": f.ok, "what": f.what, "fix": f.fix} for f in self.findings]}


def check_platform(profile: Profile, deadline_s: float) -> Section:
    s = Section(profile.name, profile.adapter)
    try:
        adapter = get_adapter(profile)
        s.findings = adapter.credentials_found()
        if all(f.ok for f in s.findings):
            s.findings += adapter.probe(deadline_s)
    except GwiError as e:
        s.findings.append(Finding(False, str(e), f"fix {profile.path}"))
    if not s.findings:
        s.findings.append(Finding(True, "nothing to set up"))
    return s


def store_credentials(url: str) -> list[Finding]:
    """Where the AWS credentials for an s3:// store come from (boto3's chain), never what they are."""
    if not url.startswith("s3://"):
        return []
    import boto3

    creds = boto3.Session().get_credentials()
    if creds is None:
        return [Finding(False, "no AWS credentials for the store",
                        "export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... (and AWS_ENDPOINT_URL for a "
                        "non-AWS S3), or aws configure, or AWS_PROFILE=NAME")]
    return [Finding(True, f"AWS credentials from {getattr(creds, 'method', None) or 'the default chain'}")]


def check_store(url: str, deadline_s: float) -> Section:
    """A real round trip: put, get and delete a small object under ``.gwi-check/``."""
    from .store import open_store

    s = Section(url, "store", store_credentials(url))
    if not all(f.ok for f in s.findings):
        return s
    key = f".gwi-check/{uuid.uuid4().hex}"
    t0 = time.monotonic()
    try:
        store = open_store(url, patience=0)
        store.put_bytes(key, b"gwi check")
        same = store.get_bytes(key) == b"gwi check"
        store.delete(key)
    except (GwiError, OSError) as e:
        s.findings.append(Finding(False, f"cannot write to {url}: {e}",
                                  "check the URL, the credentials' rights on it and the endpoint (AWS_ENDPOINT_URL)"))
        return s
    took = time.monotonic() - t0
    s.findings.append(Finding(same, f"writable: put, get and delete in {took * 1000:.0f} ms" if same else
                              "an object read back differs from what was written", "" if same else
                              "the endpoint is not a consistent S3 store"))
    if took > deadline_s:
        s.findings.append(Finding(False, f"the round trip took {took:.1f} s (deadline {deadline_s:g} s)",
                                  "a slow or distant endpoint: jobs' heartbeats and checkpoints will lag"))
    return s


def check(profiles: dict[str, Profile], store_url: str, deadline_s: float = 10.0) -> list[Section]:
    """Every platform and the store, checked side by side (each call bounded by ``deadline_s``)."""
    with ThreadPoolExecutor(max_workers=max(1, len(profiles) + 1), thread_name_prefix="gwi-check") as pool:
        futures = [pool.submit(check_platform, p, deadline_s) for _, p in sorted(profiles.items())]
        store = pool.submit(check_store, store_url, deadline_s)
        return [f.result() for f in futures] + [store.result()]


def render(sections: list[Section]) -> str:
    lines = []
    for s in sections:
        lines.append(f"{'✓' if s.ok else '✗'} {s.name}" + ("" if s.kind == "store" else f" ({s.kind})")
                     + (" — the store" if s.kind == "store" else ""))
        for f in s.findings:
            lines.append(f"    {'✓' if f.ok else '✗'} {f.what}")
            if f.fix:
                lines.append(f"      fix: {f.fix}")
    ready = [s.name for s in sections if s.kind != "store" and s.ok]
    lines.append(f"\n{len(ready)} platform(s) ready: {', '.join(ready) or 'none'}")
    return "\n".join(lines)
