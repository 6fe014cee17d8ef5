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

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..errors import GwiError
from .base import Adapter, LaunchRequest, PlatformError, Profile, State, Status, tail_lines

RUNTIMES = ("auto", "docker", "process")
OPTIONS = ("runtime", "image", "grace_s")

# exit code -> message for the common deaths
_SIGNALS = {128 + s.value: f"killed by {s.name}" for s in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)}

# docker's container states -> ours (exited is decided by the exit code)
DOCKER_STATES = {"created": State.PENDING, "restarting": State.RUNNING, "running": State.RUNNING,
                 "paused": State.RUNNING, "removing": State.CANCELLED, "dead": State.LOST}

_WRAPPER = ('echo $$ > pid.tmp && mv pid.tmp pid; "$@" > log 2>&1 < /dev/null; c=$?; '
            'echo $c > exit_code.tmp && mv exit_code.tmp exit_code; exit $c')


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


class LocalAdapter(Adapter):
    def __init__(self, profile: Profile):
        super().__init__(profile)
        self.checked_options(OPTIONS)
        self.runtime_opt = profile.options.get("runtime", "auto")
        if self.runtime_opt not in RUNTIMES:
            raise GwiError(f"{profile.path}: options.runtime: expected one of {', '.join(RUNTIMES)}, "
                           f"got {self.runtime_opt!r}")
        self.image = profile.options.get("image", "gwi:latest")
        self.grace_s = float(profile.options.get("grace_s", 5))
        self._docker = None

    # -- runtime choice -------------------------------------------------------------------------

    def _docker_client(self):
        if self._docker is None:
            try:
                import docker

                client = docker.from_env(timeout=30)
                client.ping()
            except Exception as e:  # noqa: BLE001 - any failure means: no usable engine
                raise PlatformError(f"{self.name}: no docker engine ({type(e).__name__}: {e})", "config") from None
            self._docker = client
        return self._docker

    def runtime(self) -> str:
        if self.runtime_opt != "auto":
            return self.runtime_opt
        try:
            self._docker_client().images.get(self.image)
            return "docker"
        except Exception:  # noqa: BLE001 - no engine or no image: the process runtime
            return "process"

    def available(self) -> str | None:
        if self.runtime_opt == "docker":
            try:
                self._docker_client().images.get(self.image)
            except PlatformError as e:
                return str(e)
            except Exception:  # noqa: BLE001
                return f"image {self.image} not found in the docker engine (build it: docker build -t {self.image} .)"
        return super().available()

    # -- the four calls ---------------------------------------------------------------------------

    def launch(self, req: LaunchRequest) -> dict:
        work = Path(req.workdir)
        existing = self.recorded(work) or self._existing(work)
        if existing:
            return existing
        runtime = self.runtime()
        handle = self._launch_docker(req, work) if runtime == "docker" else self._launch_process(req, work)
        return self.record(work, handle)

    def query(self, handle: dict) -> Status:
        if handle["runtime"] == "docker":
            return self._query_docker(handle)
        work = Path(handle["workdir"])
        code = self._exit_code(work)
        if code is not None:
            self._reap(handle["pid"])
            if code == 0:
                return Status(State.SUCCEEDED, 0)
            if (work / "cancelled").exists():
                return Status(State.CANCELLED, code, "cancelled")
            return Status(State.FAILED, code, self._death_message(code, work))
        if _proc_start_time(handle["pid"]) == handle.get("start_time") and handle.get("start_time"):
            return Status(State.RUNNING)
        self._reap(handle["pid"])
        if self._exit_code(work) is not None:  # it finished between the two looks
            return self.query(handle)
        if (work / "cancelled").exists():
            return Status(State.CANCELLED, None, "cancelled")
        return Status(State.LOST, None, f"process {handle['pid']} is gone without an exit status "
                                        "(killed with its wrapper, or the machine restarted)")

    def cancel(self, handle: dict) -> None:
        if handle["runtime"] == "docker":
            return self._cancel_docker(handle)
        work = Path(handle["workdir"])
        (work / "cancelled").touch()
        pid = handle["pid"]
        if _proc_start_time(pid) != handle.get("start_time"):
            # the wrapper is gone; what it started may live on (re-parented): find it by its attempt id
            for orphan in _attempt_processes(Path(handle["workdir"]).name):
                try:
                    os.kill(orphan, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return
        for sig in (signal.SIGTERM, signal.SIGCONT):  # a stopped process only acts on TERM once continued
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline:
            self._reap(pid)
            if _proc_start_time(pid) is None:
                return
            time.sleep(0.1)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._reap(pid)

    def logs(self, handle: dict, tail: int | None = None) -> str:
        if handle["runtime"] == "docker":
            try:
                c = self._docker_client().containers.get(handle["container"])
                return c.logs(tail=tail if tail else "all").decode(errors="replace")
            except Exception as e:  # noqa: BLE001
                saved = Path(handle["workdir"], "log")
                if saved.exists():
                    return tail_lines(saved.read_text(errors="replace"), tail)
                raise self.translate(e) from None
        p = Path(handle["workdir"], "log")
        return tail_lines(p.read_text(errors="replace"), tail) if p.exists() else ""

    # -- the process runtime ----------------------------------------------------------------------

    def _existing(self, work: Path) -> dict | None:
        """A launch that already happened for this attempt: its recorded handle, or the wrapper that
        was started before a scheduler died (its pid file is written before ``gwi`` starts)."""
        if (work / "launching").exists():
            pid_file = work / "pid"
            for _ in range(30):  # the wrapper writes its pid first thing
                if pid_file.exists() or self._exit_code(work) is not None:
                    break
                time.sleep(0.1)
            if pid_file.exists():
                pid = int(pid_file.read_text())
                return self.record(work, {"runtime": "process", "pid": pid, "start_time": _proc_start_time(pid),
                                          "workdir": str(work)})
        return None

    def _launch_process(self, req: LaunchRequest, work: Path) -> dict:
        argv = list(req.argv)
        if argv and argv[0] == "gwi":
            argv = [sys.executable, "-m", "gwi"] + argv[1:]  # the same install as the scheduler's
        env = {k: v for k, v in os.environ.items() if k not in req.scrub_env}  # other platforms' keys stay here
        env.update(req.env, PYTHONUNBUFFERED="1")
        (work / "launching").write_text(json.dumps({"argv": argv, "time": time.time()}))
        (work / "command").write_text(" ".join(argv) + "\n")
        try:
            p = subprocess.Popen(["sh", "-c", _WRAPPER, "sh"] + argv, cwd=work, env=env, start_new_session=True,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError as e:
            raise PlatformError(f"{self.name}: cannot start {argv[0]}: {e}", "config") from None
        return {"runtime": "process", "pid": p.pid, "start_time": _proc_start_time(p.pid), "workdir": str(work)}

    @staticmethod
    def _exit_code(work: Path) -> int | None:
        try:
            return int((work / "exit_code").read_text().strip())
        except (OSError, ValueError):
            return None

    @staticmethod
    def _reap(pid: int) -> None:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass  # not our child (we were restarted): init reaps it

    @staticmethod
    def _death_message(code: int, work: Path) -> str:
        msg = _SIGNALS.get(code, f"exit status {code}")
        log = work / "log"
        if log.exists():
            lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
            errs = [ln for ln in lines if "error" in ln.lower()]
            last = (errs or lines or [""])[-1].strip()
            if last:
                msg += f": {last[:300]}"
        return msg

    # -- the docker runtime -----------------------------------------------------------------------

    def _launch_docker(self, req: LaunchRequest, work: Path) -> dict:
        import docker.errors
        from docker.types import DeviceRequest

        client = self._docker_client()
        name = "gwi-" + req.attempt_id.replace("/", "-").replace(".", "-")
        handle = {"runtime": "docker", "container": name, "workdir": str(work)}
        try:
            client.containers.get(name)
            return handle  # launched before a scheduler restart
        except docker.errors.NotFound:
            pass
        volumes = {}
        if req.store_url.startswith("file://"):  # the store at the same path inside
            root = req.store_url[len("file://"):]
            volumes[root] = {"bind": root, "mode": "rw"}
        from ..data.sync import cache_root

        cache = str(cache_root())
        volumes[cache] = {"bind": cache, "mode": "rw"}
        env = {k: v for k, v in os.environ.items() if k.startswith("AWS_") and k not in req.scrub_env}
        env.update(req.env, GWI_CACHE=cache, PYTHONUNBUFFERED="1", HOME="/tmp")
        gpus = [DeviceRequest(count=-1, capabilities=[["gpu"]])] if req.gpus and _has_nvidia() else []
        try:
            client.containers.run(self.image, command=req.argv[1:], name=name, detach=True, environment=env,
                                  volumes=volumes, user=f"{os.getuid()}:{os.getgid()}", network_mode="host",
                                  device_requests=gpus, working_dir="/tmp",
                                  labels={"gwi.attempt": req.attempt_id, "gwi.job": req.job})
        except docker.errors.APIError as e:
            raise self.translate(e) from None
        return handle

    def _query_docker(self, handle: dict) -> Status:
        import docker.errors

        try:
            c = self._docker_client().containers.get(handle["container"])
        except docker.errors.NotFound:
            if Path(handle["workdir"], "cancelled").exists():
                return Status(State.CANCELLED, None, "cancelled")
            return Status(State.LOST, None, f"container {handle['container']} is gone")
        except Exception as e:  # noqa: BLE001
            raise self.translate(e) from None
        if c.status != "exited":
            return Status(DOCKER_STATES.get(c.status, State.RUNNING))
        code = int(c.attrs["State"]["ExitCode"])
        Path(handle["workdir"], "log").write_bytes(c.logs())  # kept: the container goes now
        c.remove()
        if code == 0:
            return Status(State.SUCCEEDED, 0)
        if Path(handle["workdir"], "cancelled").exists():
            return Status(State.CANCELLED, code, "cancelled")
        if c.attrs["State"].get("OOMKilled"):
            return Status(State.FAILED, code, "out of memory (OOMKilled)")
        return Status(State.FAILED, code, self._death_message(code, Path(handle["workdir"])))

    def _cancel_docker(self, handle: dict) -> None:
        import docker.errors

        Path(handle["workdir"], "cancelled").touch()
        try:
            c = self._docker_client().containers.get(handle["container"])
            c.stop(timeout=int(self.grace_s))
            Path(handle["workdir"], "log").write_bytes(c.logs())
        except docker.errors.NotFound:
            pass
        except Exception as e:  # noqa: BLE001
            raise self.translate(e) from None

    def translate(self, exc: Exception) -> PlatformError:
        if isinstance(exc, PlatformError):
            return exc
        try:
            import docker.errors
            import requests
        except ImportError:  # pragma: no cover - docker is a dependency
            return super().translate(exc)
        if isinstance(exc, docker.errors.ImageNotFound):
            return PlatformError(f"{self.name}: image {self.image} not found (build it: docker build -t {self.image} .)",
                                 "config")
        if isinstance(exc, docker.errors.APIError):
            text = str(exc.explanation or exc)
            if "could not select device driver" in text or "nvidia" in text.lower():
                return PlatformError(f"{self.name}: GPUs requested but the engine has no NVIDIA runtime: {text}",
                                     "capacity")
            return PlatformError(f"{self.name}: docker: {text}",
                                 "retryable" if exc.status_code and exc.status_code >= 500 else "fatal")
        if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
            return PlatformError(f"{self.name}: docker engine not answering: {exc}", "retryable")
        return super().translate(exc)


def _attempt_processes(attempt_id: str) -> list[int]:
    """Live processes whose environment names this attempt (GWI_ATTEMPT), on Linux."""
    want = f"GWI_ATTEMPT={attempt_id}".encode()
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            if want in (p / "environ").read_bytes().split(b"\0") and _proc_start_time(int(p.name)) is not None:
                out.append(int(p.name))
        except OSError:
            continue
    return out


def _has_nvidia() -> bool:
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia").exists()
