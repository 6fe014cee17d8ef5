"""What every adapter does the same way, written once.

- **The job's environment** (:func:`job_env`): gwi's own settings from the scheduler (attempt,
  heartbeat URL and interval) win over everything; the store's credentials are lent by this machine
  (:func:`lent_credentials`) or read by name from the platform's secret store (:data:`STORE_SECRETS`);
  another platform's secrets (``LaunchRequest.scrub_env``) never reach a job.
- **The wrapper** (:func:`wrapper_script`) for machines gwi drives itself (this one, an instance over
  SSH): it records the job's pid, log and exit status as files in the attempt's folder, so a
  scheduler that was restarted in between can still tell how the job ended (:func:`read_exit_code`,
  :data:`WRAPPER_PROBE`, :func:`ended`).
- **The bootstrap** (:func:`bootstrap_cells`) for runtimes gwi only hands code to (a Kaggle kernel, a
  Colab notebook): install gwi when missing, read the store's credentials from the platform's secret
  store by name, run the command, exit with its status. The code holds names, never secret values.
- **The attempt folder's files**: owner-only (:func:`private_dir`, :func:`write_private`): they may
  hold a rendered job or an environment; the cancel flag and the saved log (:func:`logs`).
- **Deadlines** (:func:`with_retries`): every platform call has a timeout; what is retryable
  (throttling, 5xx, resets, timeouts) is tried again after a jittered, doubling pause until an
  overall deadline; the far side of every attempt stops itself at its hour limit (the wrapper's
  ``timeout``, the bootstrap's wait), whether or not a scheduler is still watching.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from ..progress import ENV_INTERVAL, ENV_URL
from .base import LaunchRequest, PlatformError, State, Status, tail_lines

# -- the job's environment ------------------------------------------------------------------------

# the variables that give a job the store (boto3's standard names): lent by this machine, or read by
# name from a platform's secret store
STORE_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                 "AWS_DEFAULT_REGION")


def lent_credentials(environ: dict | None = None) -> dict[str, str]:
    """This machine's store settings (``AWS_*``), for a job on a machine of ours that has none."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k.startswith("AWS_")}


def job_env(req: LaunchRequest, *, base: dict | None = None, extra: dict | None = None,
            heartbeat: bool = True) -> dict[str, str]:
    """The environment of ``req``'s job: ``base`` (what this machine lends it) less other platforms'
    secrets, the adapter's ``extra`` settings, then gwi's own (``req.env``), which win. Output is
    unbuffered so a log shows what happened up to a kill. ``heartbeat=False`` for a job that cannot
    reach the store (it is followed by its platform's state)."""
    env = {k: v for k, v in (base or {}).items() if k not in req.scrub_env}
    env.update(extra or {})
    env.update(req.env)
    env["PYTHONUNBUFFERED"] = "1"
    if not heartbeat:
        for k in (ENV_URL, ENV_INTERVAL):
            env.pop(k, None)
    return env


def unreachable_file_store(who: str, store_url: str) -> str | None:
    """The refusal for a remote runtime and a store that is a folder on this machine."""
    if store_url.startswith("file://"):
        return f"{who} cannot reach a file:// store; use s3://"
    return None


T = TypeVar("T")


def with_retries(call: Callable[[float], T], translate: Callable[[Exception], PlatformError], *, deadline_s: float,
                 sleep: Callable[[float], None] = time.sleep, first_pause_s: float = 1.0,
                 max_pause_s: float = 30.0) -> T:
    """``call(seconds_left)`` until it answers; a retryable failure (as ``translate`` judges it) is
    tried again after a jittered, doubling pause while the pause still ends before ``deadline_s``.
    ``call`` bounds its own wait by ``seconds_left`` (never less than a second), so a hanging server
    costs at most about ``deadline_s`` plus one try, never forever. Raises the translated error."""
    deadline = time.monotonic() + deadline_s
    pause = first_pause_s
    while True:
        try:
            return call(max(deadline - time.monotonic(), 1.0))
        except Exception as e:  # noqa: BLE001 - translated: the adapter's one place for that
            err = translate(e)
            wait = pause * (0.5 + random.random())  # jitter: many clients must not retry in step
            if not err.retryable or time.monotonic() + wait > deadline:
                raise err from None
        sleep(wait)
        pause = min(pause * 2, max_pause_s)


def http_kind(status: int, otherwise: str = "fatal") -> str:
    """A provider's HTTP status -> a PlatformError kind, for the codes that mean the same everywhere."""
    if status in (401, 403):
        return "auth"
    if status == 429 or status >= 500:
        return "retryable"
    return otherwise


# -- the wrapper (machines gwi drives) ------------------------------------------------------------

PID, LOG, EXIT_CODE, OVER_LIMIT = "pid", "log", "exit_code", "over_limit"
ENV_FILE, DOCKER_ENV_FILE = "env", "docker.env"
KILL_AFTER_S = 60  # TERM at the hour limit, KILL this long after: time to publish a last checkpoint

# answers the exit status (then why it was stopped, if it hit its hour limit), "alive" or "gone"
# (killed with its wrapper, or the machine restarted)
WRAPPER_PROBE = (f"cat {EXIT_CODE} 2>/dev/null && {{ cat {OVER_LIMIT} 2>/dev/null; true; }} || "
                 f"(kill -0 $(cat {PID} 2>/dev/null) 2>/dev/null && echo alive) || echo gone")


def limit_seconds(hours_limit: float | None) -> int | None:
    """An hour limit in whole seconds (at least one), or None for none."""
    return None if hours_limit is None else max(1, math.ceil(hours_limit * 3600))


def wrapper_script(command: str = '"$@"', env_file: str | None = None, hours_limit: float | None = None) -> str:
    """``sh`` code run in the attempt's folder: pid first, then the job (output to ``log``), then its
    exit status. Each record appears whole (write, then rename), so a reader never sees half of it.

    With ``hours_limit`` the job carries its own deadline: TERM when it is reached, KILL a minute
    later (coreutils ``timeout``; ``--foreground`` keeps the job in the wrapper's process group, so a
    cancel that signals the group still reaches it), and ``over_limit`` says so beside the status.
    A machine without ``timeout`` (macOS) runs the job unbounded: its scheduler's limit still holds."""
    secs = limit_seconds(hours_limit)
    # the env file holds secrets: gone as soon as they are in the wrapper's environment, so a finished
    # or killed attempt leaves none on the machine
    lines = [f"set -a; . ./{env_file}; set +a; rm -f ./{env_file}"] if env_file else []
    lines += [f"echo $$ > {PID}.tmp && mv {PID}.tmp {PID}", "t0=$(date +%s)"]
    if secs is not None:
        lines.append(f'limit=""; command -v timeout >/dev/null 2>&1 && '
                     f'limit="timeout --foreground --signal=TERM --kill-after={KILL_AFTER_S} {secs}"')
    lines += [f"{'$limit ' if secs is not None else ''}{command} > {LOG} 2>&1 < /dev/null",
              "c=$?"]
    if secs is not None:
        reason = f"over its hour limit: stopped on its machine after {hours_limit:g} h ({secs} s)"
        lines.append(f'if [ $c -ne 0 ] && [ $(( $(date +%s) - t0 )) -ge {secs} ]; then '
                     f'echo "{reason}" > {OVER_LIMIT}; fi')
    lines += [f"echo $c > {EXIT_CODE}.tmp && mv {EXIT_CODE}.tmp {EXIT_CODE}",
              "exit $c"]
    return "\n".join(lines) + "\n"


def read_over_limit(folder: str | Path) -> str | None:
    """Why the job was stopped on its machine, if it reached its hour limit there."""
    try:
        return Path(folder, OVER_LIMIT).read_text().strip() or None
    except OSError:
        return None


def env_files(env: dict[str, str], who: str) -> dict[str, str]:
    """The environment as files beside the wrapper: ``env``, shell-quoted, sourced (then deleted) by
    the wrapper; ``docker.env`` only the names, so ``docker --env-file`` takes each value from the
    wrapper's exported environment and no value stays on disk. No value can hold a newline."""
    import shlex

    bad = [k for k, v in env.items() if "\n" in v]
    if bad:
        raise PlatformError(f"{who}: environment variable {bad[0]} holds a newline; it cannot be passed", "config")
    items = sorted(env.items())
    return {ENV_FILE: "".join(f"{k}={shlex.quote(v)}\n" for k, v in items),
            DOCKER_ENV_FILE: "".join(f"{k}\n" for k, _ in items)}


def read_exit_code(folder: str | Path) -> int | None:
    """The exit status the wrapper recorded, or None while it runs (or if it was killed)."""
    try:
        return int(Path(folder, EXIT_CODE).read_text().strip())
    except (OSError, ValueError):
        return None


def read_pid(folder: str | Path) -> int | None:
    try:
        return int(Path(folder, PID).read_text().strip())
    except (OSError, ValueError):
        return None


# exit status -> the deaths worth naming
_SIGNALS = {128 + s.value: f"killed by {s.name}" for s in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)}


def death_message(code: int, log: str) -> str:
    """``exit status 3: <the last line saying error>``, or the signal that killed it."""
    msg = _SIGNALS.get(code, f"exit status {code}")
    lines = [ln for ln in log.splitlines() if ln.strip()]
    errs = [ln for ln in lines if "error" in ln.lower()]
    last = (errs or lines or [""])[-1].strip()
    return f"{msg}: {last[:300]}" if last else msg


def ended(code: int, log: str = "", cancelled: bool = False, over_limit: str | None = None) -> Status:
    """The end of a job that exited with ``code``; a non-zero exit after a cancel is the cancel, and
    one stopped by its own deadline says so (``over_limit``: the wrapper's reason)."""
    if code == 0:
        return Status(State.SUCCEEDED, 0)
    if cancelled:
        return Status(State.CANCELLED, code, "cancelled")
    if over_limit:
        return Status(State.FAILED, code, over_limit)
    return Status(State.FAILED, code, death_message(code, log))


# -- the bootstrap (runtimes gwi hands code to) ---------------------------------------------------


@dataclass(frozen=True)
class SecretStore:
    """How a platform's runtime reads a secret: ``code`` binds ``get(name) -> value`` (one line),
    ``where`` tells a person where to add one."""

    code: str
    where: str


_INSTALL = '''\
import glob, importlib.util, os, subprocess, sys
REQUIREMENT = {requirement}
WHEELS = os.environ.get("GWI_WHEELS", {wheels})
OFFLINE = {offline}


def install_gwi():
    """pip-install gwi unless the runtime has it: a wheel from the attached data (WHEELS), else REQUIREMENT."""
    if importlib.util.find_spec("gwi") is not None:
        return
    cmd = [sys.executable, "-m", "pip", "install", "-q"]
    if WHEELS:
        found = sorted(glob.glob(os.path.join(WHEELS, "*", "gwi-*.whl")) +
                       glob.glob(os.path.join(WHEELS, "*", "*", "gwi-*.whl")))
        if not found:
            sys.exit("gwi: no gwi wheel in the attached datasets; attach the one `gwi kaggle package` made")
        cmd.append(found[-1])
        if OFFLINE:
            cmd += ["--no-index", "--find-links", os.path.dirname(found[-1])]
    else:
        cmd.append(REQUIREMENT)
    subprocess.check_call(cmd)


install_gwi()
'''

_SECRETS = '''\
SECRETS = {names}


def read_secrets():
    """The store's credentials, by name, from the platform's secret store (never from this code)."""
    try:
        {code}
    except ImportError:
        print("gwi: no secret store here; using this environment's credentials", flush=True)
        return {{}}
    found = {{}}
    for name in SECRETS:
        try:
            found[name] = get(name)
        except Exception:
            print(f"gwi: secret {{name}} is not set ({where})", flush=True)
    return found


CREDENTIALS = read_secrets()
'''

_RUN = '''\
import os, subprocess, sys
ARGV = {argv}
ENV = {env}
LIMIT_S = {limit}  # the attempt's hour limit: the job stops itself here, whether or not gwi still watches
job = subprocess.Popen([sys.executable, "-m", "gwi"] + ARGV[1:], env={{**os.environ, **CREDENTIALS, **ENV}})
try:
    rc = job.wait(timeout=LIMIT_S)
except subprocess.TimeoutExpired:
    print(f"gwi: over its hour limit ({{LIMIT_S}} s): stopping the job", flush=True)
    job.terminate()
    try:
        job.wait(timeout={kill_after})
    except subprocess.TimeoutExpired:
        job.kill()
    job.wait()
    rc = 124
print(f"gwi exited with status {{rc}}", flush=True)
if rc != 0:
    raise SystemExit(rc)
'''


def _literal(value) -> str:
    """A Python literal on one line (JSON's form is Python's for strings, lists and dicts of them)."""
    if value is None:
        return "None"
    return json.dumps(value, ensure_ascii=False, sort_keys=isinstance(value, dict))


def bootstrap_cells(argv: Sequence[str], env: dict[str, str], secrets: Sequence[str], store: SecretStore, *,
                    requirement: str = "gwi", wheels: str | None = None, offline: bool = False,
                    hours_limit: float | None = None) -> list[str]:
    """Three pieces of Python, run in order in one interpreter (notebook cells, or one script):
    install gwi, read ``secrets`` from ``store``, run ``argv`` with ``env`` and exit with its status
    (124 when it reached ``hours_limit``: stopped there with TERM, KILL a minute later).
    gwi comes from a wheel under ``wheels`` (attached datasets; ``offline``: with its dependencies
    beside it) or, without ``wheels``, from pip's ``requirement``."""
    return [_INSTALL.format(requirement=_literal(requirement), wheels=_literal(wheels), offline=offline),
            _SECRETS.format(names=_literal(list(secrets)), code=store.code, where=store.where),
            _RUN.format(argv=_literal(list(argv)), env=_literal(dict(env)), limit=limit_seconds(hours_limit),
                        kill_after=KILL_AFTER_S)]


def bootstrap_script(title: str, cells: list[str]) -> str:
    """The cells as one script, headed by a docstring saying what it is and that it holds no secret."""
    head = f'"""{title}: generated by gwi; holds no secret (they come from the platform\'s secret store)."""\n'
    return head + "\n\n".join(cells)


# -- the attempt's folder -------------------------------------------------------------------------

CANCELLED = "cancelled"


def private_dir(path: str | Path) -> Path:
    """``path`` as a folder only its owner can enter (0700), its parent created the same way if new:
    an attempt's folder holds its rendered job, its environment's names and its log."""
    p = Path(path)
    p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    p.mkdir(mode=0o700, exist_ok=True)
    os.chmod(p, 0o700)  # made earlier with the umask's bits
    return p


def write_private(path: str | Path, data: str | bytes) -> None:
    """Write a file only its owner can read (0600), from its creation on: never a moment readable."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # it may have existed with wider bits
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def mark_cancelled(workdir: str | Path) -> None:
    """Remember that gwi stopped this attempt, so the end that follows reads as a cancel."""
    write_private(Path(workdir, CANCELLED), b"")


def was_cancelled(workdir: str | Path) -> bool:
    return Path(workdir, CANCELLED).exists()


def saved_log(workdir: str | Path) -> str | None:
    p = Path(workdir, LOG)
    return p.read_text(errors="replace") if p.exists() else None


def save_log(workdir: str | Path, text: str | bytes) -> None:
    """Keep the job's output beside its handle: platforms forget it (a removed container, a
    terminated instance)."""
    write_private(Path(workdir, LOG), text)


def logs(workdir: str | Path, tail: int | None, fetch: Callable[[], str] | None = None) -> str:
    """The last ``tail`` lines of the job's output: the saved copy, else what ``fetch`` gets from
    the platform now, else nothing yet."""
    text = saved_log(workdir)
    if text is None:
        text = fetch() if fetch else ""
    return tail_lines(text, tail)
