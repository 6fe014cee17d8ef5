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
- **The attempt folder's files**: the cancel flag and the saved log (:func:`logs`).
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

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


def http_kind(status: int, otherwise: str = "fatal") -> str:
    """A provider's HTTP status -> a PlatformError kind, for the codes that mean the same everywhere."""
    if status in (401, 403):
        return "auth"
    if status == 429 or status >= 500:
        return "retryable"
    return otherwise


# -- the wrapper (machines gwi drives) ------------------------------------------------------------

PID, LOG, EXIT_CODE = "pid", "log", "exit_code"
ENV_FILE, DOCKER_ENV_FILE = "env", "docker.env"

# answers the exit status, "alive" or "gone" (killed with its wrapper, or the machine restarted)
WRAPPER_PROBE = (f"cat {EXIT_CODE} 2>/dev/null || (kill -0 $(cat {PID} 2>/dev/null) 2>/dev/null && echo alive) "
                 "|| echo gone")


def wrapper_script(command: str = '"$@"', env_file: str | None = None) -> str:
    """``sh`` code run in the attempt's folder: pid first, then the job (output to ``log``), then its
    exit status. Each record appears whole (write, then rename), so a reader never sees half of it."""
    lines = [f"set -a; . ./{env_file}; set +a"] if env_file else []
    lines += [f"echo $$ > {PID}.tmp && mv {PID}.tmp {PID}",
              f"{command} > {LOG} 2>&1 < /dev/null",
              "c=$?",
              f"echo $c > {EXIT_CODE}.tmp && mv {EXIT_CODE}.tmp {EXIT_CODE}",
              "exit $c"]
    return "\n".join(lines) + "\n"


def env_files(env: dict[str, str], who: str) -> dict[str, str]:
    """The environment as files beside the wrapper: shell-quoted for ``env`` (sourced by the
    wrapper) and raw for ``docker --env-file``, which does not unquote. Neither can hold a newline."""
    import shlex

    bad = [k for k, v in env.items() if "\n" in v]
    if bad:
        raise PlatformError(f"{who}: environment variable {bad[0]} holds a newline; it cannot be passed", "config")
    items = sorted(env.items())
    return {ENV_FILE: "".join(f"{k}={shlex.quote(v)}\n" for k, v in items),
            DOCKER_ENV_FILE: "".join(f"{k}={v}\n" for k, v in items)}


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


def ended(code: int, log: str = "", cancelled: bool = False) -> Status:
    """The end of a job that exited with ``code``; a non-zero exit after a cancel is the cancel."""
    if code == 0:
        return Status(State.SUCCEEDED, 0)
    if cancelled:
        return Status(State.CANCELLED, code, "cancelled")
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
rc = subprocess.call([sys.executable, "-m", "gwi"] + ARGV[1:], env={{**os.environ, **CREDENTIALS, **ENV}})
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
                    requirement: str = "gwi", wheels: str | None = None, offline: bool = False) -> list[str]:
    """Three pieces of Python, run in order in one interpreter (notebook cells, or one script):
    install gwi, read ``secrets`` from ``store``, run ``argv`` with ``env`` and exit with its status.
    gwi comes from a wheel under ``wheels`` (attached datasets; ``offline``: with its dependencies
    beside it) or, without ``wheels``, from pip's ``requirement``."""
    return [_INSTALL.format(requirement=_literal(requirement), wheels=_literal(wheels), offline=offline),
            _SECRETS.format(names=_literal(list(secrets)), code=store.code, where=store.where),
            _RUN.format(argv=_literal(list(argv)), env=_literal(dict(env)))]


def bootstrap_script(title: str, cells: list[str]) -> str:
    """The cells as one script, headed by a docstring saying what it is and that it holds no secret."""
    head = f'"""{title}: generated by gwi; holds no secret (they come from the platform\'s secret store)."""\n'
    return head + "\n\n".join(cells)


# -- the attempt's folder -------------------------------------------------------------------------

CANCELLED = "cancelled"


def mark_cancelled(workdir: str | Path) -> None:
    """Remember that gwi stopped this attempt, so the end that follows reads as a cancel."""
    Path(workdir, CANCELLED).touch()


def was_cancelled(workdir: str | Path) -> bool:
    return Path(workdir, CANCELLED).exists()


def saved_log(workdir: str | Path) -> str | None:
    p = Path(workdir, LOG)
    return p.read_text(errors="replace") if p.exists() else None


def save_log(workdir: str | Path, text: str | bytes) -> None:
    """Keep the job's output beside its handle: platforms forget it (a removed container, a
    terminated instance)."""
    p = Path(workdir, LOG)
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)


def logs(workdir: str | Path, tail: int | None, fetch: Callable[[], str] | None = None) -> str:
    """The last ``tail`` lines of the job's output: the saved copy, else what ``fetch`` gets from
    the platform now, else nothing yet."""
    text = saved_log(workdir)
    if text is None:
        text = fetch() if fetch else ""
    return tail_lines(text, tail)
