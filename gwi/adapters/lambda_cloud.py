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
      request_timeout_s: 30

Life of an attempt: ``launch`` picks the first type in ``instance_types`` that has capacity in an
allowed region and asks for an instance named ``gwi-<attempt>`` (so a launch whose answer was lost
is found again, not repeated). ``query`` follows it: booting is pending; once active, the first
query connects over SSH, records the host key (trust on first use, per instance) and starts the
job under a small wrapper in its own session; later queries read the wrapper's exit status. When
the job ends, the log is copied back and the instance is terminated. ``cancel`` stops the job and
terminates the instance; the scheduler calls it for lost and over-budget attempts too, so nothing is
left running, or billing.

Every request has a timeout; rate limits (429) and server errors are retried with jittered
exponential backoff until a deadline; provider error codes map to our error kinds in one dict.
"""

from __future__ import annotations

import json
import os
import posixpath
import random
import shlex
import time
from pathlib import Path

from ..errors import GwiError
from .base import Adapter, LaunchRequest, PlatformError, Profile, State, Status, tail_lines

DEFAULT_API = "https://cloud.lambdalabs.com/api/v1"
OPTIONS = ("api_url", "instance_types", "regions", "ssh_key_name", "ssh_private_key", "ssh_user", "ssh_port", "runtime",
           "image", "image_archive", "gwi_command", "remote_dir", "env", "boot_timeout_s", "request_timeout_s",
           "allow_local_store")

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

# the wrapper on the instance: pid first, then the job, then its exit status, atomically
_RUN_SH = """set -a; . ./env; set +a
echo $$ > pid.tmp && mv pid.tmp pid
{command} > log 2>&1 < /dev/null
c=$?
echo $c > exit_code.tmp && mv exit_code.tmp exit_code
"""


class LambdaAPI:
    """The Lambda Cloud API v1 client: one request function, one error translator, bounded retries."""

    def __init__(self, base_url: str, api_key: str, timeout: float = 30.0, deadline_s: float = 120.0, sleep=time.sleep):
        import requests

        self.base = base_url.rstrip("/")
        self.timeout, self.deadline_s, self.sleep = timeout, deadline_s, sleep
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {api_key}", "Accept": "application/json",
                                     "User-Agent": "gwi"})

    def request(self, method: str, path: str, body: dict | None = None, retry: bool = True) -> dict:
        """``retry=False`` for calls that are not idempotent (a launch whose answer was lost may have
        made an instance): their transient errors go to the caller, which looks before trying again."""
        import requests

        deadline = time.monotonic() + (self.deadline_s if retry else 0)
        delay = 1.0
        while True:
            try:
                r = self.session.request(method, self.base + path, json=body, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as e:
                err = PlatformError(f"lambda: {method} {path}: cannot reach {self.base} ({type(e).__name__})", "retryable")
            else:
                if r.status_code < 400:
                    try:
                        return r.json().get("data", {})
                    except ValueError:
                        err = PlatformError(f"lambda: {method} {path}: answer is not JSON (HTTP {r.status_code})",
                                            "retryable")
                else:
                    err = self.translate(r, method, path)
            if not err.retryable or time.monotonic() + delay > deadline:
                raise err
            self.sleep(delay * (0.5 + random.random()))  # jitter: many clients must not retry in step
            delay = min(delay * 2, 30.0)

    @staticmethod
    def translate(r, method: str, path: str) -> PlatformError:
        try:
            e = r.json().get("error", {})
        except ValueError:
            e = {}
        code, message = e.get("code", ""), e.get("message") or r.reason or ""
        hint = f" ({e['suggestion']})" if e.get("suggestion") else ""
        kind = ERROR_KINDS.get(code)
        if kind is None:
            kind = ("retryable" if r.status_code == 429 or r.status_code >= 500 else
                    "auth" if r.status_code in (401, 403) else "fatal")
        return PlatformError(f"lambda: {method} {path}: HTTP {r.status_code} {code or ''}: {message}{hint}".replace("  ", " "),
                             kind)

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


class LambdaAdapter(Adapter):
    def __init__(self, profile: Profile):
        super().__init__(profile)
        o = self.checked_options(OPTIONS)
        self.api_url = o.get("api_url", DEFAULT_API)
        self.types = list(o.get("instance_types") or [])
        if not self.types:
            raise GwiError(f"{profile.path}: options.instance_types: expected a list of Lambda instance types "
                           "(e.g. [gpu_1x_a100_sxm4]), got none")
        self.regions = list(o.get("regions") or [])
        self.ssh_key_name = o.get("ssh_key_name", "gwi")
        self.ssh_private_key = os.path.expanduser(o.get("ssh_private_key", "~/.ssh/id_ed25519"))
        self.ssh_user = o.get("ssh_user", "ubuntu")
        self.ssh_port = int(o.get("ssh_port", 22))
        self.runtime = o.get("runtime", "docker")
        if self.runtime not in ("docker", "process"):
            raise GwiError(f"{profile.path}: options.runtime: expected docker or process, got {self.runtime!r}")
        self.image = o.get("image", "gwi:latest")
        self.image_archive = o.get("image_archive")
        self.gwi_command = o.get("gwi_command", "gwi")
        self.remote_dir = o.get("remote_dir", "gwi-jobs")
        self.env = {str(k): str(v) for k, v in (o.get("env") or {}).items()}
        self.boot_timeout_s = float(o.get("boot_timeout_s", 900))
        self.timeout = float(o.get("request_timeout_s", 30))
        self.allow_local_store = bool(o.get("allow_local_store", False))
        self._api: LambdaAPI | None = None

    @property
    def api(self) -> LambdaAPI:
        if self._api is None:
            key_var = self.profile.credentials[0] if self.profile.credentials else "LAMBDA_API_KEY"
            key = os.environ.get(key_var)
            if not key:
                raise PlatformError(f"{self.name}: {key_var} is not set", "auth")
            self._api = LambdaAPI(self.api_url, key, timeout=self.timeout)
        return self._api

    def available(self) -> str | None:
        why = super().available()
        if why:
            return why
        if not Path(self.ssh_private_key).is_file():
            return f"SSH key {self.ssh_private_key} not found (options.ssh_private_key)"
        return None

    def reachable_store(self, store_url: str) -> str | None:
        if store_url.startswith("file://") and not self.allow_local_store:
            return f"{self.name} cannot reach a file:// store; use s3://"
        return None

    # -- launch ---------------------------------------------------------------------------------

    def launch(self, req: LaunchRequest) -> dict:
        done = self.recorded(req.workdir)
        if done:
            return done
        work = Path(req.workdir)
        why = self.reachable_store(req.store_url)
        if why:
            raise PlatformError(why, "config")
        (work / "request.json").write_text(json.dumps({
            "attempt_id": req.attempt_id, "argv": req.argv, "env": req.env, "kind": req.kind, "store": req.store_url}))
        name = "gwi-" + req.attempt_id
        handle = None
        if (work / "launching").exists():  # we asked before and never heard back: adopt what we made
            mine = [i for i in self.api.instances()
                    if i.get("name") == name and i.get("status") not in ("terminating", "terminated")]
            for extra in mine[1:]:  # more than one answer lost: keep one, stop paying for the rest
                self.api.terminate(extra["id"])
            if mine:
                inst = mine[0]
                handle = {"instance_id": inst["id"], "name": name, "type": inst.get("instance_type", {}).get("name"),
                          "region": inst.get("region", {}).get("name"), "workdir": str(work)}
        if handle is None:
            (work / "launching").touch()
            handle = self._launch_new(name, work)
        return self.record(work, handle)

    def _launch_new(self, name: str, work: Path) -> dict:
        offered = self.api.instance_types()
        tried = []
        for itype in self.types:
            info = offered.get(itype)
            if info is None:
                tried.append(f"{itype}: not offered")
                continue
            regions = [r["name"] for r in info.get("regions_with_capacity_available", [])
                       if not self.regions or r["name"] in self.regions]
            if not regions:
                tried.append(f"{itype}: no capacity" + (f" in {', '.join(self.regions)}" if self.regions else ""))
                continue
            for region in regions:
                try:
                    iid = self.api.launch(region, itype, self.ssh_key_name, name)
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
        if status == "booting":
            return Status(State.PENDING)
        if status != "active":
            if (work / "cancelled").exists():
                return Status(State.CANCELLED, None, "cancelled")
            self._terminate(handle)
            return Status(INSTANCE_STATES.get(status, State.LOST), None, f"instance {handle['instance_id']} is {status}")
        ip = inst.get("ip")
        if not ip:
            return Status(State.PENDING)
        if not (work / "started").exists():
            (work / "starting").touch()
            self._start(handle, ip)
            (work / "started").write_text(ip)
            return Status(State.RUNNING)
        out = self._ssh(ip, handle, f"cd {self._rdir(handle)} && (cat exit_code 2>/dev/null || "
                                    "(kill -0 $(cat pid 2>/dev/null) 2>/dev/null && echo alive) || echo gone)").strip()
        if out == "alive":
            return Status(State.RUNNING)
        if out == "gone":
            st = Status(State.LOST, None, "the job's process on the instance is gone without an exit status")
        else:
            code = int(out)
            st = Status(State.SUCCEEDED, 0) if code == 0 else Status(State.FAILED, code, self._death(ip, handle, code))
        self._finish(handle, ip, st)
        return st

    def cancel(self, handle: dict) -> None:
        work = Path(handle["workdir"])
        (work / "cancelled").touch()
        if (work / "started").exists():
            ip = (work / "started").read_text()
            try:
                self._ssh(ip, handle, f"cd {self._rdir(handle)} && kill -TERM -- -$(cat pid) 2>/dev/null; "
                                      f"docker rm -f {shlex.quote(handle['name'])} >/dev/null 2>&1; true", timeout=15)
                self._copy_log(handle, ip)
            except PlatformError:
                pass  # the instance is going anyway
        self._terminate(handle)
        if not (work / "final.json").exists():
            (work / "final.json").write_text(json.dumps({"state": "cancelled", "message": "cancelled"}))

    def logs(self, handle: dict, tail: int | None = None) -> str:
        work = Path(handle["workdir"])
        if (work / "log").exists():
            text = (work / "log").read_text(errors="replace")
        elif (work / "started").exists():
            text = self._ssh((work / "started").read_text(), handle, f"cat {self._rdir(handle)}/log 2>/dev/null; true")
        else:
            return ""
        return tail_lines(text, tail)

    def translate(self, exc: Exception) -> PlatformError:
        if isinstance(exc, PlatformError):
            return exc
        import paramiko

        if isinstance(exc, paramiko.BadHostKeyException):
            return PlatformError(f"{self.name}: host key of {exc.hostname} changed since first contact "
                                 f"(recorded {_fingerprint(exc.expected_key)}, offered {_fingerprint(exc.key)}); "
                                 "refusing to connect", "fatal")
        if isinstance(exc, paramiko.AuthenticationException):
            return PlatformError(f"{self.name}: SSH login refused ({exc}); check options.ssh_private_key and "
                                 f"ssh_key_name", "auth")
        if isinstance(exc, (paramiko.SSHException, OSError, EOFError)):
            return PlatformError(f"{self.name}: SSH: {type(exc).__name__}: {exc}", "retryable")
        return super().translate(exc)

    # -- SSH --------------------------------------------------------------------------------------

    def _rdir(self, handle: dict) -> str:
        return posixpath.join(self.remote_dir, handle["name"])

    def _client(self, ip: str, handle: dict, timeout: float = 20):
        import paramiko

        known = Path(handle["workdir"], "known_hosts")
        client = paramiko.SSHClient()
        if known.exists():
            client.load_host_keys(str(known))  # a changed key now raises BadHostKeyException
        client.set_missing_host_key_policy(_RecordFirst(known))
        try:
            client.connect(ip, port=self.ssh_port, username=self.ssh_user, key_filename=self.ssh_private_key,
                           timeout=timeout, banner_timeout=timeout, auth_timeout=timeout, look_for_keys=False,
                           allow_agent=False)
        except Exception as e:  # noqa: BLE001 - translated: host key, auth, network
            client.close()
            if isinstance(e, paramiko.BadHostKeyException):
                e.hostname = f"{ip}:{self.ssh_port}"
            raise self.translate(e) from None
        return client

    def _ssh(self, ip: str, handle: dict, command: str, timeout: float = 60) -> str:
        client = self._client(ip, handle)
        try:
            _, out, err = client.exec_command(command, timeout=timeout)
            text = out.read().decode(errors="replace")
            code = out.channel.recv_exit_status()
            if code != 0:
                raise PlatformError(f"{self.name}: remote command failed ({code}): {err.read().decode()[-500:]}", "retryable")
            return text
        except PlatformError:
            raise
        except Exception as e:  # noqa: BLE001
            raise self.translate(e) from None
        finally:
            client.close()

    def command(self, req: dict, gpus: int) -> str:
        """The shell command that runs the job on the instance."""
        argv = list(req["argv"])
        if argv and argv[0] == "gwi":
            argv = argv[1:]
        multi = req["kind"] == "train" and gpus > 1
        if self.runtime == "docker":
            head = ["docker", "run", "--rm", "--name", "gwi-" + req["attempt_id"], "--gpus", "all", "--network", "host",
                    "--shm-size", "16g", "--env-file", "docker.env"]
            if multi:
                return shlex.join(head + ["--entrypoint", "torchrun", self.image, "--standalone",
                                          f"--nproc-per-node={gpus}", "--no-python", "--", "gwi"] + argv)
            return shlex.join(head + [self.image] + argv)
        gwi = shlex.split(self.gwi_command)
        if multi:
            return shlex.join(["torchrun", "--standalone", f"--nproc-per-node={gpus}", "--no-python", "--"] + gwi + argv)
        return shlex.join(gwi + argv)

    def _start(self, handle: dict, ip: str) -> None:
        req = json.loads(Path(handle["workdir"], "request.json").read_text())
        env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}  # the store's credentials
        env.update(self.env)
        env.update(req["env"])
        bad = [k for k, v in env.items() if "\n" in v]
        if bad:
            raise PlatformError(f"{self.name}: environment variable {bad[0]} holds a newline; it cannot be passed", "config")
        # the same variables twice: shell-quoted for run.sh, raw for docker --env-file (which does not unquote)
        files = {"env": "".join(f"{k}={shlex.quote(v)}\n" for k, v in sorted(env.items())),
                 "docker.env": "".join(f"{k}={v}\n" for k, v in sorted(env.items()))}
        rdir = self._rdir(handle)
        client = self._client(ip, handle)
        try:
            sftp = client.open_sftp()
            try:
                _, out, _ = client.exec_command(f"mkdir -p {shlex.quote(rdir)} && cd {shlex.quote(rdir)} && pwd",
                                                timeout=60)
                home_dir = out.read().decode().strip()
                for fname, text in files.items():
                    with sftp.open(posixpath.join(home_dir, fname), "w") as f:
                        sftp.chmod(posixpath.join(home_dir, fname), 0o600)  # secrets: owner only
                        f.write(text)
                with sftp.open(posixpath.join(home_dir, "run.sh"), "w") as f:
                    f.write(_RUN_SH.format(command=self.command(req, int(handle.get("gpus") or 1))))
                if self.runtime == "docker" and self.image_archive:
                    self._send_image(client, sftp, home_dir, req["store"])
            finally:
                sftp.close()
            # every descriptor away from the channel, or the channel stays open as long as the job
            # once only: a start whose answer was lost must not start a second copy (mkdir is atomic)
            _, out, _ = client.exec_command(f"cd {shlex.quote(rdir)} && if mkdir started.lock 2>/dev/null; then "
                                            "(setsid nohup sh run.sh >/dev/null 2>&1 </dev/null &); fi; echo ok",
                                            timeout=60)
            if out.read().decode().strip() != "ok":
                raise PlatformError(f"{self.name}: could not start the job on {ip}", "retryable")
        except PlatformError:
            raise
        except Exception as e:  # noqa: BLE001
            raise self.translate(e) from None
        finally:
            client.close()

    def _send_image(self, client, sftp, home_dir: str, store_url: str) -> None:
        import tempfile

        from ..store import open_store

        with tempfile.TemporaryDirectory(prefix="gwi-image-") as tmp:
            local = Path(tmp) / "image.tar"
            open_store(store_url).get_file(self.image_archive, local)
            sftp.put(str(local), posixpath.join(home_dir, "image.tar"))
        _, out, err = client.exec_command(f"docker load -i {shlex.quote(posixpath.join(home_dir, 'image.tar'))}",
                                          timeout=1800)
        if out.channel.recv_exit_status() != 0:
            raise PlatformError(f"{self.name}: docker load failed: {err.read().decode()[-300:]}", "fatal")

    def _copy_log(self, handle: dict, ip: str) -> None:
        text = self._ssh(ip, handle, f"cat {self._rdir(handle)}/log 2>/dev/null; true")
        Path(handle["workdir"], "log").write_text(text)

    def _death(self, ip: str, handle: dict, code: int) -> str:
        try:
            self._copy_log(handle, ip)
            lines = [ln for ln in Path(handle["workdir"], "log").read_text().splitlines() if ln.strip()]
            errs = [ln for ln in lines if "error" in ln.lower()]
            last = (errs or lines or [""])[-1].strip()[:300]
        except PlatformError:
            last = ""
        return f"exit status {code}" + (f": {last}" if last else "")

    def _finish(self, handle: dict, ip: str, st: Status) -> None:
        try:
            if not Path(handle["workdir"], "log").exists():
                self._copy_log(handle, ip)
        except PlatformError:
            pass
        self._terminate(handle)
        Path(handle["workdir"], "final.json").write_text(json.dumps(
            {"state": st.state.value, "exit_code": st.exit_code, "message": st.message}))

    def _terminate(self, handle: dict) -> None:
        self.api.terminate(handle["instance_id"])


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
