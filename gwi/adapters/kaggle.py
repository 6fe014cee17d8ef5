"""Kaggle: an attempt is a private GPU kernel, pushed with the official ``kaggle`` package.

Profile options (``platforms/kaggle.yaml``)::

    options:
      owner: null                 # Kaggle user owning the kernels (default: $KAGGLE_USERNAME)
      slug_prefix: gwi            # kernel slug: <prefix>-<spec>-<job>-<attempt n>
      machine_shape: NvidiaTeslaT4     # one of accelerators; null: Kaggle's default GPU
      accelerators: [NvidiaTeslaT4]    # the shapes Kaggle offers now (2x T4; the P100 is retired)
      internet: true              # false: an offline kernel (competition submissions)
      wheel_dataset: you/gwi-wheels    # dataset with the gwi wheel (+ its dependencies for offline use)
      datasets: []                # more dataset sources (e.g. you/gwi-checkpoints made by `gwi kaggle package`)
      competitions: []            # competition sources, e.g. [waveform-inversion]
      secrets: [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL]   # read from Kaggle's secret store
      offline_store: null         # offline: the attached dataset that mirrors the store (`gwi kaggle package`)
      api_endpoint: null          # another Kaggle API base URL (a proxy; the tests' fake server)
      request_timeout_s: 30       # one API call's wait for an answer
      retry_deadline_s: 60        # retrying throttled/5xx/unanswered reads stops here

The pushed folder holds ``kernel-metadata.json`` and ``gwi_job.py``; neither holds a secret. The
script installs gwi from the attached wheel dataset when the image lacks it, reads the store's
credentials from Kaggle's secret store (Add-ons > Secrets, attached to the kernel), and runs the
same ``gwi`` command as every platform, so it heartbeats to the store like every platform. An
offline kernel cannot reach the store: it reads a mirror of it from an attached dataset (store
URLs are mapped onto ``/kaggle/input/<dataset>`` through ``GWI_STORE_MAP``), writes its outputs to
``/kaggle/working`` (where Kaggle takes ``submission.csv`` from), and is followed by its kernel
status alone.

Kaggle's GPU quota (30 h a week) and 12-hour session cap are the profile's
``quota_hours_per_week`` and ``session_hours``, which the scheduler accounts and enforces; the
kernel's own script stops the job at the attempt's hour limit too, watched or not.

Every API call has a timeout (set on the client's HTTP session: the package has no option for
it); reads (status, logs, the kernel list) and cancels are retried through throttling, 5xx and
timeouts with jittered backoff until ``retry_deadline_s``; a push is not (it is looked for first).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import GwiError
from ..runs import Run
from . import kit
from .base import (KAGGLE_API, Adapter, Finding, LaunchRequest, OptionError, PlatformError, PlatformOptions, State,
                   Status, bounds)

# Kaggle's kernel session states -> ours
KERNEL_STATES = {"QUEUED": State.PENDING, "NEW_SCRIPT": State.PENDING, "RUNNING": State.RUNNING,
                 "COMPLETE": State.SUCCEEDED, "ERROR": State.FAILED, "CANCEL_REQUESTED": State.CANCELLED,
                 "CANCEL_ACKNOWLEDGED": State.CANCELLED}

# Kaggle's secret store (Add-ons > Secrets, attached to the kernel), as the kernel reads it
SECRET_STORE = kit.SecretStore("from kaggle_secrets import UserSecretsClient; get = UserSecretsClient().get_secret",
                               "attach it to this kernel: Add-ons > Secrets")
INPUT = "/kaggle/input"  # where a kernel finds its attached datasets
WORKING = "/kaggle/working"  # its output folder (Kaggle takes submission.csv from here)


@dataclass(frozen=True)
class KaggleOptions(PlatformOptions):
    owner: str | None = None  # Kaggle user owning the kernels (default: $KAGGLE_USERNAME)
    slug_prefix: str = "gwi"
    machine_shape: str | None = None  # one of ``accelerators``; None: Kaggle's default GPU
    # the machine shapes Kaggle offers now (a setting, not code: Kaggle changes them; it retired the
    # P100, and its client now says "Sessions run on NvidiaTeslaT4", two T4s)
    accelerators: tuple[str, ...] = ("NvidiaTeslaT4",)
    internet: bool = True
    wheel_dataset: str | None = None  # dataset with the gwi wheel (+ its dependencies for offline use)
    datasets: tuple[str, ...] = ()
    competitions: tuple[str, ...] = ()
    secrets: tuple[str, ...] = kit.STORE_SECRETS  # names read from Kaggle's secret store (empty: these)
    offline_store: str | None = None  # offline: the attached dataset that mirrors the store
    api_endpoint: str | None = None  # another Kaggle API base URL (a proxy; the tests' fake server)
    request_timeout_s: float = bounds(30.0, above=0)  # one API call's wait for an answer
    retry_deadline_s: float = bounds(60.0, minimum=0)  # retrying throttled/5xx/unanswered reads stops here

    def check(self) -> None:
        if self.machine_shape is not None and self.machine_shape not in self.accelerators:
            raise OptionError("machine_shape", f"expected one of the accelerators Kaggle offers "
                                               f"({', '.join(self.accelerators)}), got {self.machine_shape!r}"
                              + ("; Kaggle retired the P100" if "P100" in self.machine_shape else ""))
        if not self.internet and not self.offline_store:
            raise OptionError("offline_store", "an offline kernel (internet: false) needs the dataset that mirrors "
                                               "the store (see `gwi kaggle package`)")

    def sources(self) -> list[str]:
        """The datasets the kernel attaches: the wheel, the extra ones, the store's mirror."""
        extra = [self.offline_store] if self.offline_store and self.offline_store not in self.datasets else []
        return ([self.wheel_dataset] if self.wheel_dataset else []) + list(self.datasets) + extra


def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if len(s) > 50:  # Kaggle's limit: keep it unique with a hash of the whole
        s = s[:41].rstrip("-") + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return s


def kaggle_json() -> Path:
    """Where the official client keeps its credentials: ``$KAGGLE_CONFIG_DIR/kaggle.json``, else
    ``~/.kaggle/kaggle.json`` when ``~/.kaggle`` exists, else ``$XDG_CONFIG_HOME/kaggle/kaggle.json``
    on Linux (the package's own order)."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json"
    home = Path.home() / ".kaggle"
    if home.exists() or not sys.platform.startswith("linux"):
        return home / "kaggle.json"
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle" / "kaggle.json"


def file_username() -> str | None:
    """The username in :func:`kaggle_json` when it holds a username and a key (the key is not kept)."""
    try:
        d = json.loads(kaggle_json().read_text())
    except (OSError, ValueError):
        return None
    return d["username"] if isinstance(d, dict) and d.get("username") and d.get("key") else None


class KaggleAdapter(Adapter):
    Options = KaggleOptions

    def __init__(self, profile):
        super().__init__(profile)
        self._api = None

    @property
    def api(self):
        if self._api is None:
            self._api = _authenticated_api(self.name, self.options.api_endpoint, self.options.request_timeout_s)
        return self._api

    def _call(self, fn, *args, retry: bool = True, **kw):
        """One API call through the package: within its timeout, retried while retryable (``retry``)."""
        return kit.with_retries(lambda _left: fn(*args, **kw), self.translate,
                                deadline_s=self.options.retry_deadline_s if retry else 0)

    def reachable_store(self, store_url: str) -> str | None:
        if self.options.internet:
            return kit.unreachable_file_store(self.name, store_url)
        return None

    # -- credentials: the environment, or the file the official client reads ----------------------

    def available(self) -> str | None:
        missing = self.profile.missing_credentials()
        if missing and not file_username():
            return f"credentials not set: {', '.join(missing)} (nor in {kaggle_json()})"
        return None

    def owner(self) -> str | None:
        return self.options.owner or os.environ.get("KAGGLE_USERNAME") or file_username()

    def credentials_found(self) -> list[Finding]:
        if not self.profile.missing_credentials():
            return super().credentials_found()
        path, user = kaggle_json(), file_username()
        if user is None:
            return [Finding(False, f"no Kaggle credentials: KAGGLE_USERNAME/KAGGLE_KEY not set and no {path}",
                            f"kaggle.com > Settings > API > Create New Token, save it as {path} (chmod 600)")]
        found = [Finding(True, f"credentials in {path} (user {user})")]
        if path.stat().st_mode & 0o077:
            found.append(Finding(False, f"{path} can be read by other users", f"chmod 600 {path}"))
        return found

    def probe(self, deadline_s: float) -> list[Finding]:
        """The API answers with the credentials (one listing of the account's kernels); what the profile
        asks Kaggle for."""
        t0 = time.monotonic()
        try:
            api = _authenticated_api(self.name, self.options.api_endpoint, min(deadline_s, self.options.request_timeout_s))
            api.kernels_list(mine=True, page_size=1)
        except Exception as e:  # noqa: BLE001 - whatever it was, check says it in one line
            err = self.translate(e)
            fix = ("check the token (kaggle.com > Settings > API)" if err.kind == "auth" else
                   f"is {self.options.api_endpoint or KAGGLE_API} reachable from here?")
            return [Finding(False, f"Kaggle API: {err}", fix)]
        shape = self.options.machine_shape or "Kaggle's default GPU"
        return [Finding(True, f"Kaggle API answers as {self.owner()} ({time.monotonic() - t0:.1f} s); kernels ask for "
                              f"{shape}, {'online' if self.options.internet else 'offline'}")]

    # -- rendering ------------------------------------------------------------------------------

    def kernel_id(self, req: LaunchRequest) -> str:
        owner = self.owner()
        if not owner:
            raise PlatformError(f"{self.name}: no Kaggle owner (options.owner, KAGGLE_USERNAME or {kaggle_json()})",
                                "auth")
        return f"{owner}/{_slug(f'{self.options.slug_prefix}-{req.attempt_id}')}"

    def job_env(self, req: LaunchRequest) -> dict[str, str]:
        """The kit's environment; offline, store URLs are mapped onto the attached mirror and the
        run's own folder onto the kernel's output, and there is nothing to beat to."""
        o = self.options
        if o.internet:
            return kit.job_env(req)
        mirror = f"{INPUT}/{o.offline_store.split('/')[-1]}"
        run = Run.of_attempt(req.heartbeat_url).url
        env = kit.job_env(req, heartbeat=False)
        env.update(GWI_OFFLINE="1", GWI_STORE_MAP=json.dumps({req.store_url.rstrip("/"): mirror, run: WORKING}))
        return env

    def render(self, req: LaunchRequest, folder: Path) -> dict:
        """Write the kernel folder; returns its metadata."""
        o = self.options
        kit.private_dir(folder)
        meta = {
            "id": self.kernel_id(req),
            "title": f"{o.slug_prefix} {req.attempt_id}"[:50].ljust(5, "-"),
            "code_file": "gwi_job.py",
            "language": "python",
            "kernel_type": "script",
            "is_private": True,
            "enable_gpu": self.profile.gpus > 0,
            "enable_tpu": False,
            "enable_internet": o.internet,
            "dataset_sources": o.sources(),
            "competition_sources": list(o.competitions),
            "kernel_sources": [],
            "model_sources": [],
        }
        if o.machine_shape:
            meta["machine_shape"] = o.machine_shape
        cells = kit.bootstrap_cells(req.argv, self.job_env(req), o.secrets or kit.STORE_SECRETS, SECRET_STORE,
                                    wheels=INPUT, offline=not o.internet, hours_limit=req.hours_limit)
        kit.write_private(folder / "kernel-metadata.json", json.dumps(meta, indent=1))
        kit.write_private(folder / "gwi_job.py", kit.bootstrap_script(f"gwi job {req.attempt_id}", cells))
        return meta

    # -- the four calls -------------------------------------------------------------------------

    def launch(self, req: LaunchRequest) -> dict:
        kit.private_dir(req.workdir)
        done = self.recorded(req.workdir)
        if done:
            return done
        work = Path(req.workdir)
        meta = self.render(req, work / "kernel")
        handle = {"kernel": meta["id"], "workdir": str(work), "silent": not self.options.internet}
        if (work / "pushing").exists() and self._exists(meta["id"]):  # pushed before, never heard back
            return self.record(work, handle)
        kit.write_private(work / "pushing", b"")
        resp = self._call(self.api.kernels_push, str(work / "kernel"), retry=False)
        if getattr(resp, "error", ""):
            raise PlatformError(f"{self.name}: push refused: {resp.error}", _kind(resp.error))
        handle.update(url=getattr(resp, "url", ""), version=getattr(resp, "version_number", None),
                      kernel_id=getattr(resp, "kernel_id", None))
        return self.record(work, handle)

    def _exists(self, kernel: str) -> bool:
        try:
            self._call(self.api.kernels_status, kernel)
            return True
        except PlatformError as e:
            if e.retryable:  # not answering: we cannot tell, and a second push would be a second kernel
                raise
            return False  # not found: push it

    def query(self, handle: dict) -> Status:
        r = self._call(self.api.kernels_status, handle["kernel"])
        name = _status_name(r.status)
        state = KERNEL_STATES.get(name)
        if state is None:
            raise PlatformError(f"{self.name}: unknown kernel status {name!r}", "retryable")
        msg = getattr(r, "failure_message", "") or ""
        if state.terminal:
            self._save_log(handle)
        return Status(state, None if not state.terminal else (0 if state == State.SUCCEEDED else 1), msg,
                      silent=bool(handle.get("silent")))

    def cancel(self, handle: dict) -> None:
        kit.mark_cancelled(handle["workdir"])
        if handle.get("kernel_id") is None:
            raise PlatformError(f"{self.name}: no session id for {handle['kernel']} (its push answer was lost); stop "
                                f"it at https://www.kaggle.com/code/{handle['kernel']}", "fatal")
        self._cancel_session(handle["kernel"], int(handle["kernel_id"]))

    def _cancel_session(self, kernel: str, session_id: int) -> None:
        """The SDK's cancel call (KaggleApi itself has none), retried while retryable."""
        from kagglesdk.kernels.types.kernels_api_service import ApiCancelKernelSessionRequest

        def cancel():
            req = ApiCancelKernelSessionRequest()
            req.kernel_session_id = session_id
            with self.api.build_kaggle_client() as client:
                return client.kernels.kernels_api_client.cancel_kernel_session(req)

        try:
            resp = self._call(cancel)
        except PlatformError as e:
            if e.retryable:
                raise
            raise PlatformError(f"{self.name}: could not cancel {kernel} ({e}); it ends at the session cap",
                                "fatal") from None
        if getattr(resp, "error_message", None):
            raise PlatformError(f"{self.name}: could not cancel {kernel} ({resp.error_message}); it ends at the "
                                "session cap", "fatal")

    def logs(self, handle: dict, tail: int | None = None) -> str:
        return kit.logs(handle["workdir"], tail, lambda: self._fetch_log(handle))

    def _fetch_log(self, handle: dict) -> str:
        raw = self._call(self.api.kernels_logs, handle["kernel"]) or ""
        try:  # Kaggle's log is a JSON list of {stream_name, time, data}
            return "".join(item.get("data", "") for item in json.loads(raw))
        except (ValueError, AttributeError, TypeError):
            return raw

    def _save_log(self, handle: dict) -> None:
        try:
            kit.save_log(handle["workdir"], self._fetch_log(handle))
        except PlatformError:
            pass

    def translate(self, exc: Exception) -> PlatformError:
        if isinstance(exc, PlatformError):
            return exc
        import requests

        if isinstance(exc, requests.HTTPError):
            code = exc.response.status_code if exc.response is not None else 0
            return PlatformError(f"{self.name}: HTTP {code}: {exc}", kit.http_kind(code, _kind(str(exc))))
        if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
            return PlatformError(f"{self.name}: Kaggle API not reachable ({type(exc).__name__})", "retryable")
        if isinstance(exc, ValueError) and "Permission" in str(exc):
            return PlatformError(f"{self.name}: {exc}", "auth")
        if isinstance(exc, (ConnectionError, TimeoutError)):  # a reset below requests' own wrapping
            return PlatformError(f"{self.name}: Kaggle API not reachable ({type(exc).__name__})", "retryable")
        return super().translate(exc)

    # -- the kernels gwi pushed (for `gwi instances`) ---------------------------------------------

    def instances(self, workroot: Path | None = None) -> list[dict]:
        """The account's kernels with gwi's slug prefix that are queued or running now."""
        owner = self.owner() or ""
        prefix = f"{owner}/{_slug(self.options.slug_prefix)}-"
        found = self._call(self.api.kernels_list, mine=True, search=self.options.slug_prefix, page_size=100) or []
        out = []
        for k in found:
            ref = (getattr(k, "ref", "") or "").removeprefix("/code/")
            if not ref.startswith(prefix):
                continue
            state = KERNEL_STATES.get(_status_name(self._call(self.api.kernels_status, ref).status))
            if state is None or state.terminal:
                continue
            title, head = getattr(k, "title", "") or "", self.options.slug_prefix + " "  # render's title: prefix, attempt
            attempt = title[len(head):] if title.startswith(head) else None
            last = getattr(k, "last_run_time", None)
            out.append({"id": ref, "name": ref, "attempt_id": attempt or None, "state": state.value,
                        "started": last.isoformat() if hasattr(last, "isoformat") else last,
                        "usd_per_hour": self.profile.usd_per_hour, "session_id": getattr(k, "id", None)})
        return out

    def stop_instance(self, inst: dict) -> None:
        """Cancel one kernel that :meth:`instances` listed."""
        if not inst.get("session_id"):
            raise PlatformError(f"{self.name}: no session id for {inst['id']}; stop it at "
                                f"https://www.kaggle.com/code/{inst['id']}", "fatal")
        self._cancel_session(inst["id"], int(inst["session_id"]))


def _status_name(status) -> str:
    """A kernel status (an SDK enum or a string) as Kaggle names it: RUNNING, COMPLETE, ..."""
    return getattr(status, "name", str(status)).upper().replace("KERNEL_WORKER_STATUS_", "")


_IMPORT_LOCK = threading.Lock()


def _authenticated_api(name: str, endpoint: str | None, timeout: float = 30.0):
    """The official client, authenticated, talking to ``endpoint`` when one is set, every HTTP call
    of it within ``timeout`` seconds (connect, and each wait for the server)."""
    import contextlib
    import io

    import requests.adapters

    class TimeoutAdapter(requests.adapters.HTTPAdapter):
        def send(self, request, timeout=None, **kw):  # noqa: ANN001 - the package passes none
            return super().send(request, timeout=timeout or timeout_s, **kw)

    timeout_s = timeout

    try:  # the package authenticates when imported and prints a banner without credentials
        # redirect_stdout swaps sys.stdout for the whole process: two threads doing it at once
        # (gwi check asks every profile side by side) would leave it swapped for good
        with _IMPORT_LOCK, contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError as e:  # pragma: no cover - kaggle is a dependency
        raise PlatformError(f"{name}: the kaggle package is not installed ({e})", "config") from None

    class Api(KaggleApi):
        def build_kaggle_client(self):
            client = super().build_kaggle_client()
            http = client._http_client
            if endpoint:  # kagglesdk has no setting for this; its client keeps the base URL here
                http._endpoint = endpoint.rstrip("/")
            http._init_session()  # nor for a timeout: its requests session gets an adapter that sets one
            for scheme in ("http://", "https://"):
                http._session.mount(scheme, TimeoutAdapter())
            return client

    api = Api()
    try:
        api.authenticate()
    except SystemExit:  # the package exits when it finds no credentials
        raise PlatformError(f"{name}: Kaggle credentials not found (set KAGGLE_USERNAME and KAGGLE_KEY, "
                            "or ~/.kaggle/kaggle.json)", "auth") from None
    return api


def _kind(message: str) -> str:
    m = message.lower()
    if "quota" in m or "gpu usage" in m:
        return "quota"
    if "maximum" in m and "session" in m or "concurrent" in m:
        return "capacity"
    return "fatal"


# ------------------------------------------------------------------------------------------------
# `gwi kaggle package`: the dataset a kernel attaches


def package(out: str | os.PathLike, dataset_id: str, *, runs: list[str] = (), ensembles: list[str] = (),
            wheel: str | None = None, with_deps: bool = False, title: str | None = None, log=print) -> dict:
    """Write a Kaggle dataset folder: the gwi wheel (and, ``with_deps``, its dependencies' wheels
    for offline kernels), and a mirror of the store holding each run's latest verified checkpoint
    and each ensemble with its members: what an offline kernel reads through ``GWI_STORE_MAP``.
    Upload it with ``kaggle datasets create -p OUT`` (or ``version``)."""
    if not re.fullmatch(r"[^/\s]+/[a-z0-9][a-z0-9-]{4,49}", dataset_id or ""):
        raise ValueError(f"dataset id: expected OWNER/SLUG with a 5-50 character slug of a-z, 0-9 and '-', "
                         f"got {dataset_id!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wheels = _wheels(out / "wheels", wheel, with_deps, log)
    copied = []
    for url in ensembles:
        path, members = _mirror_ensemble(out, url)
        copied.append(path)
        for run in members:
            copied.append(Run(run).mirror_latest(out, log))
    for url in runs:
        copied.append(Run(url).mirror_latest(out, log))
    meta = {"id": dataset_id, "title": (title or f"gwi {dataset_id.split('/')[1]}")[:50].ljust(6, "-"),
            "licenses": [{"name": "CC0-1.0"}]}
    (out / "dataset-metadata.json").write_text(json.dumps(meta, indent=1))
    return {"folder": str(out), "wheels": sorted(p.name for p in wheels.iterdir()), "mirrored": copied}


def _wheels(folder: Path, wheel: str | None, with_deps: bool, log) -> Path:
    """The gwi wheel (given, or built from this source tree) and, ``with_deps``, its dependencies'."""
    import shutil
    import subprocess
    import sys

    folder.mkdir(exist_ok=True)
    if wheel:
        shutil.copy(wheel, folder)
    else:
        src = Path(__file__).resolve().parents[2]
        if not (src / "pyproject.toml").exists():
            raise GwiError("gwi was not installed from a source tree: build a wheel and pass --wheel FILE")
        log(f"building the gwi wheel from {src}")
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(folder), str(src)], check=True)
    if with_deps:
        from importlib.metadata import requires

        # first-level requirements, torch excepted: every Kaggle GPU image has a CUDA torch
        reqs = [r.split(";")[0].strip() for r in requires("gwi") or [] if "extra ==" not in r]
        reqs = [r for r in reqs if not r.lower().startswith("torch>") and r.lower() != "torch"]
        log(f"downloading {len(reqs)} dependency wheels")
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d",
                        str(folder), *reqs], check=True)
    return folder


def _mirror_ensemble(out: Path, url: str) -> tuple[str, list[str]]:
    """Copy an ensemble's file into the mirror; returns its path there and its members' runs."""
    from ..runs import CHECKPOINTS, RUNS, relative_run_path
    from ..store import open_store

    parent, _, name = url.rstrip("/").rpartition("/")
    rel = relative_run_path(parent)
    if rel is None:
        raise ValueError(f"ensemble: expected STORE/{RUNS}/.../ensemble.json, got {url!r}")
    from ..paths import safe_join

    data = open_store(parent).get_bytes(name)
    dest = safe_join(out, f"{rel}/{name}")  # the URL's parts stay inside the mirror
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    refs = [m.get("checkpoint") or m.get("run") or m.get("source") for m in json.loads(data).get("members", [])]
    return f"{rel}/{name}", [ref.split(f"/{CHECKPOINTS}/")[0] for ref in refs if ref and relative_run_path(ref)]
