"""Lambda Cloud: an on-demand GPU instance per attempt, launched over the HTTP API, driven over SSH.

Profile options (``platforms/lambda.yaml``)::

    options:
      api_url: https://cloud.lambdalabs.com/api/v1
      instance_types: [gpu_1x_a100_sxm4, gpu_1x_a100]   # preference order
      regions: []                  # allowed regions; empty: any
      ssh_key_name: gwi            # the key registered with Lambda (launch puts it on the instance)
      ssh_private_key: ~/.ssh/id_ed25519
      ssh_user: ubuntu
      ssh_port: 22
      runtime: docker              # docker: `docker run --gpus all IMAGE`; process: `gwi` on the host
      image: ghcr.io/you/gwi:latest   # pulled by the instance, or
      image_archive: images/gwi.tar   # a `docker save` archive in the store, copied and `docker load`ed
      remote_dir: gwi-jobs         # on the instance, relative to the user's home
      env: {}                      # extra (non-secret) environment for the job
      boot_timeout_s: 900
      request_timeout_s: 30        # one API call's wait for an answer
      retry_deadline_s: 120        # retrying throttled/5xx/unanswered calls stops here
      max_hours: 24                # the far side's deadline when the attempt has no tighter one
      watchdog_grace_s: 300        # the watchdog fires this long after the hour limit
      poweroff_command: sudo shutdown -h now

Life of an attempt: ``launch`` picks the first type in ``instance_types`` that has capacity in an
allowed region and asks for an instance named ``gwi-<attempt>`` (so a launch whose answer was lost
is found again, not repeated). ``query`` follows it: booting is pending; once active, the first
query connects over SSH, records the host key (trust on first use, per instance) and starts the
job under a small wrapper in its own session; later queries read the wrapper's exit status. When
the job ends, the log is copied back and the instance is terminated. ``cancel`` stops the job and
terminates the instance; the scheduler calls it for lost and over-budget attempts too, so nothing is
left running, or billing.

The instance stops itself, whether or not gwi still runs anywhere: the job's wrapper stops it at the
attempt's hour limit (at most ``max_hours``), and a watchdog started beside it in a session of its
own runs ``poweroff_command`` ``watchdog_grace_s`` later. Lambda may bill a powered-off instance
until it is terminated: ``gwi instances --stop-orphans`` terminates what no live attempt owns.

Every API request has a timeout (shortened near the deadline); rate limits (429), server errors,
resets and unanswered requests are retried with jittered exponential backoff until
``retry_deadline_s``; a launch is never retried blind (a lost answer is looked for by name first).
SSH connects, authenticates, reads and waits for exit statuses within timeouts. One ``translate``
maps every failure (Lambda's error codes in one dict, HTTP statuses, network, SSH) to our kinds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import posixpath
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from . import kit
from .base import Adapter, Finding, LaunchRequest, PlatformError, PlatformOptions, State, Status, bounds

DEFAULT_API = "https://cloud.lambdalabs.com/api/v1"
NAME_PREFIX = "gwi-"  # an instance's name is the prefix and its attempt id: found again, and owned

# Lambda's instance statuses -> ours, while the job has not reported an end
INSTANCE_STATES = {"booting": State.PENDING, "active": State.RUNNING, "unhealthy": State.LOST,
                   "terminating": State.LOST, "terminated": State.LOST}

# Lambda's error codes -> PlatformError kinds (anything else: by HTTP status)
ERROR_KINDS = {
    "instance-operations/launch/insufficient-capacity": "capacity",
    "global/quota-exceeded": "quota",
    "global/invalid-api-key": "auth",
    "global/account-inactive": "auth",
    "global/invalid-parameters": "config",
    "instance-operations/launch/file-system-in-wrong-region": "config",
    "global/object-does-not-exist": "fatal",
}


@dataclass(frozen=True)
class LambdaOptions(PlatformOptions):
    api_url: str = DEFAULT_API
    instance_types: tuple[str, ...] = ()  # preference order; needed before a launch
    regions: tuple[str, ...] = ()  # allowed regions; empty: any
    ssh_key_name: str = "gwi"  # the key registered with Lambda (launch puts it on the instance)
    ssh_private_key: str = "~/.ssh/id_ed25519"
    ssh_user: str = "ubuntu"
    ssh_port: int = bounds(22, minimum=1, maximum=65535)
    runtime: Literal["docker", "process"] = "docker"
    image: str = "gwi:latest"
    image_archive: str | None = None  # a `docker save` archive in the store, copied and loaded
    gwi_command: str = "gwi"  # the process runtime's gwi on the instance
    remote_dir: str = "gwi-jobs"  # on the instance, relative to the user's home
    env: dict[str, str] = field(default_factory=dict)  # extra (non-secret) environment for the job
    boot_timeout_s: float = bounds(900.0, above=0)
    request_timeout_s: float = bounds(30.0, above=0)  # one API call's wait for an answer
    retry_deadline_s: float = bounds(120.0, minimum=0)  # retrying throttled/5xx/unanswered calls stops here
    # the instance stops itself: at the attempt's hour limit (at most max_hours) the wrapper stops the
    # job, and watchdog_grace_s later a watchdog started with it runs poweroff_command, whether or
    # not gwi still runs anywhere
    max_hours: float = bounds(24.0, above=0)
    watchdog_grace_s: float = bounds(300.0, minimum=0)  # past the wrapper's TERM + 60 s KILL: the last checkpoint
    poweroff_command: str = "sudo shutdown -h now"
    allow_local_store: bool = False  # a file:// store the instance shares with this machine (tests)

    @property
    def key_path(self) -> str:
        return os.path.expanduser(self.ssh_private_key)


def translate(exc: Exception, who: str = "lambda") -> PlatformError:
    """The adapter's one error translator: an API answer (by Lambda's error code, else its HTTP
    status), a network failure, an SSH failure -> a PlatformError of the right kind."""
    import paramiko
    import requests

    if isinstance(exc, PlatformError):
        return exc
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        r = exc.response
        try:
            e = r.json().get("error", {})
        except ValueError:
            e = {}
        code, message = e.get("code", ""), e.get("message") or r.reason or ""
        hint = f" ({e['suggestion']})" if e.get("suggestion") else ""
        kind = ERROR_KINDS.get(code) or kit.http_kind(r.status_code)
        text = f"{who}: {exc.args[0]}: HTTP {r.status_code} {code or ''}: {message}{hint}"
        return PlatformError(text.replace("  ", " "), kind)
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        what = exc.args[0] if exc.args and isinstance(exc.args[0], str) else "the API"
        return PlatformError(f"{who}: {what}: no answer ({type(exc).__name__})", "retryable")
    if isinstance(exc, ValueError):  # an answer that is not JSON: a proxy's error page, a cut-off body
        return PlatformError(f"{who}: {exc}", "retryable")
    if isinstance(exc, paramiko.BadHostKeyException):
        return PlatformError(f"{who}: host key of {exc.hostname} changed since first contact "
                             f"(recorded {_fingerprint(exc.expected_key)}, offered {_fingerprint(exc.key)}); "
                             "refusing to connect", "fatal")
    if isinstance(exc, paramiko.AuthenticationException):
        return PlatformError(f"{who}: SSH login refused ({exc}); check options.ssh_private_key and "
                             f"ssh_key_name", "auth")
    if isinstance(exc, (paramiko.SSHException, OSError, EOFError)):
        return PlatformError(f"{who}: SSH: {type(exc).__name__}: {exc}", "retryable")
    return PlatformError(f"{who}: {type(exc).__name__}: {exc}", "fatal")


class LambdaAPI:
    """The Lambda Cloud API v1 client: one request function, bounded retries under a deadline."""

    def __init__(self, base_url: str, api_key: str, timeout: float = 30.0, deadline_s: float = 120.0, sleep=time.sleep,
                 who: str = "lambda"):
        import requests

        self.base, self.who = base_url.rstrip("/"), who
        self.timeout, self.deadline_s, self.sleep = timeout, deadline_s, sleep
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {api_key}", "Accept": "application/json",
                                     "User-Agent": "gwi"})

    def request(self, method: str, path: str, body: dict | None = None, retry: bool = True) -> dict:
        """One API call, answered within about ``deadline_s`` (each try within ``timeout``, less near
        the deadline): a server that accepts and never answers ends in a retryable error, not a hang.
        ``retry=False`` for calls that are not idempotent (a launch whose answer was lost may have
        made an instance): their transient errors go to the caller, which looks before trying again."""
        import requests

        what = f"{method} {path}"

        def once(left: float) -> dict:
            try:
                r = self.session.request(method, self.base + path, json=body,
                                         timeout=min(self.timeout, left) if retry else self.timeout)
            except (requests.ConnectionError, requests.Timeout) as e:
                raise type(e)(f"{what} at {self.base}") from None
            if r.status_code >= 400:
                raise requests.HTTPError(what, response=r)
            try:
                return r.json().get("data", {})
            except ValueError:
                raise ValueError(f"{what}: answer is not JSON (HTTP {r.status_code})") from None

        return kit.with_retries(once, lambda e: translate(e, self.who), deadline_s=self.deadline_s if retry else 0,
                                sleep=self.sleep)

    def instance_types(self) -> dict:
        return self.request("GET", "/instance-types")

    def launch(self, region: str, itype: str, ssh_key: str, name: str) -> str:
        data = self.request("POST", "/instance-operations/launch", {
            "region_name": region, "instance_type_name": itype, "ssh_key_names": [ssh_key], "quantity": 1, "name": name},
            retry=False)
        return data["instance_ids"][0]

    def instance(self, instance_id: str) -> dict:
        return self.request("GET", f"/instances/{instance_id}")

    def instances(self) -> list[dict]:
        return self.request("GET", "/instances") or []

    def terminate(self, instance_id: str) -> None:
        try:
            self.request("POST", "/instance-operations/terminate", {"instance_ids": [instance_id]})
        except PlatformError as e:
            if "object-does-not-exist" not in str(e):
                raise


KEY_FILE = Path("~/.lambda_cloud/lambda_keys")  # where Lambda's tools (and SkyPilot) keep the API key


def file_key() -> str | None:
    """The ``api_key = ...`` line of :data:`KEY_FILE`, if there is one."""
    try:
        text = KEY_FILE.expanduser().read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == "api_key" and value.strip():
            return value.strip()
    return None


class LambdaAdapter(Adapter):
    Options = LambdaOptions

    def __init__(self, profile):
        super().__init__(profile)
        self._api: LambdaAPI | None = None

    @property
    def api(self) -> LambdaAPI:
        if self._api is None:
            self._api = LambdaAPI(self.options.api_url, self._api_key(), timeout=self.options.request_timeout_s,
                                  deadline_s=self.options.retry_deadline_s, who=self.name)
        return self._api

    def _api_key(self) -> str:
        """The profile's key variable (LAMBDA_API_KEY), else the key file Lambda's tools write."""
        key_var = self.profile.credentials[0] if self.profile.credentials else "LAMBDA_API_KEY"
        key = os.environ.get(key_var) or file_key()
        if not key:
            raise PlatformError(f"{self.name}: {key_var} is not set (nor api_key in {KEY_FILE})", "auth")
        return key

    def available(self) -> str | None:
        if not self.options.instance_types:
            return (f"{self.profile.path}: options.instance_types: expected a list of Lambda instance types "
                    "(e.g. [gpu_1x_a100_sxm4]), got none")
        why = super().available()
        if why and not file_key():
            return why + f" (nor api_key in {KEY_FILE})"
        if not Path(self.options.key_path).is_file():
            return f"SSH key {self.options.key_path} not found (options.ssh_private_key)"
        return None

    def credentials_found(self) -> list[Finding]:
        found = super().credentials_found()
        if not all(f.ok for f in found):
            found = ([Finding(True, f"API key in {KEY_FILE}")] if file_key() else
                     [Finding(False, f"no Lambda API key: {', '.join(self.profile.missing_credentials())} not set and no "
                                     f"{KEY_FILE}", "cloud.lambdalabs.com > API keys > Generate: export LAMBDA_API_KEY=... "
                                                    f"or put 'api_key = ...' in {KEY_FILE}")])
        key = Path(self.options.key_path)
        found.append(Finding(True, f"SSH key {key}") if key.is_file() else
                     Finding(False, f"SSH key {key} not found",
                             f"point options.ssh_private_key at the key of '{self.options.ssh_key_name}' in Lambda"))
        return found

    def probe(self, deadline_s: float) -> list[Finding]:
        """The API answers; which of the profile's instance types have capacity now, and where."""
        try:
            api = LambdaAPI(self.options.api_url, self._api_key(),
                            timeout=min(deadline_s, self.options.request_timeout_s), deadline_s=0, who=self.name)
            offered = api.instance_types()
        except PlatformError as e:
            return [Finding(False, f"Lambda API: {e}", "check the API key" if e.kind == "auth" else
                            f"is {self.options.api_url} reachable from here?")]
        out = []
        for itype in self.options.instance_types:
            info = offered.get(itype)
            if info is None:
                out.append(Finding(False, f"{itype}: not offered by Lambda", "choose from: " + ", ".join(sorted(offered))))
                continue
            regions = [r["name"] for r in info.get("regions_with_capacity_available", [])]
            desc = info.get("instance_type", {}).get("description") or itype
            price = info.get("instance_type", {}).get("price_cents_per_hour")
            cost = f", ${price / 100:.2f}/h" if price is not None else ""
            out.append(Finding(True, f"{itype} ({desc}{cost}): " + (f"capacity in {', '.join(regions)}" if regions
                                                                     else "no capacity now")))
        return out

    def reachable_store(self, store_url: str) -> str | None:
        if self.options.allow_local_store:
            return None
        return kit.unreachable_file_store(self.name, store_url)

    # -- launch ---------------------------------------------------------------------------------

    def launch(self, req: LaunchRequest) -> dict:
        kit.private_dir(req.workdir)
        done = self.recorded(req.workdir)
        if done:
            return done
        work = Path(req.workdir)
        why = self.reachable_store(req.store_url)
        if why:
            raise PlatformError(why, "config")
        # kept for the first query, which starts the job once the instance is up (names, not secrets)
        kit.write_private(work / "request.json", json.dumps(dataclasses.asdict(req)))
        name = NAME_PREFIX + req.attempt_id
        handle = self._adopt(name, work) if (work / "launching").exists() else None
        if handle is None:
            (work / "launching").touch()
            handle = self._launch_new(name, work)
        return self.record(work, handle)

    def _adopt(self, name: str, work: Path) -> dict | None:
        """We asked before and never heard back: the instance that launch made, if any."""
        mine = [i for i in self.api.instances()
                if i.get("name") == name and i.get("status") not in ("terminating", "terminated")]
        for extra in mine[1:]:  # more than one answer lost: keep one, stop paying for the rest
            self.api.terminate(extra["id"])
        if not mine:
            return None
        inst = mine[0]
        return {"instance_id": inst["id"], "name": name, "type": inst.get("instance_type", {}).get("name"),
                "region": inst.get("region", {}).get("name"), "workdir": str(work)}

    def _launch_new(self, name: str, work: Path) -> dict:
        offered = self.api.instance_types()
        tried, allowed = [], self.options.regions
        for itype in self.options.instance_types:
            info = offered.get(itype)
            if info is None:
                tried.append(f"{itype}: not offered")
                continue
            regions = [r["name"] for r in info.get("regions_with_capacity_available", [])
                       if not allowed or r["name"] in allowed]
            if not regions:
                tried.append(f"{itype}: no capacity" + (f" in {', '.join(allowed)}" if allowed else ""))
                continue
            for region in regions:
                try:
                    iid = self.api.launch(region, itype, self.options.ssh_key_name, name)
                except PlatformError as e:
                    if e.kind == "capacity":  # the list was stale: next region, then next type
                        tried.append(f"{itype} in {region}: {e}")
                        continue
                    raise
                gpus = info.get("instance_type", {}).get("specs", {}).get("gpus", 1)
                return {"instance_id": iid, "name": name, "type": itype, "region": region, "gpus": gpus,
                        "workdir": str(work)}
        raise PlatformError(f"{self.name}: no capacity: " + "; ".join(tried), "capacity")

    # -- query, cancel, logs --------------------------------------------------------------------

    def query(self, handle: dict) -> Status:
        work = Path(handle["workdir"])
        done = work / "final.json"
        if done.exists():  # ended and the instance was terminated: the recorded end
            d = json.loads(done.read_text())
            return Status(State(d["state"]), d.get("exit_code"), d.get("message", ""))
        inst = self.api.instance(handle["instance_id"])
        status = inst.get("status", "?")
        if status == "booting" or (status == "active" and not inst.get("ip")):
            return Status(State.PENDING)
        if status != "active":
            if kit.was_cancelled(work):
                return Status(State.CANCELLED, None, "cancelled")
            self._terminate(handle)
            return Status(INSTANCE_STATES.get(status, State.LOST), None,
                          f"instance {handle['instance_id']} is {status}{_past_deadline(work)}")
        ip = inst["ip"]
        if not (work / "started").exists():
            (work / "starting").touch()
            self._start(handle, ip)
            (work / "started").write_text(ip)
            return Status(State.RUNNING)
        return self._follow(handle, ip)

    def _follow(self, handle: dict, ip: str) -> Status:
        """The job's state from its wrapper's files on the instance; at its end, log back and terminate."""
        out = _Shell(self, handle, ip).run(kit.WRAPPER_PROBE).strip()
        if out == "alive":
            return Status(State.RUNNING)
        if out == "gone":
            st = Status(State.LOST, None, "the job's process on the instance is gone without an exit status")
        else:
            code, _, over_limit = out.partition("\n")
            st = kit.ended(int(code), self._fetch_log(ip, handle, keep=True), over_limit=over_limit.strip() or None)
        self._finish(handle, ip, st)
        return st

    def cancel(self, handle: dict) -> None:
        work = Path(handle["workdir"])
        kit.mark_cancelled(work)
        if (work / "started").exists():
            ip = (work / "started").read_text()
            try:
                _Shell(self, handle, ip).run(f"{stop_job(handle['name'])} >/dev/null 2>&1; true", timeout=30)
                self._fetch_log(ip, handle, keep=True)
            except PlatformError:
                pass  # the instance is going anyway
        self._terminate(handle)
        if not (work / "final.json").exists():
            kit.write_private(work / "final.json", json.dumps({"state": "cancelled", "message": "cancelled"}))

    def logs(self, handle: dict, tail: int | None = None) -> str:
        started = Path(handle["workdir"], "started")
        fetch = (lambda: self._fetch_log(started.read_text(), handle)) if started.exists() else None
        return kit.logs(handle["workdir"], tail, fetch)

    def translate(self, exc: Exception) -> PlatformError:
        return translate(exc, self.name)

    # -- the machines gwi launched (for `gwi instances`) ----------------------------------------

    def instances(self, workroot: Path | None = None) -> list[dict]:
        """Every instance of the account named ``gwi-<attempt>`` that is not gone, whoever launched it."""
        out = []
        for i in self.api.instances():
            name = i.get("name") or ""
            if not name.startswith(NAME_PREFIX) or i.get("status") in ("terminating", "terminated"):
                continue
            cents = i.get("instance_type", {}).get("price_cents_per_hour")
            out.append({"id": i["id"], "name": name, "attempt_id": name[len(NAME_PREFIX):] or None,
                        "state": i.get("status", "?"), "started": i.get("created_at"),
                        "usd_per_hour": cents / 100 if cents is not None else self.profile.usd_per_hour})
        return out

    def stop_instance(self, inst: dict) -> None:
        """Terminate one instance that :meth:`instances` listed."""
        self.api.terminate(inst["id"])

    # -- the job on the instance ----------------------------------------------------------------

    def command(self, req: LaunchRequest, gpus: int) -> str:
        """The shell command that runs the job on the instance (under torchrun for multi-GPU training)."""
        argv = list(req.argv)
        if argv and argv[0] == "gwi":
            argv = argv[1:]
        multi = req.kind == "train" and gpus > 1
        torchrun = ["--standalone", f"--nproc-per-node={gpus}", "--no-python", "--"]
        if self.options.runtime == "docker":
            head = ["docker", "run", "--rm", "--name", "gwi-" + req.attempt_id, "--gpus", "all", "--network", "host",
                    "--shm-size", "16g", "--env-file", kit.DOCKER_ENV_FILE]
            if multi:
                return shlex.join(head + ["--entrypoint", "torchrun", self.options.image] + torchrun + ["gwi"] + argv)
            return shlex.join(head + [self.options.image] + argv)
        gwi = shlex.split(self.options.gwi_command)
        return shlex.join((["torchrun"] + torchrun if multi else []) + gwi + argv)

    def hours_limit(self, req: LaunchRequest) -> float:
        """The far side's deadline: the attempt's hour limit, never more than ``max_hours``."""
        return min(req.hours_limit or self.options.max_hours, self.options.max_hours)

    def _start(self, handle: dict, ip: str) -> None:
        """Put the environment, the wrapper and the watchdog on the instance and start them."""
        work = Path(handle["workdir"])
        req = LaunchRequest(**json.loads((work / "request.json").read_text()))
        env = kit.job_env(req, base=kit.lent_credentials(), extra=self.options.env)  # the store's credentials
        files = kit.env_files(env, self.name)
        hours = self.hours_limit(req)
        files["run.sh"] = kit.wrapper_script(self.command(req, int(handle.get("gpus") or 1)), env_file=kit.ENV_FILE,
                                             hours_limit=hours)
        after_s = kit.limit_seconds(hours) + self.options.watchdog_grace_s  # grace > the wrapper's KILL_AFTER_S
        files[WATCHDOG] = watchdog_script(after_s, self.options.poweroff_command, handle)
        kit.write_private(work / "deadline", json.dumps({"hours": hours, "at": time.time() + after_s}))
        archive = self.options.image_archive if self.options.runtime == "docker" else None
        _Shell(self, handle, ip).start(files, archive and (req.store_url, archive))

    def _fetch_log(self, ip: str, handle: dict, keep: bool = False) -> str:
        """The job's log on the instance (``keep``: saved beside the handle, for after termination);
        empty when the instance cannot be reached."""
        try:
            text = _Shell(self, handle, ip).run(f"cat {kit.LOG} 2>/dev/null; true")
        except PlatformError:
            if keep:
                return kit.saved_log(handle["workdir"]) or ""
            raise
        if keep:
            kit.save_log(handle["workdir"], text)
        return text

    def _finish(self, handle: dict, ip: str, st: Status) -> None:
        if kit.saved_log(handle["workdir"]) is None:
            self._fetch_log(ip, handle, keep=True)
        self._terminate(handle)
        kit.write_private(Path(handle["workdir"], "final.json"), json.dumps(
            {"state": st.state.value, "exit_code": st.exit_code, "message": st.message}))

    def _terminate(self, handle: dict) -> None:
        self.api.terminate(handle["instance_id"])


WATCHDOG = "watchdog.sh"
STOP_GRACE_S = 10  # TERM, then KILL what is left this long after (the job's last checkpoint write)


def stop_job(container: str) -> str:
    """``sh`` that stops the job's process group on the instance: TERM and CONT (a stopped process
    acts on TERM only once continued), KILL after :data:`STOP_GRACE_S`, and its container. The
    watchdog is left alone: if terminating the instance fails, it still powers the machine off."""
    ticks = int(STOP_GRACE_S * 2)
    return (f"p=$(cat {kit.PID} 2>/dev/null); if [ -n \"$p\" ]; then kill -TERM -- -$p; kill -CONT -- -$p; i=0; "
            f"while kill -0 -- -$p 2>/dev/null && [ $i -lt {ticks} ]; do sleep 0.5; i=$((i+1)); done; "
            f"kill -KILL -- -$p; fi; docker rm -f {shlex.quote(container)}")


def watchdog_script(after_s: float, poweroff_command: str, handle: dict) -> str:
    """``sh`` code started beside the job in a session of its own: after ``after_s`` it runs
    ``poweroff_command`` (with GWI_INSTANCE_ID and GWI_INSTANCE_NAME set), so an instance nobody
    watches any more stops itself. Its pid (= its process group) is in ``watchdog.pid``."""
    return "\n".join([
        "# gwi's watchdog: stops this machine at its attempt's deadline, whether or not gwi still runs",
        f"GWI_INSTANCE_ID={shlex.quote(str(handle['instance_id']))}; GWI_INSTANCE_NAME={shlex.quote(handle['name'])}",
        "export GWI_INSTANCE_ID GWI_INSTANCE_NAME",
        "echo $$ > watchdog.pid.tmp && mv watchdog.pid.tmp watchdog.pid",
        f"sleep {math.ceil(after_s)}",
        "[ -f run.sh ] || exit 0  # its attempt's folder is gone: not a machine of that attempt any more",
        'echo "deadline reached at $(date -u +%FT%TZ): powering off" > watchdog.fired',
        poweroff_command, ""])


def _past_deadline(work: Path) -> str:
    """``; it stopped itself at its deadline ...`` once the watchdog's time has come, else nothing."""
    try:
        d = json.loads((work / "deadline").read_text())
    except (OSError, ValueError):
        return ""
    if time.time() < d["at"]:
        return ""
    return f"; its deadline ({d['hours']:g} h) had passed: its watchdog powers it off"


def _exit_status(channel, timeout: float) -> int:
    """The remote command's exit status, waited for at most ``timeout`` (paramiko's own wait has no
    limit: a server that never sends it would hang us)."""
    deadline = time.monotonic() + timeout
    while not channel.exit_status_ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no exit status from the remote command within {timeout:g} s")
        time.sleep(0.02)
    return channel.recv_exit_status()


class _Shell:
    """The job's folder on one instance, over SSH: the host key is trusted on first use (kept in the
    attempt's folder), every failure goes through the adapter's ``translate``."""

    def __init__(self, adapter: LambdaAdapter, handle: dict, ip: str):
        self.adapter, self.handle, self.ip = adapter, handle, ip
        self.name, self.o = adapter.name, adapter.options
        self.rdir = posixpath.join(self.o.remote_dir, handle["name"])

    @contextlib.contextmanager
    def session(self, timeout: float = 20):
        import paramiko

        known = Path(self.handle["workdir"], "known_hosts")
        client = paramiko.SSHClient()
        try:
            if known.exists():
                client.load_host_keys(str(known))  # a changed key now raises BadHostKeyException
            client.set_missing_host_key_policy(_RecordFirst(known))
            client.connect(self.ip, port=self.o.ssh_port, username=self.o.ssh_user, key_filename=self.o.key_path,
                           timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                           channel_timeout=timeout, look_for_keys=False, allow_agent=False)
            client.get_transport().set_keepalive(15)  # a dropped link shows as an error, not a silent wait
            yield client
        except PlatformError:
            raise
        except Exception as e:  # noqa: BLE001 - translated: host key, auth, network
            if isinstance(e, paramiko.BadHostKeyException):
                e.hostname = f"{self.ip}:{self.o.ssh_port}"
            raise self.adapter.translate(e) from None
        finally:
            client.close()

    def run(self, command: str, timeout: float = 60) -> str:
        """``command``'s output, run in the job's folder."""
        with self.session() as client:
            _, out, err = client.exec_command(f"cd {shlex.quote(self.rdir)} && ({command})", timeout=timeout)
            text = out.read().decode(errors="replace")  # the channel's timeout bounds each read
            code = _exit_status(out.channel, timeout)
            if code != 0:
                raise PlatformError(f"{self.name}: remote command failed ({code}): {err.read().decode()[-500:]}",
                                    "retryable")
            return text

    def start(self, files: dict[str, str], image: tuple[str, str] | None) -> None:
        """Write ``files`` (owner-only: the environment holds secrets), load the ``(store, key)``
        image archive, and start ``run.sh`` in its own session, once."""
        with self.session() as client:
            _, out, _ = client.exec_command(f"mkdir -p {shlex.quote(self.rdir)} && cd {shlex.quote(self.rdir)} && pwd",
                                            timeout=60)
            home_dir = out.read().decode().strip()
            sftp = client.open_sftp()
            sftp.get_channel().settimeout(60)  # each SFTP request answered within a minute
            try:
                for fname, text in files.items():
                    path = posixpath.join(home_dir, fname)
                    with sftp.open(path, "w") as f:
                        sftp.chmod(path, 0o600)
                        f.write(text)
                if image:
                    self._load_image(client, sftp, home_dir, *image)
            finally:
                sftp.close()
            # every descriptor away from the channel, or the channel stays open as long as the job
            # once only: a start whose answer was lost must not start a second copy (mkdir is atomic)
            # the watchdog first: a job must never run without its deadline
            _, out, _ = client.exec_command(f"cd {shlex.quote(self.rdir)} && if mkdir started.lock 2>/dev/null; then "
                                            f"(setsid nohup sh {WATCHDOG} >/dev/null 2>&1 </dev/null &); "
                                            "(setsid nohup sh run.sh >/dev/null 2>&1 </dev/null &); fi; echo ok",
                                            timeout=60)
            if out.read().decode().strip() != "ok":
                raise PlatformError(f"{self.name}: could not start the job on {self.ip}", "retryable")

    def _load_image(self, client, sftp, home_dir: str, store_url: str, key: str) -> None:
        import tempfile

        from ..store import open_store

        remote = posixpath.join(home_dir, "image.tar")
        with tempfile.TemporaryDirectory(prefix="gwi-image-") as tmp:
            local = Path(tmp) / "image.tar"
            open_store(store_url).get_file(key, local)
            sftp.put(str(local), remote)
        _, out, err = client.exec_command(f"docker load -i {shlex.quote(remote)}", timeout=1800)
        if _exit_status(out.channel, 1800) != 0:
            raise PlatformError(f"{self.name}: docker load failed: {err.read().decode()[-300:]}", "fatal")


def _fingerprint(key) -> str:
    """OpenSSH's form: SHA256:base64."""
    import base64
    import hashlib

    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


class _RecordFirst:
    """Trust on first use, per instance: the first key seen is written to the attempt's
    known_hosts; a different key later makes paramiko refuse (BadHostKeyException)."""

    def __init__(self, path: Path):
        self.path = path

    def missing_host_key(self, client, hostname, key):
        client.get_host_keys().add(hostname, key.get_name(), key)
        client.save_host_keys(str(self.path))
