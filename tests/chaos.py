"""Chaos: a multi-job plan over three platforms while a seeded driver injects real faults.

The world (:class:`World`): moto's S3 server behind a TCP proxy as the store (``tests/faults.py``
``TcpProxy``); two local-process platforms; a fake Lambda Cloud (``tests/fake_lambda.py``) behind an
HTTP fault proxy (:class:`HttpFaultProxy`, here) whose instances run jobs through a real OpenSSH
sshd (skipped when sshd is not installed); a fake Kaggle API (``tests/fake_kaggle.py``, behind the
official kaggle client) that runs the kernels pushed to it, the store's credentials in its secret
store; a size-limited tmpfs as the workers' cache when this process may mount one. Fake secrets sit
in the environment, as a user's would.

The driver (:class:`Driver`): ``random.Random(seed)`` picks, at random times, one of: a store
outage (drop, reset, stall) of a few seconds to ~20 s; SIGKILL of a worker; SIGSTOP with SIGCONT a
little later, or left stopped (the judge must replace it); 429, 500 or a hang from the cloud API,
and from the Kaggle API (on whatever call comes next: push, status, output);
sshd killed mid-command (restarted later, same host key); a full cache disk. Every fault is recorded.

The checks (:func:`check_round`, :func:`check_secrets`): every job succeeded; no run's published
step went backwards (sampled every pass); no attempt resumed below a step published before it
launched, and none started from scratch then; no instance left on the fake cloud and no worker
process left; no secret value in any file under the store, GWI_HOME, the cache, the far machine's
folders or the logs (the far machine's ``env`` file is deleted by the wrapper once read).
:func:`chaos` runs rounds of the plan and returns a :class:`Report`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from .conftest import start_moto
from .faults import TcpProxy
from .sshd import SSHD

# fake secrets: none of these values may appear in any file the run leaves behind
SECRETS = {
    "AWS_ACCESS_KEY_ID": "chaosAKID" + uuid.uuid4().hex[:12].upper(),
    "AWS_SECRET_ACCESS_KEY": "chaos-aws-secret-" + uuid.uuid4().hex,
    "LAMBDA_API_KEY": "chaos-lambda-key-" + uuid.uuid4().hex,
    "KAGGLE_KEY": "chaos-kaggle-key-" + uuid.uuid4().hex,
}

WORKER_COMMANDS = {"train", "data", "ensemble", "predict"}


# -- an HTTP fault proxy in front of a fake cloud API ---------------------------------------------

class HttpFaultProxy:
    """Forwards HTTP requests to ``upstream``; :meth:`arm` makes the next ``n`` answer 429 or 500,
    or hang (hold the connection ``hang_s`` without an answer, then close it)."""

    def __init__(self, upstream: str, hang_s: float = 20.0):
        u = urlsplit(upstream)
        self.upstream = (u.hostname, u.port)
        self.hang_s = hang_s
        self.lock = threading.Lock()
        self.armed: list[str] = []
        self.answered: dict[str, int] = {}
        self.stop = threading.Event()
        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.srv.daemon_threads = True
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"

    def arm(self, mode: str, n: int) -> None:
        assert mode in ("429", "500", "hang"), mode
        with self.lock:
            self.armed.extend([mode] * n)

    def close(self) -> None:
        self.stop.set()
        self.srv.shutdown()
        self.srv.server_close()

    def _next_fault(self) -> str | None:
        with self.lock:
            mode = self.armed.pop(0) if self.armed else None
            if mode:
                self.answered[mode] = self.answered.get(mode, 0) + 1
        return mode

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                mode = proxy._next_fault()
                if mode == "hang":
                    proxy.stop.wait(proxy.hang_s)
                    self.close_connection = True
                    return
                if mode in ("429", "500"):
                    msg = json.dumps({"error": {"code": "global/chaos", "message": f"chaos {mode}"}}).encode()
                    self.send_response(int(mode))
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                r = conn.getresponse()
                data = r.read()
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_DELETE = do_PUT = _any

        return Handler


# -- processes --------------------------------------------------------------------------------------

def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def worker_processes(prefix: str) -> list[dict]:
    """Live ``gwi`` worker processes (train, data, ensemble, predict) of attempts whose id starts with
    ``prefix`` (GWI_ATTEMPT in their environment): [{pid, attempt, command}]."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            env = (p / "environ").read_bytes().split(b"\0")
            argv = (p / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        att = next((e[12:].decode(errors="replace") for e in env if e.startswith(b"GWI_ATTEMPT=")), None)
        if att is None or not att.startswith(prefix) or not alive(int(p.name)):
            continue
        # the Python process itself (``python -m gwi CMD``), not a wrapper around it (sh, timeout)
        i = argv.index("gwi") if "gwi" in argv else -1
        if 0 < i < len(argv) - 1 and argv[i - 1] == "-m" and argv[i + 1] in WORKER_COMMANDS \
                and Path(argv[0]).name.startswith("python"):
            out.append({"pid": int(p.name), "attempt": att, "command": argv[i + 1]})
    return out


def descendants(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        st = _stat(int(p.name)) if p.name.isdigit() else None
        if st is not None:
            kids.setdefault(int(st[1]), []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


# -- the world --------------------------------------------------------------------------------------

LOCAL_PROFILE = "adapter: local\ncapacity: 2\nstart_timeout_s: 120\noptions: {runtime: process, grace_s: 2}\n"


class World:
    """Everything the plan runs in; a context manager that restores the environment and stops all."""

    def __init__(self, root: Path, *, use_lambda: bool = True, use_kaggle: bool = True, use_tmpfs: bool = True,
                 cache_mb: int = 160):
        self.root = Path(root)
        self.use_lambda = use_lambda and SSHD is not None
        self.use_kaggle = use_kaggle
        self.kg = None
        self.use_tmpfs = use_tmpfs
        self.cache_mb = cache_mb
        self.tmpfs = False
        self._env_before: dict[str, str | None] = {}
        self._stack = contextlib.ExitStack()
        self.lam = self.sshd = self.api_proxy = None

    # environment
    def _setenv(self, **kv) -> None:
        for k, v in kv.items():
            self._env_before.setdefault(k, os.environ.get(k))
            os.environ[k] = v

    def __enter__(self):
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def _start(self) -> None:
        import boto3

        import gwi.store

        self.root.mkdir(parents=True, exist_ok=True)
        self.moto, moto_url = start_moto()
        self._stack.callback(self._stop_moto)
        self.moto_url = moto_url
        u = urlsplit(moto_url)
        self.proxy = self._stack.enter_context(TcpProxy(u.hostname, u.port))
        self.home = self.root / "home"
        self.cache = self._make_cache()
        self._setenv(AWS_ENDPOINT_URL=self.proxy.url, AWS_DEFAULT_REGION="us-east-1", GWI_HOME=str(self.home),
                     GWI_CACHE=str(self.cache), OMP_NUM_THREADS="1", GWI_STORE_PATIENCE_S="120", **SECRETS)
        for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
            self._env_before.setdefault(k, os.environ.pop(k, None))
        gwi.store._CLIENTS.clear()
        self.bucket = f"chaos-{uuid.uuid4().hex[:10]}"
        self.s3_direct = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
        self.s3_direct.create_bucket(Bucket=self.bucket)
        self.store = f"s3://{self.bucket}"
        self.platforms = self.root / "platforms"
        self.platforms.mkdir(exist_ok=True)
        (self.platforms / "local-a.yaml").write_text(LOCAL_PROFILE)
        (self.platforms / "local-b.yaml").write_text(LOCAL_PROFILE)
        if self.use_lambda:
            self._start_lambda()
        if self.use_kaggle:
            self._start_kaggle()
        self._setenv(GWI_PLATFORMS=str(self.platforms))
        from gwi.adapters.base import load_profiles
        from gwi.scheduler import Scheduler

        self.sched = Scheduler(self.home, profiles=load_profiles([self.platforms]))
        self._stack.callback(self.sched.close)

    def _stop_moto(self) -> None:
        self.moto.terminate()
        self.moto.wait(timeout=10)

    def _make_cache(self) -> Path:
        """A small tmpfs (a disk that can be filled) when this process may mount one, else a folder."""
        cache = self.root / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        if self.use_tmpfs and os.geteuid() == 0 and shutil.which("mount"):
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.cache_mb}m,mode=0700", "tmpfs", str(cache)],
                               check=False, capture_output=True, text=True)
            if r.returncode == 0:
                self.tmpfs = True
                self._stack.callback(lambda: subprocess.run(["umount", "-l", str(cache)], check=False, capture_output=True))
        return cache

    def _start_lambda(self) -> None:
        from .fake_lambda import LambdaState, serve
        from .sshd import Sshd, stop_remote_jobs

        self.lam = LambdaState(SECRETS["LAMBDA_API_KEY"])
        srv, api = serve(self.lam)
        self._stack.callback(srv.shutdown)
        self.api_proxy = HttpFaultProxy(api.rsplit("/api/v1", 1)[0])
        self._stack.callback(self.api_proxy.close)
        self.sshd = Sshd(self.root / "sshd").start()
        self._stack.callback(lambda: self.sshd.stop())
        self.remote = self.root / "remote"
        self._stack.callback(stop_remote_jobs, self.remote)  # the fake instances' jobs and watchdogs
        opts = {"api_url": self.api_proxy.url + "/api/v1", "instance_types": ["gpu_1x_a10"], "ssh_key_name": "chaos",
                "ssh_private_key": str(self.sshd.client_key), "ssh_user": self.sshd.user, "ssh_port": self.sshd.port,
                "runtime": "process", "gwi_command": f"{sys.executable} -m gwi", "remote_dir": str(self.remote),
                "poweroff_command": "true",  # never the default `sudo shutdown` here
                "env": {"GWI_CACHE": str(self.root / "remote-cache"), "OMP_NUM_THREADS": "1"},
                "request_timeout_s": 5}
        (self.platforms / "lam.yaml").write_text(json.dumps({
            "adapter": "lambda", "gpus": 1, "usd_per_hour": 0.75, "capacity": 2, "credentials": ["LAMBDA_API_KEY"],
            "start_timeout_s": 120, "options": opts}))

    def _start_kaggle(self) -> None:
        from .fake_kaggle import KaggleState, serve

        # the kernels reach the store through the same faulty proxy, with its credentials from the
        # secret store (never in the pushed code)
        self.kg = KaggleState(self.root / "kaggle", "chaos", SECRETS["KAGGLE_KEY"], {
            "AWS_ACCESS_KEY_ID": SECRETS["AWS_ACCESS_KEY_ID"], "AWS_SECRET_ACCESS_KEY": SECRETS["AWS_SECRET_ACCESS_KEY"],
            "AWS_ENDPOINT_URL": self.proxy.url, "AWS_DEFAULT_REGION": "us-east-1"})
        srv, url = serve(self.kg)
        self._stack.callback(srv.shutdown)
        self._stack.callback(self.kg.stop_all)
        self._setenv(KAGGLE_USERNAME="chaos", KAGGLE_CONFIG_DIR=str(self.root / "kaggle-config"))
        (self.platforms / "kg.yaml").write_text(json.dumps({
            "adapter": "kaggle", "gpus": 1, "capacity": 2, "credentials": ["KAGGLE_USERNAME", "KAGGLE_KEY"],
            "start_timeout_s": 120, "options": {"api_endpoint": url, "wheel_dataset": "chaos/gwi-wheels",
                                                "request_timeout_s": 5}}))

    @property
    def platform_names(self) -> list[str]:
        return (["lam"] if self.use_lambda else []) + (["kg"] if self.use_kaggle else []) + ["local-a", "local-b"]

    def heal(self) -> None:
        """Undo every fault still in force (the proxy passes, sshd runs, the disk has room)."""
        self.proxy.set("pass")
        if self.api_proxy is not None:
            with self.api_proxy.lock:
                self.api_proxy.armed.clear()
        if self.kg is not None:
            with self.kg.lock:
                self.kg.faults.clear()
        if self.sshd is not None and (self.sshd.proc is None or self.sshd.proc.poll() is not None):
            self.sshd.start()
        for f in self.cache.glob(".chaos-filler*"):
            f.unlink(missing_ok=True)

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            for k, v in self._env_before.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            self._env_before.clear()


# -- the plan ---------------------------------------------------------------------------------------

def plan_yaml(world: World, name: str, dataset: str, epochs: int) -> str:
    """A tiny synth, two tiny training jobs with checkpoints every few steps, an ensemble of both."""
    p = world.platform_names
    rot = lambda k: json.dumps(p[k % len(p):] + p[:k % len(p)])
    cfg = (f"{{epochs: {epochs}, batch_size: 4, lr: 0.003, fold: 0, folds: 4, checkpoint_every: 4, "
           "keep_checkpoints: 2}")
    return f"""name: {name}
store: {world.store}
defaults: {{heartbeat_s: 0.5, limits: {{stall_s: 15, retries: 2, start_timeout_s: 120}}}}
jobs:
  - {{name: data, kind: synth, backend: deepwave, dataset: {dataset}, families: [FlatVel_A], samples: 16, seed: 3, platforms: {rot(0)}}}
  - {{name: tr1, kind: train, model: inversionnet, preset: tiny, dataset: {dataset}, platforms: {rot(1)},
     config: {cfg}}}
  - {{name: tr2, kind: train, model: inversionnet, preset: tiny, dataset: {dataset}, platforms: {rot(2)},
     config: {cfg}}}
  - {{name: ens, kind: ensemble, members: [tr1, tr2], dataset: {dataset}, platforms: {rot(0)},
     config: {{mc_samples: 2}}}}
"""


TRAIN_JOBS = ("tr1", "tr2")


# -- the driver -------------------------------------------------------------------------------------

@dataclass
class Fault:
    t: float  # seconds since the driver started
    kind: str
    target: str
    detail: str = ""


class Driver:
    """Injects faults at random (seeded) times while ``active``; every fault goes in ``faults``."""

    def __init__(self, world: World, seed: int, mean_gap_s: float = 6.0):
        self.w = world
        self.rng = random.Random(seed)
        self.mean_gap_s = mean_gap_s
        self.faults: list[Fault] = []
        self.t0 = time.monotonic()
        self.prefix = ""  # attempt ids of the round in progress start with this
        self.active = threading.Event()
        self.quit = threading.Event()
        self.stopped: list[int] = []  # pids left stopped
        self.timers: list[threading.Timer] = []
        self.lock = threading.Lock()  # one store/sshd/disk fault at a time: each has one undo
        self.busy: set[str] = set()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def kinds(self) -> list[str]:
        k = ["store_drop", "store_reset", "store_stall", "sigkill", "sigstop_cont", "sigstop_left"]
        if self.w.use_lambda:
            k += ["http_429", "http_500", "http_hang", "sshd_kill"]
        if self.w.use_kaggle:
            k += ["kaggle_429", "kaggle_500", "kaggle_hang"]
        if self.w.tmpfs:
            k += ["disk_full"]
        return k

    def start(self) -> Driver:
        self.thread.start()
        return self

    def close(self) -> None:
        self.quit.set()
        self.active.clear()
        self.thread.join(timeout=30)
        for t in self.timers:
            t.cancel()
        self.w.heal()

    def record(self, kind: str, target: str, detail: str = "") -> None:
        self.faults.append(Fault(round(time.monotonic() - self.t0, 1), kind, target, detail))

    def _loop(self) -> None:
        while not self.quit.is_set():
            if self.quit.wait(self.rng.expovariate(1 / self.mean_gap_s)):
                return
            if not self.active.is_set():
                continue
            kind = self.rng.choice(self.kinds())
            try:
                getattr(self, "_" + kind.split("_")[0])(kind)
            except Exception as e:  # noqa: BLE001 - a fault that could not be injected is recorded, not fatal
                self.record(kind, "-", f"not injected: {type(e).__name__}: {e}")

    def _later(self, delay: float, fn, *args) -> None:
        t = threading.Timer(delay, fn, args)
        t.daemon = True
        self.timers.append(t)
        t.start()

    def _exclusive(self, what: str, duration: float, undo) -> bool:
        with self.lock:
            if what in self.busy:
                return False
            self.busy.add(what)

        def done():
            try:
                undo()
            finally:
                with self.lock:
                    self.busy.discard(what)

        self._later(duration, done)
        return True

    # store outages: drop, reset, stall, through the TCP proxy in front of S3
    def _store(self, kind: str) -> None:
        mode = kind.split("_")[1]
        secs = round(self.rng.uniform(2, 20), 1)
        if self._exclusive("store", secs, lambda: self.w.proxy.set("pass")):
            self.w.proxy.set(mode)
            self.record(kind, "s3 proxy", f"{secs} s")
        else:
            self.record(kind, "-", "not injected: an outage is in force")

    def _victim(self, train_only: bool) -> dict | None:
        procs = [p for p in worker_processes(self.prefix) if p["pid"] not in self.stopped
                 and (p["command"] == "train" or not train_only)]
        return self.rng.choice(sorted(procs, key=lambda p: p["pid"])) if procs else None

    def _sigkill(self, kind: str) -> None:
        v = self._victim(train_only=self.rng.random() < 0.8)
        if not v:
            self.record(kind, "-", "not injected: no live worker")
        else:
            os.kill(v["pid"], signal.SIGKILL)
            self.record(kind, v["attempt"], f"pid {v['pid']} ({v['command']})")

    def _sigstop(self, kind: str) -> None:
        v = self._victim(train_only=True)
        if not v:
            self.record(kind, "-", "not injected: no live training process")
            return
        os.kill(v["pid"], signal.SIGSTOP)
        if kind == "sigstop_cont":
            secs = round(self.rng.uniform(1, 8), 1)
            self._later(secs, lambda pid=v["pid"]: alive(pid) and os.kill(pid, signal.SIGCONT))
            self.record(kind, v["attempt"], f"pid {v['pid']} stopped {secs} s")
        else:
            self.stopped.append(v["pid"])
            self.record(kind, v["attempt"], f"pid {v['pid']} stopped for good")

    # the cloud API: 429, 500, hang
    def _http(self, kind: str) -> None:
        n = self.rng.randint(1, 4) if kind != "http_hang" else 1
        self.w.api_proxy.arm(kind.split("_")[1], n)
        self.record(kind, "lambda api", f"next {n} request(s)")

    # the Kaggle API: 429, 500 or a hang on whatever comes next (a push, a status, the output)
    def _kaggle(self, kind: str) -> None:
        mode = kind.split("_")[1]
        n = self.rng.randint(1, 4) if mode != "hang" else 1
        with self.w.kg.lock:
            self.w.kg.faults.extend([mode if mode == "hang" else int(mode)] * n)
        self.record(kind, "kaggle api", f"next {n} request(s)")

    # sshd killed (the daemon and its sessions), restarted a few seconds later with the same host key
    def _sshd(self, kind: str) -> None:
        secs = round(self.rng.uniform(1, 10), 1)
        sshd = self.w.sshd
        if sshd.proc is None or not self._exclusive("sshd", secs, sshd.start):
            return
        pid = sshd.proc.pid
        sessions = [p for p in descendants(pid) if Path(f"/proc/{p}/comm").exists()
                    and Path(f"/proc/{p}/comm").read_text().strip().startswith("sshd")]
        for p in [pid] + sessions:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        sshd.proc.wait()
        sshd.proc = None
        self.record(kind, f"sshd :{sshd.port}", f"{len(sessions)} session(s) killed, down {secs} s")

    # the cache disk full (tmpfs filled), freed a few seconds later
    def _disk(self, kind: str) -> None:
        secs = round(self.rng.uniform(2, 10), 1)
        filler = self.w.cache / ".chaos-filler"
        if not self._exclusive("disk", secs, lambda: filler.unlink(missing_ok=True)):
            return
        st = os.statvfs(self.w.cache)
        free = st.f_bavail * st.f_frsize
        with open(filler, "wb") as f, contextlib.suppress(OSError):
            os.posix_fallocate(f.fileno(), 0, free)
        self.record(kind, "cache tmpfs", f"{free // 2**20} MiB filled for {secs} s")


# -- sampling published steps -----------------------------------------------------------------------

class StepSampler:
    """Samples each training run's published step (its latest pointer) from a thread, with the time
    of each sample: what the checks compare resumes and the monotonic rule against."""

    def __init__(self, interval: float = 0.3):
        self.interval = interval
        self.runs: dict[str, list[tuple[float, int | None]]] = {}
        self.quit = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def watch(self, urls: list[str]) -> None:
        for u in urls:
            self.runs.setdefault(u, [])

    def start(self) -> StepSampler:
        self.thread.start()
        return self

    def close(self) -> None:
        self.quit.set()
        self.thread.join(timeout=200)

    def sample(self) -> None:
        from gwi.errors import StoreError
        from gwi.runs import Run

        for url, seq in list(self.runs.items()):
            try:
                ptr = Run(url).pointer()
            except StoreError:
                continue  # the store is down from here too: no sample
            # stamped when the answer came: a read held up by an outage tells what was there at its end
            seq.append((time.time(), int(ptr["latest"]["step"]) if ptr else None))

    def _loop(self) -> None:
        while not self.quit.wait(self.interval):
            self.sample()

    def published_before(self, url: str, t: float) -> int:
        return max((s for ts, s in self.runs.get(url, []) if ts <= t and s is not None), default=0)


# -- one round --------------------------------------------------------------------------------------

@dataclass
class RoundResult:
    name: str
    wall_s: float
    jobs: dict[str, str]
    attempts: int
    longest_pass_s: float
    problems: list[str] = field(default_factory=list)
    steps_lost: int = 0
    instances_left: int = 0
    processes_left: int = 0
    notes: list[str] = field(default_factory=list)


def run_round(world: World, driver: Driver, sampler: StepSampler, name: str, *, epochs: int,
              storm_s: float, timeout_s: float) -> RoundResult:
    from gwi.runs import run_url
    from gwi.spec import load_spec

    s = world.sched
    spec_path = world.root / f"{name}.yaml"
    spec_path.write_text(plan_yaml(world, name, f"d-{name}", epochs))
    s.submit(load_spec(spec_path, profiles=s.profiles))
    sampler.watch([run_url(world.store, name, j) for j in TRAIN_JOBS])
    driver.prefix = f"{name}."
    t0 = time.monotonic()
    driver.active.set()
    longest, slow = 0.0, []
    while time.monotonic() - t0 < timeout_s:
        if time.monotonic() - t0 > storm_s:
            driver.active.clear()  # the storm ends; the plan must finish in the calm after
        p0 = time.monotonic()
        s.reconcile()
        took = time.monotonic() - p0
        longest = max(longest, took)
        if took > 10:
            slow.append(f"a scheduler pass took {took:.1f} s (from {p0 - driver.t0:.1f} s)")
        if all(j["state"] in ("succeeded", "failed", "cancelled") for j in s.state.jobs(name)):
            break
        time.sleep(0.3)
    driver.active.clear()
    wall = time.monotonic() - t0
    jobs = {j["name"]: j["state"] for j in s.state.jobs(name)}
    n_att = sum(len(s.state.attempts(f"{name}/{j}")) for j in jobs)
    return RoundResult(name, round(wall, 1), jobs, n_att, round(longest, 2), notes=slow)


# -- the checks -------------------------------------------------------------------------------------

def _events(s, job_id: str, last: int = 25, until: float | None = None) -> str:
    """The job's events (up to ``until``, a time), newest ``last``, with their clock time and attempt."""
    evs = [e for e in s.state.events(job_id) if until is None or e["time"] <= until]
    return "\n".join(f"    {time.strftime('%X', time.localtime(e['time']))} {e['attempt_id'] or '-'} {e['kind']} "
                     f"{e['message'][:300]}" for e in evs[-last:])


def check_round(world: World, sampler: StepSampler, r: RoundResult) -> None:
    """Fill ``r``'s problems and figures; leaves the round's machines and processes stopped."""
    from gwi.runs import run_url

    s = world.sched
    for job, state in r.jobs.items():
        if state != "succeeded":
            r.problems.append(f"{r.name}/{job} ended {state}, not succeeded; its events:\n" + _events(s, f"{r.name}/{job}"))
    for job in TRAIN_JOBS:
        url = run_url(world.store, r.name, job)
        _check_monotonic(r, url, sampler.runs.get(url, []))
        for a in s.state.attempts(f"{r.name}/{job}"):
            _check_resume(world, sampler, r, url, a)
    _wind_down(world, r)


def _check_monotonic(r: RoundResult, url: str, seq: list) -> None:
    best = None
    for t, step in seq:
        if best is not None and (step is None or step < best):
            r.problems.append(f"{url}: published step went backwards: {best} -> {step} at {time.strftime('%X', time.localtime(t))}")
            r.steps_lost += best - (step or 0)
        if step is not None:
            best = step if best is None else max(best, step)


def _heartbeat(url: str) -> dict:
    from gwi.errors import StoreError
    from gwi.store import split_url

    try:
        store, name = split_url(url)
        return json.loads(store.get_bytes(name))
    except (StoreError, ValueError):
        return {}


def _check_resume(world: World, sampler: StepSampler, r: RoundResult, url: str, a) -> None:
    """The attempt resumed from no less than what was published when it launched (and what the
    scheduler recorded), unless its beat names a fallback from a corrupt checkpoint."""
    hb = _heartbeat(a["heartbeat_url"])
    log_path = world.home / "attempts" / a["id"] / "log"
    log = log_path.read_text(errors="replace") if log_path.exists() else ""
    m = re.search(r"resumed from checkpoints/step-(\d+)", log)
    if "resumed_from" in hb:
        actual = int(hb["resumed_from"] or 0)
    elif m:
        actual = int(m.group(1))
        r.notes.append(f"{a['id']}: heartbeat has no resumed_from; used the log")
    elif "starting from scratch" in log or re.search(r"^epoch 1/", log, re.MULTILINE):
        actual = 0
    else:
        return  # it died before it resumed (or its log never came back): nothing to judge
    floor = max(a["resumed_from_step"] or 0, sampler.published_before(url, a["launched_at"]))
    if floor and "starting from scratch" in log:
        r.problems.append(f"{a['id']} on {a['platform']}: 'starting from scratch' in its log, but step {floor} "
                          f"was published before it launched; events:\n"
                          + _events(world.sched, a["job_id"], until=(a["ended_at"] or 2e9) + 1))
    if actual < floor and not hb.get("resume_fallback"):
        r.steps_lost += floor - actual
        seen = [f"{time.strftime('%X', time.localtime(t))}.{int(t * 10) % 10}={v}" for t, v in sampler.runs.get(url, [])
                if a["launched_at"] - 10 <= t <= a["launched_at"] + 2]
        lines = [ln for ln in log.splitlines() if "resum" in ln or "scratch" in ln or "checkpoint" in ln][:5]
        r.problems.append(f"{a['id']} on {a['platform']}: resumed from step {actual}, but step {floor} was published "
                          f"before it launched at {time.strftime('%X', time.localtime(a['launched_at']))} (scheduler "
                          f"recorded {a['resumed_from_step']}); published steps sampled around then: {' '.join(seen)}; "
                          f"its log: {lines}; events:\n" + _events(world.sched, a["job_id"], until=(a["ended_at"] or 2e9) + 1))


def _wind_down(world: World, r: RoundResult) -> None:
    """No instance on the fake cloud, no worker process: counted, reported, then stopped by force."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        left = worker_processes(f"{r.name}.")
        inst = world.lam.running() if world.lam else []
        if not left and not inst:
            break
        world.sched.reconcile()  # a pass may still be finishing a cleanup
        time.sleep(0.5)
    if inst:
        r.instances_left = len(inst)
        r.problems.append(f"{r.name}: {len(inst)} instance(s) left running on the fake Lambda: "
                          + ", ".join(f"{i['name']} ({i['status']})" for i in inst))
        with world.lam.lock:
            for i in inst:
                i["status"] = "terminated"
    kernels = [ref for ref, k in (world.kg.kernels.items() if world.kg else []) if k["proc"].poll() is None
               and not k["cancelled"] and ref.split("/")[-1].startswith(f"gwi-{r.name}")]
    if kernels:
        r.problems.append(f"{r.name}: kernel(s) left running on the fake Kaggle: {', '.join(kernels)}")
    if left:
        r.processes_left = len(left)
        r.problems.append(f"{r.name}: worker processes left: " + ", ".join(
            f"pid {p['pid']} {p['command']} of {p['attempt']} ({_stat(p['pid'])[0]})" for p in left))
        for p in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p["pid"], signal.SIGKILL)
                os.kill(p["pid"], signal.SIGCONT)


def check_secrets(world: World) -> list[str]:
    """Every file the run left (store, GWI_HOME, cache, the far machine, sshd's folder, the specs)
    and every log: no secret value."""
    found = []
    values = {k: v.encode() for k, v in SECRETS.items()}
    for obj in _store_objects(world):
        data = world.s3_direct.get_object(Bucket=world.bucket, Key=obj)["Body"].read()
        found += [f"{k} in store object {obj}" for k, v in values.items() if v in data]
    for path in _files(world.root):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        for k, v in values.items():
            if v in data:
                found.append(f"{k} in {path}")
    return found


def _store_objects(world: World) -> list[str]:
    keys = []
    for page in world.s3_direct.get_paginator("list_objects_v2").paginate(Bucket=world.bucket):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def _files(root: Path):
    kaggle_secret_store = root / "kaggle" / "secrets.json"  # Kaggle's own secret store: where they belong
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath, n)
            if p.is_file() and not p.is_symlink() and ".chaos-filler" not in n and p != kaggle_secret_store:
                yield p


# -- the whole run ----------------------------------------------------------------------------------

@dataclass
class Report:
    seed: int
    rounds: list[RoundResult]
    faults: list[Fault]
    secrets: list[str]
    wall_s: float
    world: str

    @property
    def problems(self) -> list[str]:
        return [p for r in self.rounds for p in r.problems] + [f"secret leaked: {s}" for s in self.secrets]

    def table(self) -> str:
        by_kind: dict[str, int] = {}
        for f in self.faults:
            if "not injected" not in f.detail:
                by_kind[f.kind] = by_kind.get(f.kind, 0) + 1
        jobs = sum(len(r.jobs) for r in self.rounds)
        ok = sum(s == "succeeded" for r in self.rounds for s in r.jobs.values())
        rows = [("seed", self.seed), ("world", self.world), ("rounds", len(self.rounds)),
                ("faults injected", len(self.faults) - sum("not injected" in f.detail for f in self.faults))]
        rows += [(f"  {k}", v) for k, v in sorted(by_kind.items())]
        rows += [("jobs succeeded", f"{ok}/{jobs}"), ("attempts", sum(r.attempts for r in self.rounds)),
                 ("steps lost", sum(r.steps_lost for r in self.rounds)),
                 ("instances left", sum(r.instances_left for r in self.rounds)),
                 ("processes left", sum(r.processes_left for r in self.rounds)),
                 ("secret values found", len(self.secrets)),
                 ("longest scheduler pass", f"{max((r.longest_pass_s for r in self.rounds), default=0):.1f} s"),
                 ("wall time", f"{self.wall_s:.0f} s"), ("problems", len(self.problems))]
        w = max(len(k) for k, _ in rows)
        return "\n".join(f"| {k:<{w}} | {v} |" for k, v in rows)

    def fault_log(self) -> str:
        return "\n".join(f"  {f.t:7.1f} s  {f.kind:<13} {f.target:<22} {f.detail}" for f in self.faults)

    def text(self) -> str:
        notes = list(dict.fromkeys(n for r in self.rounds for n in r.notes))
        out = [self.table(), "faults:", self.fault_log()]
        if notes:
            out += ["notes:"] + [f"  {n}" for n in notes[:20]]
        if self.problems:
            out += ["PROBLEMS:"] + [f"- {p}" for p in self.problems]
        return "\n".join(out)


def chaos(root: Path, seed: int, *, rounds: int | None = None, minutes: float | None = None, epochs: int = 40,
          storm_s: float = 80, round_timeout_s: float = 240, mean_gap_s: float = 6.0, use_lambda: bool = True,
          log=print) -> Report:
    """Rounds of the plan under the driver's faults: ``rounds`` of them, or as many as fit ``minutes``."""
    t0 = time.monotonic()
    results: list[RoundResult] = []
    with World(root, use_lambda=use_lambda) as w:
        driver = Driver(w, seed, mean_gap_s).start()
        sampler = StepSampler().start()
        try:
            k = 0
            while (rounds is None or k < rounds) and (minutes is None or time.monotonic() - t0 < minutes * 60):
                k += 1
                r = run_round(w, driver, sampler, f"chaos{k}", epochs=epochs, storm_s=storm_s,
                              timeout_s=round_timeout_s)
                w.heal()
                sampler.sample()
                check_round(w, sampler, r)
                results.append(r)
                log(f"round {k}: {r.wall_s:.0f} s, {r.attempts} attempts, jobs {r.jobs}, problems {len(r.problems)}")
        finally:
            driver.close()
            sampler.close()
        secrets = check_secrets(w)
        desc = "local-a, local-b (process)" + (", lam (fake Lambda + sshd)" if w.use_lambda else "") + \
            (", kg (fake Kaggle API, kernels as processes)" if w.use_kaggle else "") + \
            (f"; cache: {w.cache_mb} MiB tmpfs" if w.tmpfs else "; cache: a folder (no disk-full fault)")
        for p in worker_processes("chaos"):  # nothing of ours may outlive the run
            with contextlib.suppress(ProcessLookupError):
                os.kill(p["pid"], signal.SIGKILL)
    return Report(seed, results, driver.faults, secrets, time.monotonic() - t0, desc)
