"""What every platform adapter is: four functions over a launch, one state enum, one error type.

An adapter turns a :class:`LaunchRequest` (the ``gwi`` command line a job runs, its environment and
its limits) into a running process somewhere, and answers for it afterwards:

- ``launch(req) -> handle``: start it. Idempotent on ``req.attempt_id``: a scheduler that died
  between asking and recording may ask again and must get the same launch back, not a second one.
- ``query(handle) -> Status``: the platform's view, mapped onto :class:`State`.
- ``cancel(handle)``: stop it and release what it holds (an instance, a kernel). Safe to repeat.
- ``logs(handle, tail)``: its output so far.

A handle is a JSON-serialisable dict; the scheduler stores it and passes it back. Provider errors
go through the adapter's ``translate`` into :class:`PlatformError`, whose ``kind`` tells the
scheduler whether to wait and retry, move to the next platform, or give up.

Profiles (``platforms/<name>.yaml``) hold what is not code: GPU, quota, session cap, price,
capacity, credential variable names, and the adapter's own options: a frozen dataclass per adapter
(``Adapter.Options``), checked with file, line and field when the profile loads.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import json
import os
import types
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GwiError
from ..yamlfile import Checker, ConfigError, Node, closest, load, quote, type_name


class State(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    LOST = "lost"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (State.SUCCEEDED, State.FAILED, State.LOST, State.CANCELLED)


@dataclass
class Status:
    state: State
    exit_code: int | None = None
    message: str = ""
    silent: bool = False  # the attempt cannot heartbeat (an offline kernel): judge it by this state alone


class PlatformError(GwiError):
    """A platform refused or failed. ``kind`` decides what the scheduler does next:

    - ``retryable``: transient (rate limit, 5xx, network); try the same call again later;
    - ``capacity`` / ``quota``: this platform cannot take the job now; move to the next one;
    - ``auth`` / ``config``: credentials or settings are wrong; move on and tell the user;
    - ``fatal``: anything else.
    """

    KINDS = ("retryable", "capacity", "quota", "auth", "config", "fatal")

    def __init__(self, message: str, kind: str = "fatal"):
        if kind not in self.KINDS:
            raise ValueError(f"PlatformError kind: expected one of {self.KINDS}, got {quote(kind)}")
        super().__init__(message)
        self.kind = kind

    @property
    def retryable(self) -> bool:
        return self.kind == "retryable"


# ------------------------------------------------------------------------------------------------
# platform options: one frozen dataclass per adapter, checked field by field when the profile loads


class OptionError(ValueError):
    """An option's value is wrong; ``field`` names it, so the loader can add the file and line."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class PlatformOptions:
    """The ``options:`` of a profile. Each field is a key, its annotation the accepted type: ``str``,
    ``int``, ``float``, ``bool``, ``tuple[str, ...]`` (a list of names), ``dict[str, str]``,
    ``Literal[...]`` (one of), and ``X | None``. ``bounds(...)`` in a field's metadata sets limits;
    ``check`` holds the rules that tie fields together."""

    def check(self) -> None:
        """Raise :class:`OptionError` for a combination of values that cannot work."""


def bounds(default, *, minimum: float | None = None, above: float | None = None, maximum: float | None = None):
    """A numeric option with limits (``above``: strictly greater)."""
    return field(default=default, metadata={"minimum": minimum, "above": above, "maximum": maximum})


def _expected(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is tuple:
        return "a list of names"
    if origin is dict:
        return "a mapping of names to values"
    return {str: "a non-empty string", int: "an integer", float: "a number", bool: "true or false"}[hint]


def _convert(name: str, value, hint, meta):
    """``value`` as ``hint`` wants it, or OptionError ``expected X, got Y``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        return _convert(name, value, next(a for a in args if a is not type(None)), meta)
    ok = {str: isinstance(value, str) and value != "", bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool)}.get(hint)
    if origin is typing.Literal:
        ok = value in args
    elif origin is tuple:
        value = [value] if isinstance(value, str) else value  # a single name is a list of one
        ok = isinstance(value, list) and all(isinstance(v, str) and v for v in value)
    elif origin is dict:
        ok = isinstance(value, dict) and all(isinstance(v, (str, int, float, bool)) for v in value.values())
    if not ok:
        hint_text = closest(value, args) if origin is typing.Literal and isinstance(value, str) else ""
        raise OptionError(name, f"expected {_expected(hint)}, got {quote(value)}{hint_text}")
    if origin is tuple:
        return tuple(value)
    if origin is dict:
        return {str(k): str(v) for k, v in value.items()}
    _check_bounds(name, value, meta)
    return float(value) if hint is float else value


def _check_bounds(name: str, value, meta) -> None:
    low, above, high = meta.get("minimum"), meta.get("above"), meta.get("maximum")
    if low is not None and value < low:
        raise OptionError(name, f"expected a value >= {low:g}, got {quote(value)}")
    if above is not None and value <= above:
        raise OptionError(name, f"expected a value > {above:g}, got {quote(value)}")
    if high is not None and value > high:
        raise OptionError(name, f"expected a value <= {high:g}, got {quote(value)}")


def parse_options(cls: type[PlatformOptions], node, file: str, line: int = 0):
    """The typed options of ``cls`` from a profile's ``options:`` mapping (a yamlfile Node knows the
    lines; ``line`` is where ``options:`` is); errors read ``platforms/x.yaml:12: options.key:
    expected ..., got ...``."""
    if isinstance(node, cls):
        return node
    node = {} if node is None else node
    line = getattr(node, "line", 0) or line
    line_of = node.line_of if isinstance(node, Node) else (lambda key: line)

    def error(key: str | None, message: str) -> ConfigError:
        at = line_of(key) if key else line
        where = f"{file}:{at}" if at else file
        return ConfigError(f"{where}: options{'.' + key if key else ''}: {message}")

    if not isinstance(node, dict):
        raise error(None, f"expected a mapping, got {type_name(node)} ({quote(node)})")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in node.items():
        if key not in fields:
            raise error(key, f"unknown option{closest(key, fields)}; expected one of: {', '.join(fields)}")
        if value is None and typing.get_origin(hints[key]) not in (typing.Union, types.UnionType):
            continue  # null: the default, as everywhere in profiles
        try:
            values[key] = _convert(key, value, hints[key], fields[key].metadata)
        except OptionError as e:
            raise error(key, str(e)) from None
    try:
        opts = cls(**values)
        opts.check()
    except OptionError as e:
        raise error(e.field, str(e)) from None
    return opts


# ------------------------------------------------------------------------------------------------
# profiles

ADAPTERS = {
    "local": "gwi.adapters.local:LocalAdapter",
    "kaggle": "gwi.adapters.kaggle:KaggleAdapter",
    "colab": "gwi.adapters.colab:ColabAdapter",
    "lambda": "gwi.adapters.lambda_cloud:LambdaAdapter",
}


@dataclass(frozen=True)
class Profile:
    name: str
    adapter: str
    path: str
    description: str = ""
    gpu: str | None = None  # e.g. "P100", "A100"; None: none or whatever the machine has
    gpus: int = 0
    cpus: int | None = None  # None: not said (not checked against a job's resources)
    memory_gb: float | None = None  # the machine's memory; None: not said
    quota_hours_per_week: float | None = None  # GPU-hours; None: unlimited
    session_hours: float | None = None  # the platform's cap on one run; becomes the attempt's hour limit
    usd_per_hour: float = 0.0
    capacity: int = 1  # attempts at once
    credentials: tuple[str, ...] = ()  # names of environment variables, never their values
    start_timeout_s: float = 300.0  # launch to first heartbeat
    cache_limit: str | None = None  # local disk its jobs' datasets may take (e.g. 40GB); None: most of the free disk
    # the adapter's typed options (its ``Options``); a plain dict from code is checked by the adapter
    options: PlatformOptions | dict = field(default_factory=dict)

    def missing_credentials(self) -> list[str]:
        return [v for v in self.credentials if not os.environ.get(v)]


PROFILE_FIELDS = ("adapter", "description", "gpu", "gpus", "cpus", "memory_gb", "quota_hours_per_week", "session_hours", "usd_per_hour",
                  "capacity", "credentials", "start_timeout_s", "cache_limit", "options")


def parse_profile(path: str | Path) -> Profile:
    path = Path(path)
    node = load(path)
    c = Checker(str(path), node, f"platform '{path.stem}'")
    c.only(PROFILE_FIELDS)
    gpu = c.node.get("gpu")
    if gpu is not None and not isinstance(gpu, str):
        raise c.error("gpu", f"expected a GPU name or null, got {quote(gpu)}")
    quota = c.get("quota_hours_per_week", "number", None, minimum=0)
    session = c.get("session_hours", "number", None, minimum=0, exclusive_min=True)
    adapter = c.get("adapter", "str", choices=ADAPTERS)
    return Profile(
        name=path.stem,
        adapter=adapter,
        path=str(path),
        description=c.get("description", "str", ""),
        gpu=gpu,
        gpus=c.get("gpus", "int", 0, minimum=0),
        cpus=c.get("cpus", "int", None, minimum=1),
        memory_gb=None if c.node.get("memory_gb") is None else float(c.get("memory_gb", "number", minimum=0,
                                                                           exclusive_min=True)),
        quota_hours_per_week=None if quota is None else float(quota),
        session_hours=None if session is None else float(session),
        usd_per_hour=float(c.get("usd_per_hour", "number", 0.0, minimum=0)),
        capacity=c.get("capacity", "int", 1, minimum=1),
        credentials=tuple(c.get("credentials", "str-list", [])),
        start_timeout_s=float(c.get("start_timeout_s", "number", 300.0, minimum=0, exclusive_min=True)),
        cache_limit=_cache_limit(c),
        options=parse_options(adapter_class(adapter).Options, c.node.get("options"), str(path), c.line("options")),
    )


def _cache_limit(c: Checker) -> str | None:
    """A size like 40GB (the datasets a job streams stay within it), ``auto`` or ``none``."""
    v = c.get("cache_limit", "str", None)
    if v is not None and v.strip().lower() not in ("auto", "none"):
        from ..data.cache import parse_size

        try:
            parse_size(v)
        except ValueError as e:
            raise c.error("cache_limit", str(e).removeprefix("cache limit: ")) from None
    return v


# ------------------------------------------------------------------------------------------------
# where profiles come from, and where their secrets go
#
# A profile decides which environment variables leave this machine and for which host (an API base
# URL, the machines an API launches, a docker image that runs with them). So profiles are read only
# from gwi's own folder and the user's ($GWI_HOME/platforms), never from the current directory; a
# folder named with --platforms / $GWI_PLATFORMS may add profiles, but one that would send a secret
# somewhere the package's profile of its adapter does not is refused until the user trusts that
# exact file (its sha256), in a file of their own.

PACKAGE_PLATFORMS = Path(__file__).resolve().parents[2] / "platforms"
TRUST_FILE = "trusted-profiles.json"
THIS_MACHINE = "this machine"  # a process of the user's own gwi: never a new destination
LENT = "AWS_*"  # the store's credentials this machine lends to jobs it drives (kit.lent_credentials)
KAGGLE_API = "https://www.kaggle.com"  # the kaggle client's endpoint when options.api_endpoint is unset
# the official kaggle client signs every request in from these by itself, whatever a profile's
# ``credentials`` list: they go to its endpoint in any case
KAGGLE_SIGN_IN = ("KAGGLE_USERNAME", "KAGGLE_KEY", "~/.kaggle/kaggle.json")
# boto3 sends the store's credentials (signed) to whatever endpoint these name
STORE_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


class UntrustedProfile(ConfigError):
    """A profile from outside the user's own folders would send secrets to a new destination."""


def user_profile_dirs() -> list[Path]:
    """Folders whose profiles are gwi's or the user's own: the package's, and the ``platforms`` of
    gwi's home when the user chose it (``$GWI_HOME``) or it is the user's own folder. A ``.gwi/``
    found above the current folder could come with a checked-out repository, so its profiles are
    read like any project folder's."""
    from ..paths import find_home, gwi_home

    home = gwi_home()
    own = os.environ.get("GWI_HOME") or find_home() is None
    return [PACKAGE_PLATFORMS] + ([home / "platforms"] if own else [])


def profile_dirs() -> list[Path]:
    """Where profiles are found, later ones overriding earlier ones of the same name: the package's
    ``platforms/``, the home's ``platforms/``, then each folder in ``$GWI_PLATFORMS`` (what
    ``--platforms DIR`` sets). Never ``./platforms``: the current directory does not choose where
    credentials go."""
    from ..paths import gwi_home

    dirs = user_profile_dirs()
    if gwi_home() / "platforms" not in dirs:
        dirs.append(gwi_home() / "platforms")
    dirs += [Path(p) for p in os.environ.get("GWI_PLATFORMS", "").split(os.pathsep) if p]
    seen, out = set(), []
    for d in dirs:
        r = d.resolve()
        if r not in seen:
            seen.add(r)
            out.append(d)
    return out


def load_profiles(dirs: list[Path] | None = None) -> dict[str, Profile]:
    """Profiles by name. ``dirs`` given: the caller (a test, a bench) vouches for them. None: the
    folders of :func:`profile_dirs`, where a profile outside :func:`user_profile_dirs` must pass
    :func:`check_trust` (raises :class:`UntrustedProfile`)."""
    own = {d.resolve() for d in user_profile_dirs()} if dirs is None else None
    profiles: dict[str, Profile] = {}
    for d in dirs if dirs is not None else profile_dirs():
        if d.is_dir():
            for p in sorted(d.glob("*.yaml")) + sorted(d.glob("*.yml")):
                profile = parse_profile(p)
                if own is not None and d.resolve() not in own:
                    check_trust(profile)
                profiles[p.stem] = profile
    return profiles


def _origin(url: str) -> str:
    """``scheme://host[:port]`` of an endpoint: a path on the same host is the same destination."""
    from urllib.parse import urlsplit

    parts = urlsplit(url.strip())
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else url.strip()


def routes(profile: Profile) -> list[tuple[str, str]]:
    """``(variable, destination)`` for each secret of this machine's environment that ``profile``
    sends: its ``credentials`` and the adapter's own secret variables to the platform's endpoint
    (including what a client picks up by itself: the kaggle client's sign-in), the store's
    credentials to the machines or images gwi drives there, and to a store endpoint the profile
    sets for its jobs. Every option that decides where a credential goes is in a destination, so
    changing it is a new route that needs trust."""
    o, creds = profile.options, list(profile.credentials)

    def opt(name, default=None):
        return getattr(o, name, None) if not isinstance(o, dict) else o.get(name, default)

    env = opt("env") or {}
    endpoints = sorted({_origin(env[k]) for k in STORE_ENDPOINT_VARS if env.get(k)})
    return _platform_routes(profile, creds, opt) + [(LENT, f"S3 endpoint {e} (set by the profile)") for e in endpoints]


def _platform_routes(profile: Profile, creds: list[str], opt) -> list[tuple[str, str]]:
    image = opt("image")
    if profile.adapter == "local":
        docker = opt("runtime", "auto") != "process"
        return [(v, f"docker image {image} on {THIS_MACHINE}" if docker and image else THIS_MACHINE)
                for v in creds + [LENT]]
    if profile.adapter == "lambda":
        api = _origin(opt("api_url") or "https://cloud.lambdalabs.com")
        job = f"instances launched through {api}"
        if opt("runtime", "docker") == "docker" and image:
            job += f", running docker image {image}"
        return [(v, f"Lambda API {api}") for v in creds or ["LAMBDA_API_KEY"]] + [(LENT, job)]
    if profile.adapter == "kaggle":
        api = f"Kaggle API {_origin(opt('api_endpoint') or KAGGLE_API)}"
        return [(v, api) for v in dict.fromkeys(creds + list(KAGGLE_SIGN_IN))]
    if profile.adapter == "colab":
        drive = f"Google Drive API {_origin(opt('drive_api') or 'https://www.googleapis.com')}"
        return [(v, drive) for v in creds + [opt("drive_token_var") or "GWI_COLAB_DRIVE_TOKEN"]]
    return [(v, f"{profile.adapter} platform") for v in creds]


def secret_routes(profiles: dict[str, Profile] | list[Profile]) -> list[tuple[str, str, str, str]]:
    """``(platform, variable, destination, source file)`` for every secret the profiles send: what
    ``gwi platforms`` and ``gwi check`` show. ``AWS_*`` stands for the store's credentials."""
    items = profiles.values() if isinstance(profiles, dict) else profiles
    return [(p.name, var, dest, p.path) for p in items for var, dest in routes(p)]


def store_routes(environ: dict | None = None) -> list[tuple[str, str, str, str]]:
    """Where the store's credentials go from this machine, as :func:`secret_routes` rows: boto3 finds
    them by itself (the environment, ``~/.aws``, an instance role) and signs every request to the
    S3 endpoint this environment names (AWS's own when none)."""
    environ = os.environ if environ is None else environ
    endpoint = next((environ[k] for k in STORE_ENDPOINT_VARS if environ.get(k)), None)
    dest = f"S3 endpoint {_origin(endpoint)}" if endpoint else "S3 endpoint of AWS (no AWS_ENDPOINT_URL set)"
    return [("store", f"{LENT} or ~/.aws (boto3's chain)", dest, "this environment")]


def _default_routes(adapter: str) -> set[tuple[str, str]]:
    """The routes of the package's own profiles of ``adapter``: what needs no confirmation."""
    out = set()
    for p in sorted(PACKAGE_PLATFORMS.glob("*.yaml")):
        profile = parse_profile(p)
        if profile.adapter == adapter:
            out |= set(routes(profile))
    return out


def new_routes(profile: Profile) -> list[tuple[str, str]]:
    """The routes of ``profile`` that no package profile of its adapter has (this machine excepted)."""
    known = _default_routes(profile.adapter)
    return [r for r in routes(profile) if r not in known and r[1] != THIS_MACHINE]


def trust_file() -> Path:
    """``$GWI_HOME/trusted-profiles.json``; without ``GWI_HOME``, under ``$XDG_CONFIG_HOME/gwi``
    (``~/.config/gwi``), not in ``./.gwi``, which a repository could ship pre-filled."""
    home = os.environ.get("GWI_HOME")
    if home:
        return Path(home) / TRUST_FILE
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config) / "gwi" / TRUST_FILE


def _trusted() -> dict[str, dict]:
    path = trust_file()
    if not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text())["profiles"]
        return {e["path"]: e for e in entries}
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: expected {{\"profiles\": [...]}} as gwi writes it, got unreadable content "
                          f"({type(e).__name__}: {e}); delete it and trust your profiles again") from None


def _sha256(path: str | Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_trust(profile: Profile) -> None:
    """Raise :class:`UntrustedProfile` when ``profile`` sends a secret where the package's profiles
    do not and the user has not trusted this exact file."""
    extra = new_routes(profile)
    if not extra:
        return
    key = str(Path(profile.path).resolve())
    entry = _trusted().get(key)
    if entry and entry.get("sha256") == _sha256(key):
        return
    why = "it changed since you trusted it" if entry else "it is not one of gwi's or yours"
    sends = "; ".join(f"{var} to {dest}" for var, dest in extra)
    raise UntrustedProfile(
        f"{profile.path}: refusing this platform profile: it would send {sends}, where gwi's own "
        f"{profile.adapter} profile sends no such secret, and {why} (gwi's profiles are in {PACKAGE_PLATFORMS}, "
        f"yours in $GWI_HOME/platforms). If you wrote it and mean it: gwi platforms --trust {profile.path} "
        f"(recorded in {trust_file()}; any later edit needs trusting again).")


def trust_profile(path: str | Path) -> dict:
    """Record that the user accepts where the profile at ``path`` sends secrets, as it is now: its
    sha256, destinations and variables go into :func:`trust_file` (0600). Returns the entry."""
    import time

    path = Path(path).resolve()
    profile = parse_profile(path)
    pairs = routes(profile)
    entry = {"path": str(path), "sha256": _sha256(path), "adapter": profile.adapter,
             "destinations": sorted({d for _, d in pairs}), "variables": sorted({v for v, _ in pairs}),
             "trusted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    entries = _trusted()
    entries[entry["path"]] = entry
    target = trust_file()
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        json.dump({"profiles": sorted(entries.values(), key=lambda e: e["path"])}, f, indent=1)
    os.replace(tmp, target)
    return entry


# ------------------------------------------------------------------------------------------------
# launches


@dataclass(frozen=True)
class Offer:
    """What a platform's machines have, as placement matches a job's ``resources`` against it (None:
    not known, so not held against a job)."""

    gpus: int = 0
    gpu: str | None = None
    cpus: int | None = None
    memory_gb: float | None = None

    def lacks(self, res) -> str | None:
        """Why a machine with this offer cannot run a job asking for ``res`` (a spec's ``Resources``),
        None when it can. What the platform does not say (None) is not held against the job."""
        def need(what: str) -> str:
            return f"needs {what}, has {self.text()}"

        if res.gpus and self.gpus < res.gpus:
            return need(f"{res.gpus} GPU{'s' if res.gpus > 1 else ''}")
        if res.gpu and not (self.gpu and res.gpu.lower() in self.gpu.lower()):
            return need(f"GPU type {res.gpu}")
        if res.cpus and self.cpus is not None and self.cpus < res.cpus:
            return need(f"{res.cpus} CPUs")
        if res.memory_gb and self.memory_gb is not None and self.memory_gb < res.memory_gb:
            return need(f"{res.memory_gb:g} GB of memory")
        return None

    def text(self) -> str:
        parts = [f"{self.gpus}x {self.gpu or 'GPU'}" if self.gpus else "no GPU"]
        parts += [f"{self.cpus} CPUs"] if self.cpus else []
        parts += [f"{self.memory_gb:g} GB"] if self.memory_gb else []
        return ", ".join(parts)


@dataclass(frozen=True)
class Finding:
    """One line of ``gwi check``: what was found and, when it is a problem, the exact fix. Never a
    secret's value: names of variables and files only."""

    ok: bool
    what: str
    fix: str = ""


@dataclass
class LaunchRequest:
    attempt_id: str  # unique and stable: "<spec>.<job>.<n>"
    job: str
    kind: str  # synth | train | ensemble | predict
    argv: list[str]  # the gwi command, e.g. ["gwi", "train", "--model", ...]
    env: dict[str, str]  # non-secret settings (GWI_ATTEMPT, GWI_HEARTBEAT, ...); secrets come from the platform
    store_url: str
    heartbeat_url: str  # the attempt's progress.json, as a store URL
    workdir: str  # local folder for this attempt's files (logs, rendered kernels)
    gpus: int = 0
    hours_limit: float | None = None
    scrub_env: tuple[str, ...] = ()  # other platforms' credential variables: never passed to the job


class Adapter(ABC):
    """One platform: ``launch``, ``query``, ``cancel``, ``logs``, one ``translate``; ``Options`` is its
    typed profile options. What all platforms share (environment, wrapper, bootstrap, log files) is
    in :mod:`gwi.adapters.kit`."""

    Options: type[PlatformOptions] = PlatformOptions

    def __init__(self, profile: Profile):
        self.profile = profile
        self.name = profile.name
        self.options = parse_options(self.Options, profile.options, profile.path)

    def available(self) -> str | None:
        """Why this platform cannot take a job now (missing credentials, no engine), or None."""
        missing = self.profile.missing_credentials()
        if missing:
            return f"credentials not set: {', '.join(missing)}"
        return None

    def offers(self) -> Offer:
        """What a machine of this platform has: the profile says so."""
        p = self.profile
        return Offer(p.gpus, p.gpu, p.cpus, p.memory_gb)

    def credentials_found(self) -> list[Finding]:
        """Each credential the platform needs: where it was found (never its value), or how to set it."""
        return [Finding(True, f"{v} set in the environment") if os.environ.get(v) else
                Finding(False, f"{v} not set", f"export {v}=...  (named in {self.profile.path})")
                for v in self.profile.credentials]

    def probe(self, deadline_s: float) -> list[Finding]:
        """A live look within ``deadline_s`` seconds, once the credentials are there: the API answers,
        and what it offers now (GPU types, capacity). Default: nothing to ask."""
        return []

    def secret_vars(self) -> set[str]:
        """Environment variables that hold this platform's secrets (kept from other platforms' jobs)."""
        return set(self.profile.credentials)

    def reachable_store(self, store_url: str) -> str | None:
        """Why jobs here cannot read and write ``store_url`` (a remote machine and a file:// store), or None."""
        return None

    @abstractmethod
    def launch(self, req: LaunchRequest) -> dict: ...

    @abstractmethod
    def query(self, handle: dict) -> Status: ...

    @abstractmethod
    def cancel(self, handle: dict) -> None: ...

    @abstractmethod
    def logs(self, handle: dict, tail: int | None = None) -> str: ...

    def translate(self, exc: Exception) -> PlatformError:
        if isinstance(exc, PlatformError):
            return exc
        return PlatformError(f"{self.name}: {type(exc).__name__}: {exc}", "fatal")

    # -- helpers for subclasses ---------------------------------------------------------------------

    @staticmethod
    def recorded(workdir: str | Path) -> dict | None:
        """The handle of a launch already made for this attempt (its folder exists from now on)."""
        work = Path(workdir)
        work.mkdir(parents=True, exist_ok=True)
        h = work / "handle.json"
        return json.loads(h.read_text()) if h.exists() else None

    @staticmethod
    def record(workdir: str | Path, handle: dict) -> dict:
        """Save the handle atomically: a half-written one would be worse than none."""
        tmp = Path(workdir, "handle.json.tmp")
        tmp.write_text(json.dumps(handle))
        os.replace(tmp, Path(workdir, "handle.json"))
        return handle


def tail_lines(text: str, n: int | None) -> str:
    """The last ``n`` lines of a log (all of it for None or 0)."""
    if not n:
        return text
    return "\n".join(text.splitlines()[-n:]) + ("\n" if text.endswith("\n") else "")


def adapter_class(adapter: str) -> type[Adapter]:
    """The class registered for ``adapter`` in :data:`ADAPTERS`. Adapter modules import their SDKs
    (kaggle, paramiko, docker, requests, nbformat) inside the calls that use them, so loading
    profiles, which needs each class's ``Options``, stays light."""
    target = ADAPTERS.get(adapter)
    if target is None:
        raise ConfigError(f"unknown adapter {quote(adapter)}; expected one of {', '.join(ADAPTERS)}")
    mod, _, cls = target.partition(":")
    try:
        module = importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if e.name == mod:
            raise PlatformError(f"the {adapter} adapter is not available yet", "config") from None
        raise
    return getattr(module, cls)


def get_adapter(profile: Profile) -> Adapter:
    try:
        cls = adapter_class(profile.adapter)
    except ConfigError as e:
        raise ConfigError(f"{profile.path}: {e}") from None
    except PlatformError as e:
        raise PlatformError(f"platform {profile.name}: {e}", e.kind) from None
    return cls(profile)
