"""The local platform: this machine, through the docker engine or as a plain process.

Profile options (``platforms/local.yaml``)::

    options:
      runtime: auto      # docker | process | auto (docker when an engine answers and the image exists)
      image: gwi:latest  # the gwi image for the docker runtime
      grace_s: 5         # SIGTERM -> SIGKILL on cancel

The process runtime starts ``gwi`` under a small ``sh`` wrapper in its own session, so it outlives
a killed scheduler; the wrapper records the exit status in the attempt's folder, which is how a
restarted scheduler learns how a process it no longer parents ended. A process that is gone without
an exit status was killed with its wrapper (or the machine rebooted): lost.

The docker runtime runs the image's ``gwi`` entrypoint in a container named after the attempt (so
a second launch finds the first), with GPUs passed through when the machine has them, the host's
network, and a ``file://`` store mounted at the same path.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from . import kit
from .base import Adapter, Finding, LaunchRequest, Offer, PlatformError, PlatformOptions, State, Status, bounds

# docker's container states -> ours (exited is decided by the exit code)
DOCKER_STATES = {"created": State.PENDING, "restarting": State.RUNNING, "running": State.RUNNING,
                 "paused": State.RUNNING, "removing": State.CANCELLED, "dead": State.LOST}


@dataclass(frozen=True)
class LocalOptions(PlatformOptions):
    runtime: Literal["auto", "docker", "process"] = "auto"  # auto: docker when an engine answers and has the image
    image: str = "gwi:latest"
    grace_s: float = bounds(5.0, minimum=0)  # SIGTERM -> SIGKILL on cancel


def _proc_start_time(pid: int) -> str | None:
    """Kernel start time of ``pid`` (guards against a recycled pid); None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        if sys.platform.startswith("linux"):
            return None
        try:
            os.kill(pid, 0)
            return "?"
        except OSError:
            return None
    rest = stat[stat.rindex(")") + 2:].split()
    if rest[0] in ("Z", "X"):
        return None
    return rest[19]


@functools.cache
def local_gpus() -> tuple[str, ...]:
    """The GPUs ``nvidia-smi`` lists here, by name (none without the tool or a driver). Asked once per
    process: a plan's check and every placement pass would otherwise run it per job."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return tuple(g.strip() for g in out.splitlines() if g.strip())


def local_memory_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError):
        return None
    return round(kb / 2**20, 1)


class LocalAdapter(Adapter):
    """Dispatches to the runtime a launch used (its handle says which): :class:`_Process` or :class:`_Docker`."""

    Options = LocalOptions

    def __init__(self, profile):
        super().__init__(profile)
        self.process = _Process(self.name, self.options.grace_s)
        self._docker: _Docker | None = None
        self._offer: Offer | None = None

    @property
    def docker(self) -> _Docker:
        """The docker runtime, connected on first use (PlatformError ``config`` without an engine)."""
        if self._docker is None:
            self._docker = _Docker(self.name, self.options, self.translate)
        return self._docker

    def runtime(self) -> str:
        if self.options.runtime != "auto":
            return self.options.runtime
        try:
            return "docker" if self.docker.has_image() else "process"
        except PlatformError:  # no engine: the process runtime
            return "process"

    def available(self) -> str | None:
        if self.options.runtime == "docker":
            image = self.options.image
            try:
                if not self.docker.has_image():
                    return f"image {image} not found in the docker engine (build it: docker build -t {image} .)"
            except PlatformError as e:
                return str(e)
        return super().available()

    def offers(self) -> Offer:
        """This machine as it is, where the profile does not say: its GPUs (``nvidia-smi``), CPUs and memory."""
        p = self.profile
        if self._offer is None:
            gpus = local_gpus()
            self._offer = Offer(p.gpus or len(gpus), p.gpu or (gpus[0] if gpus else None), p.cpus or os.cpu_count(),
                                p.memory_gb or local_memory_gb())
        return self._offer

    def probe(self, deadline_s: float) -> list[Finding]:
        """How jobs would run here: the runtime, the CPUs, memory and GPUs."""
        why = self.available()
        if why:
            return [Finding(False, why, f"docker build -t {self.options.image} ." if "image" in why else
                            "start the docker engine, or set options.runtime: process")]
        return [Finding(True, f"runtime {self.runtime()}: {self.offers().text()}, {self.profile.capacity} job(s) at a time")]

    def _of(self, handle: dict):
        return self.docker if handle["runtime"] == "docker" else self.process

    # -- the four calls ---------------------------------------------------------------------------

    def launch(self, req: LaunchRequest) -> dict:
        work = kit.private_dir(req.workdir)
        existing = self.recorded(work) or self.process.existing(work)
        if existing:
            return self.record(work, existing)
        runtime = self.docker if self.runtime() == "docker" else self.process
        return self.record(work, runtime.launch(self._thread_share(req), work))

    def _thread_share(self, req: LaunchRequest) -> LaunchRequest:
        """Each of ``capacity`` jobs at once gets its share of this machine's cores as its OpenMP
        threads (unless this machine sets OMP_NUM_THREADS itself): torch's default of every core per
        process makes jobs sharing the cores run many times slower than their share."""
        if "OMP_NUM_THREADS" in os.environ or "OMP_NUM_THREADS" in req.env:
            return req
        share = max(1, (os.cpu_count() or 1) // max(1, self.profile.capacity))
        return dataclasses.replace(req, env={**req.env, "OMP_NUM_THREADS": str(share)})

    def query(self, handle: dict) -> Status:
        return self._of(handle).query(handle)

    def cancel(self, handle: dict) -> None:
        kit.mark_cancelled(handle["workdir"])
        self._of(handle).cancel(handle)

    def logs(self, handle: dict, tail: int | None = None) -> str:
        fetch = (lambda: self.docker.logs(handle)) if handle["runtime"] == "docker" else None
        return kit.logs(handle["workdir"], tail, fetch)

    # -- the jobs gwi started here (for `gwi instances`) ------------------------------------------

    def instances(self, workroot: Path | None = None) -> list[dict]:
        """The attempts running on this machine: process groups whose processes carry an attempt id
        (GWI_ATTEMPT) and run in a folder under ``workroot`` (the asking state's attempts, so another
        GWI_HOME's jobs are not ours), and containers gwi labelled with a folder there."""
        root = Path(workroot).resolve() if workroot else None
        groups: dict[int, dict] = {}
        for pid, attempt, cwd in _attempt_process_list():
            if root is not None and not _under(cwd, root):
                continue
            try:
                pgid = os.getpgid(pid)
            except ProcessLookupError:
                continue
            g = groups.setdefault(pgid, {"id": f"pgid:{pgid}", "name": f"process group {pgid}", "attempt_id": attempt,
                                         "state": "running", "started": None, "usd_per_hour": self.profile.usd_per_hour,
                                         "pids": []})
            g["pids"].append(pid)
        out = list(groups.values())
        if self.options.runtime != "process":
            try:
                out += self.docker.instances(root, self.profile.usd_per_hour)
            except PlatformError:
                pass  # no engine: no containers
        return out

    def stop_instance(self, inst: dict) -> None:
        """Stop one job that :meth:`instances` listed: its process group (TERM, KILL after grace_s) or container."""
        kind, _, ident = inst["id"].partition(":")
        if kind == "container":
            self.docker.stop_container(ident)
            return
        self.process.stop_group(int(ident))

    def translate(self, exc: Exception) -> PlatformError:
        if isinstance(exc, PlatformError):
            return exc
        try:
            import docker.errors
            import requests
        except ImportError:  # pragma: no cover - docker is a dependency
            return super().translate(exc)
        image = self.options.image
        if isinstance(exc, docker.errors.ImageNotFound):
            return PlatformError(f"{self.name}: image {image} not found (build it: docker build -t {image} .)",
                                 "config")
        if isinstance(exc, docker.errors.APIError):
            text = str(exc.explanation or exc)
            if "could not select device driver" in text or "nvidia" in text.lower():
                return PlatformError(f"{self.name}: GPUs requested but the engine has no NVIDIA runtime: {text}",
                                     "capacity")
            return PlatformError(f"{self.name}: docker: {text}", kit.http_kind(exc.status_code or 0))
        if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
            return PlatformError(f"{self.name}: docker engine not answering: {exc}", "retryable")
        return super().translate(exc)


class _Process:
    """``gwi`` as a process of this machine, under the kit's wrapper in a session of its own."""

    def __init__(self, name: str, grace_s: float):
        self.name, self.grace_s = name, grace_s

    def existing(self, work: Path) -> dict | None:
        """The wrapper started for this attempt before a scheduler died (it writes its pid before
        ``gwi`` starts), or None."""
        if (work / "launching").exists():
            for _ in range(30):  # the wrapper writes its pid first thing
                if kit.read_pid(work) is not None or kit.read_exit_code(work) is not None:
                    break
                time.sleep(0.1)
            pid = kit.read_pid(work)
            if pid is not None:
                return {"runtime": "process", "pid": pid, "start_time": _proc_start_time(pid), "workdir": str(work)}
        return None

    def launch(self, req: LaunchRequest, work: Path) -> dict:
        argv = list(req.argv)
        if argv and argv[0] == "gwi":
            argv = [sys.executable, "-m", "gwi"] + argv[1:]  # the same install as the scheduler's
        env = kit.job_env(req, base=dict(os.environ))  # this machine's settings, less other platforms' keys
        kit.write_private(work / "launching", json.dumps({"argv": argv, "time": time.time()}))
        kit.write_private(work / "command", " ".join(argv) + "\n")
        wrapper = kit.wrapper_script(hours_limit=req.hours_limit)  # the job stops itself at its hour limit
        try:
            p = subprocess.Popen(["sh", "-c", wrapper, "sh"] + argv, cwd=work, env=env,
                                 start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        except OSError as e:
            raise PlatformError(f"{self.name}: cannot start {argv[0]}: {e}", "config") from None
        return {"runtime": "process", "pid": p.pid, "start_time": _proc_start_time(p.pid), "workdir": str(work)}

    def query(self, handle: dict) -> Status:
        work, pid = Path(handle["workdir"]), handle["pid"]
        code = kit.read_exit_code(work)
        if code is not None:
            _reap(pid)
            return kit.ended(code, kit.saved_log(work) or "", kit.was_cancelled(work), kit.read_over_limit(work))
        if handle.get("start_time") and _proc_start_time(pid) == handle["start_time"]:
            return Status(State.RUNNING)
        _reap(pid)
        if kit.read_exit_code(work) is not None:  # it finished between the two looks
            return self.query(handle)
        if kit.was_cancelled(work):
            return Status(State.CANCELLED, None, "cancelled")
        return Status(State.LOST, None, f"process {pid} is gone without an exit status "
                                        "(killed with its wrapper, or the machine restarted)")

    def cancel(self, handle: dict) -> None:
        pid = handle["pid"]
        if _proc_start_time(pid) != handle.get("start_time"):
            # the wrapper is gone; what it started may live on (re-parented): find it by its attempt id
            for orphan in _attempt_processes(Path(handle["workdir"]).name):
                try:
                    os.kill(orphan, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return
        self.stop_group(pid)

    def stop_group(self, pgid: int) -> None:
        """TERM the process group (and CONT: a stopped process only acts on TERM once continued),
        KILL what is left of it after ``grace_s``."""
        for sig in (signal.SIGTERM, signal.SIGCONT):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline:
            _reap(pgid)
            if not _group_alive(pgid):
                return
            time.sleep(0.1)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _reap(pgid)


class _Docker:
    """The image's ``gwi`` entrypoint in a container named after the attempt (so a second launch
    finds the first), with the host's network, GPUs when the machine has them, and a ``file://``
    store and the data cache mounted at their own paths."""

    def __init__(self, name: str, options: LocalOptions, translate):
        try:
            import docker

            client = docker.from_env(timeout=30)
            client.ping()
        except Exception as e:  # noqa: BLE001 - any failure means: no usable engine
            raise PlatformError(f"{name}: no docker engine ({type(e).__name__}: {e})", "config") from None
        self.client, self.name, self.options, self.translate = client, name, options, translate

    def has_image(self) -> bool:
        try:
            self.client.images.get(self.options.image)
            return True
        except Exception:  # noqa: BLE001 - not found, or the engine cannot say: not usable
            return False

    def launch(self, req: LaunchRequest, work: Path) -> dict:
        import docker.errors
        from docker.types import DeviceRequest

        from ..data.sync import cache_root

        name = "gwi-" + req.attempt_id.replace("/", "-").replace(".", "-")
        handle = {"runtime": "docker", "container": name, "workdir": str(work)}
        try:
            self.client.containers.get(name)
            return handle  # launched before a scheduler restart
        except docker.errors.NotFound:
            pass
        cache = str(cache_root())
        volumes = {cache: {"bind": cache, "mode": "rw"}}
        if req.store_url.startswith("file://"):  # the store at the same path inside
            root = req.store_url[len("file://"):]
            volumes[root] = {"bind": root, "mode": "rw"}
        env = kit.job_env(req, base=kit.lent_credentials(), extra={"GWI_CACHE": cache, "HOME": "/tmp"})
        gpus = [DeviceRequest(count=-1, capabilities=[["gpu"]])] if req.gpus and _has_nvidia() else []
        # the container's own deadline: it stops itself at the attempt's hour limit (TERM, KILL a minute later)
        secs = kit.limit_seconds(req.hours_limit)
        entrypoint = None if secs is None else [
            "timeout", "--signal=TERM", f"--kill-after={kit.KILL_AFTER_S}", str(secs), "gwi"]
        try:
            # init: docker's tini is PID 1, so a docker stop's SIGTERM reaches gwi, which checkpoints
            self.client.containers.run(self.options.image, command=req.argv[1:], name=name, detach=True,
                                       entrypoint=entrypoint, environment=env, volumes=volumes, init=True,
                                       user=f"{os.getuid()}:{os.getgid()}",
                                       network_mode="host", device_requests=gpus, working_dir="/tmp",
                                       labels={"gwi.attempt": req.attempt_id, "gwi.job": req.job,
                                               "gwi.workdir": str(work)})
        except docker.errors.APIError as e:
            raise self.translate(e) from None
        return handle

    def query(self, handle: dict) -> Status:
        import docker.errors

        work = handle["workdir"]
        try:
            c = self.client.containers.get(handle["container"])
        except docker.errors.NotFound:
            if kit.was_cancelled(work):
                return Status(State.CANCELLED, None, "cancelled")
            return Status(State.LOST, None, f"container {handle['container']} is gone")
        except Exception as e:  # noqa: BLE001
            raise self.translate(e) from None
        if c.status != "exited":
            return Status(DOCKER_STATES.get(c.status, State.RUNNING))
        code = int(c.attrs["State"]["ExitCode"])
        kit.save_log(work, c.logs())  # kept: the container goes now
        c.remove()
        st = kit.ended(code, kit.saved_log(work) or "", kit.was_cancelled(work))
        if st.state == State.FAILED and c.attrs["State"].get("OOMKilled"):
            return Status(State.FAILED, code, "out of memory (OOMKilled)")
        return st

    def cancel(self, handle: dict) -> None:
        import docker.errors

        try:
            c = self.client.containers.get(handle["container"])
            c.stop(timeout=int(self.options.grace_s))
            kit.save_log(handle["workdir"], c.logs())
        except docker.errors.NotFound:
            pass
        except Exception as e:  # noqa: BLE001
            raise self.translate(e) from None

    def logs(self, handle: dict) -> str:
        try:
            return self.client.containers.get(handle["container"]).logs().decode(errors="replace")
        except Exception as e:  # noqa: BLE001
            raise self.translate(e) from None

    def instances(self, root: Path | None, usd_per_hour: float) -> list[dict]:
        """Running containers gwi labelled with an attempt whose folder is under ``root``."""
        try:
            found = self.client.containers.list(filters={"label": "gwi.attempt"})
        except Exception as e:  # noqa: BLE001
            raise self.translate(e) from None
        out = []
        for c in found:
            labels = c.labels or {}
            if root is not None and not _under(Path(labels.get("gwi.workdir", "/")), root):
                continue
            out.append({"id": f"container:{c.name}", "name": c.name, "attempt_id": labels.get("gwi.attempt"),
                        "state": c.status, "started": c.attrs.get("State", {}).get("StartedAt"),
                        "usd_per_hour": usd_per_hour})
        return out

    def stop_container(self, name: str) -> None:
        import docker.errors

        try:
            self.client.containers.get(name).stop(timeout=int(self.options.grace_s))
        except docker.errors.NotFound:
            pass
        except Exception as e:  # noqa: BLE001
            raise self.translate(e) from None


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child (we were restarted): init reaps it


def _attempt_processes(attempt_id: str) -> list[int]:
    """Live processes whose environment names this attempt (GWI_ATTEMPT), on Linux."""
    return [pid for pid, attempt, _ in _attempt_process_list() if attempt == attempt_id]


def _attempt_process_list() -> list[tuple[int, str, Path]]:
    """(pid, attempt id, working folder) of every live process of ours carrying GWI_ATTEMPT, on Linux."""
    out = []
    proc = Path("/proc")
    for p in proc.iterdir() if proc.is_dir() else ():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            env = (p / "environ").read_bytes().split(b"\0")
            attempt = next((v[len(b"GWI_ATTEMPT="):].decode() for v in env if v.startswith(b"GWI_ATTEMPT=")), None)
            if attempt and _proc_start_time(int(p.name)) is not None:
                out.append((int(p.name), attempt, Path(os.readlink(p / "cwd"))))
        except (OSError, ValueError):
            continue  # gone, or another user's
    return out


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group is alive (a zombie, which only its parent may reap, is not)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
    for p in proc.iterdir():
        if p.name.isdigit():
            try:
                rest = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(rest[2]) == pgid and rest[0] not in ("Z", "X"):
                return True
    return False


def _has_nvidia() -> bool:
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia").exists()
