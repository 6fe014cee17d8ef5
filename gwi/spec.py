"""Job specs (plans): what to run and where, checked as a whole before anything launches.

This module checks what every job shares (name, kind, platforms, after, limits, resources,
heartbeat, the defaults it takes) and the plan as a whole (references, order, cycles, the store).
Everything particular to a kind (its fields and checks, the jobs it reads from, its outputs, the
``gwi`` command it runs) lives in that kind's module in ``gwi/kinds/``.

A spec is one YAML file (``jobs/*.yaml``)::

    name: day2                       # optional; default: the file name without .yaml
    store: s3://my-gwi-bucket        # optional; default: the embedded store ($GWI_HOME/store)
    deadline: 2026-12-09T18:00:00Z   # optional; ISO time with a zone: lower-priority jobs shrink or
                                     # are dropped when the plan cannot end by then
    defaults:                        # optional; applies to every job that does not say otherwise
      dataset: kaggle-train-f16      #   train and ensemble jobs
      preset: tiny                   #   train jobs
      precision: bf16                #   train jobs (into their config)
      heartbeat_s: 20                #   every job
      platforms: [kaggle, local]     #   every job
      limits: {max_hours: 11}        #   every job, merged key by key with the job's
      resources: {gpus: 1}           #   every job, merged key by key
      config: {batch_size: 64}       #   train jobs, merged key by key
    jobs:
      - name: data                   # unique; letters, digits, '-' and '_'
        kind: synth                  # synth | train | ensemble | predict | evaluate | sweep | refine |
                                     #   augment | prep | pseudo | cycle | run
                                     #   (each kind's fields: gwi/kinds/<kind>.py)
        dataset: synth-b             # the dataset it writes to STORE/datasets/
        families: [FlatVel_B, CurveFault_A]
        samples: 500                 # per family
        seed: 1                      # default 0
      - name: egnn
        kind: train
        model: egnn                  # see `gwi models`
        preset: default              # default "default"
        dataset: synth-b             # a dataset name in the store, or a URL
        config: {epochs: 40, lr: 3.0e-4, folds: [0, 1]}
        platforms: [lambda, local]   # preference order = fallback order
        after: [data]                # jobs that must succeed first (optional, see below)
        resources: {gpus: 1, gpu: A100, cpus: 8, memory_gb: 32}
        limits: {max_hours: 24, max_cost_usd: 60, retries: 1, stall_s: 120, start_timeout_s: 900}
        heartbeat_s: 20
        priority: 5                  # default 0; higher: kept when a deadline forces choices
      - name: ens
        kind: ensemble
        members: [egnn]              # train jobs of this spec, or run URLs
        dataset: synth-b
        config: {split: kfold:5:0, crf: true, mc_samples: 8}
        plots: true                  # default true
      - name: submission
        kind: predict
        ensemble: ens                # an ensemble job of this spec or an ensemble.json URL;
                                     # or members: [...] instead
        test: ./kaggle/test          # a dataset name, a URL, or a folder (/, ./, ../, ~;
                                     # relative to this file's folder)
        config: {tta: flip, precision: fp16, batch_size: 32, mc_samples: 8}
        uncertainty: true            # default false
        plots: true                  # default false
        misfit: true                 # default false: misfit.csv, each file's data misfit
      - name: refine                 # FWI of the worst quarter from the submission, in 8 shard
        kind: refine                 # jobs (refine-s1 ... -s8), then refine merges their parts
        init: submission
        test: ./kaggle/test
        worst: 0.25
        shards: 8

Every job needs ``platforms`` (on the job or in ``defaults``); every name must be a platform profile
(``platforms/<name>.yaml``). A job's own ``limits``, ``resources`` and ``config`` keys win over those
in ``defaults``; other fields replace the default entirely.

Train ``config`` takes the training settings of ``gwi train`` (``epochs``, ``batch_size``, ``lr``,
``weight_decay``, ``warmup_frac``, ``grad_clip``, ``ema``, ``loss``, ``precision``, ``seed``,
``checkpoint_every``, ``keep_checkpoints``, ``max_steps``, ``val_every``, ``device``, ``model_args``
...) plus the validation split, given one way only:

- ``split: kfold:K:I`` or ``split: family:NAME``;
- ``fold: I`` with ``folds: K`` (default 5): split ``kfold:K:I``; ``folds: K`` alone means fold 0;
- ``folds: [0, 2]`` (a list): one job per fold, named ``<name>-f0``, ``<name>-f2``, each with split
  ``kfold:K:<i>``, where K is ``config.k`` (default 5). A reference to ``<name>`` (in ``after`` or
  ``members``) means all of them.

If a job's config says any of ``split``/``fold``/``folds``/``k``, the defaults' split settings are
ignored for it, so a default ``fold: 0`` does not clash with a job's ``folds: [0, 1]``.

Limits: ``max_hours`` (> 0; none: no limit) and ``max_cost_usd`` (>= 0) cap the job over all its
attempts; ``retries`` (default 0) is how many extra attempts one platform gets after a failure before
the next platform is tried; ``stall_s`` (default 6 x heartbeat_s) is how old a running attempt's
heartbeat may get before the attempt is declared lost, and, when set, also how long its work may go
without progress (its step counter standing still while the heartbeat goes on; unset: 20 typical
steps, at least 10 minutes); ``start_timeout_s`` (default: the platform profile's) is how long a
launch may take to send its first heartbeat.

Order: a job runs after the jobs in its ``after`` and, implicitly, after the train jobs it names as
``members``, the ensemble job it names as ``ensemble``, and the synth job that writes a dataset it
reads (``dataset``/``test`` naming it). Cycles are errors.

Outputs go to the store: a train job's run is ``STORE/runs/<spec>/<job>``; ensemble and predict jobs
write ``ensemble.json``, ``submission.csv``, ``uncertainty.npy`` and ``plots/`` in the same place.

Every error names the file, the line, the job and the field, and lists what is allowed, e.g.
``jobs/day2.yaml:14: job 'egnn': field 'platforms': unknown value 'lamda' (did you mean 'lambda'?);
expected one of: colab, kaggle, lambda, local``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import kinds
from .errors import GwiError, StoreError
from .kinds.base import JobKind, Plan, Ref
from .yamlfile import (
    NAME,
    ConfigError,
    Fields,
    closest,
    entries,
    loads,
    node_at,
    quote,
    type_name,
)

TOP_FIELDS = ("name", "store", "deadline", "defaults", "jobs")
COMMON_FIELDS = ("name", "kind", "platforms", "after", "resources", "limits", "heartbeat_s", "priority")
COMMON_DEFAULTS = ("heartbeat_s", "platforms", "limits", "resources", "priority")
LIMIT_FIELDS = ("max_hours", "max_cost_usd", "retries", "stall_s", "start_timeout_s")
RESOURCE_FIELDS = ("gpus", "gpu", "cpus", "memory_gb")
DEFAULT_HEARTBEAT_S = 20.0


@dataclass(frozen=True)
class Limits:
    max_hours: float | None = None
    max_cost_usd: float | None = None
    retries: int = 0
    stall_s: float = 6 * DEFAULT_HEARTBEAT_S
    start_timeout_s: float | None = None
    # whether the plan set stall_s (not the 6 x heartbeat_s default): then it also bounds the time
    # without progress; otherwise the scheduler sizes that from the measured step time. Not part of
    # equality: two limits with the same numbers bound the pulse alike.
    stall_set: bool = field(default=False, compare=False)

    @property
    def progress_stall_s(self) -> float | None:
        """The plan's bound on time without progress, or None: sized from the step time."""
        return self.stall_s if self.stall_set else None


@dataclass(frozen=True)
class Resources:
    gpus: int = 0
    gpu: str | None = None
    cpus: int | None = None
    memory_gb: float | None = None


@dataclass
class Job:
    name: str
    kind: str
    platforms: list[str]
    after: list[str]
    resources: Resources
    limits: Limits
    heartbeat_s: float
    params: dict  # the validated kind-specific fields, references resolved to URLs
    line: int  # where the job is in the spec file
    argv: list[str]  # the gwi command it runs
    outputs: dict[str, str]  # what it produces, as store URLs
    priority: int = 0  # higher: kept (and its budget left whole) when a deadline forces choices

    def to_dict(self) -> dict:
        return {
            "name": self.name, "kind": self.kind, "platforms": list(self.platforms), "after": list(self.after),
            "resources": asdict(self.resources), "limits": asdict(self.limits), "heartbeat_s": self.heartbeat_s,
            "params": json.loads(json.dumps(self.params)), "line": self.line, "argv": list(self.argv),
            "outputs": dict(self.outputs), "priority": self.priority,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Job":
        return cls(
            name=d["name"], kind=d["kind"], platforms=list(d["platforms"]), after=list(d["after"]),
            resources=Resources(**d["resources"]), limits=Limits(**d["limits"]), heartbeat_s=float(d["heartbeat_s"]),
            params=json.loads(json.dumps(d["params"])), line=int(d["line"]), argv=list(d["argv"]),
            outputs=dict(d["outputs"]), priority=int(d.get("priority", 0)),
        )


@dataclass
class Spec:
    name: str
    path: str
    store: str  # normalised: file:///absolute/path or s3://bucket[/prefix], no trailing slash
    jobs: list[Job]  # dependencies first; file order among jobs that are ready together
    sha256: str = ""  # of the file's bytes
    deadline: float | None = None  # unix time the plan should be done by

    def job(self, name: str) -> Job:
        for j in self.jobs:
            if j.name == name:
                return j
        names = [j.name for j in self.jobs]
        raise ConfigError(f"{self.path}: no job {quote(name)} in spec '{self.name}'{closest(name, names)}; "
                          f"expected one of: {', '.join(names)}")


# ------------------------------------------------------------------------------------------------
# checking


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _deadline(top: Fields) -> float:
    """``deadline:``: an ISO time with its zone (``2026-12-09T18:00:00Z``), not in the past."""
    import datetime as dt

    raw = top.node.get("deadline")
    try:
        when = raw if isinstance(raw, dt.datetime) else dt.datetime.fromisoformat(str(raw))
    except ValueError:
        raise top.error("deadline", f"expected an ISO time with a zone like 2026-12-09T18:00:00Z, got {quote(raw)}") from None
    if when.tzinfo is None:
        raise top.error("deadline", f"expected an ISO time with a zone (Z or +01:00), got {quote(str(raw))}: "
                                    "a time without one means different things on different machines")
    now = time.time()
    if when.timestamp() <= now:
        ago = dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        raise top.error("deadline", f"{when.isoformat()} is in the past (now {ago})")
    return when.timestamp()


def _normalise_store(c: Fields, url: str) -> str:
    if url.startswith("s3://"):
        if not url[len("s3://"):].split("/")[0]:
            raise c.error("store", f"s3 URL has no bucket: expected s3://BUCKET[/PREFIX], got {quote(url)}")
        return url.rstrip("/")
    if url.startswith("file://"):
        path = url[len("file://"):] or "."
    elif "://" in url:
        raise c.error("store", f"unsupported URL scheme in {quote(url)}; expected one of: file://, s3://")
    else:
        path = url
    # a relative folder means the folder here, wherever the job later runs
    return "file://" + str(Path(path).expanduser().resolve())


def store_problem(url: str) -> str | None:
    """Why the store at ``url`` cannot be used now (``None``: it answers); a file:// folder is made."""
    from .store import open_store

    try:
        if url.startswith("file://"):
            # the embedded default starts empty: a missing folder is one to make, not a typo to report
            Path(url[len("file://"):]).mkdir(parents=True, exist_ok=True)
        open_store(url, patience=0).list("datasets")  # a check answers now; it does not wait out an outage
    except StoreError as e:
        return f"cannot reach {url}: {e}"
    except OSError as e:
        return f"cannot reach {url}: {e.strerror or e}"
    return None


def _check_store(c: Fields, url: str) -> None:
    problem = store_problem(url)
    if problem:
        raise c.error("store", problem)


@dataclass
class _Draft:
    """A job checked on its own, before references to other jobs are resolved."""

    name: str
    kind: JobKind
    line: int
    c: Fields  # the job's merged fields (its own over the defaults), for errors
    platforms: list[str]
    after: list[str]
    resources: Resources
    limits: Limits
    heartbeat_s: float
    params: dict
    group: str  # the name in the file (a fold job's group is its train job's name)
    priority: int = 0


class _Loader:
    """What every job has in common (names, platforms, order, limits, defaults); the rest is its kind's."""

    def __init__(self, path: str | os.PathLike, profiles: dict | None):
        self.path = Path(path)
        self.file = str(path)
        if profiles is None:
            from .adapters.base import load_profiles

            profiles = load_profiles()
        self.profiles = profiles
        self.platforms = sorted(profiles)
        self.seen: dict[str, int] = {}  # job name -> line, to report duplicates

    # -- top level ---------------------------------------------------------------------------------

    def load(self, check_store: bool) -> Spec:
        data, root = self._read()
        top = Fields(self.file, root, "")
        top.only(TOP_FIELDS)
        if "name" in root:
            name = top.name("name")
        else:
            name = self.path.stem
            if not NAME.fullmatch(name):
                raise top.error("name", f"the file name {quote(name)} is not a spec name (letters, digits, '-' "
                                        "and '_'); set name: in the file")
        from .store import default_store_url

        store = _normalise_store(top, top.get("store", "str", None) or default_store_url())
        deadline = _deadline(top) if top.node.get("deadline") is not None else None
        defaults = top.sub("defaults", "defaults")
        defaults.prefix = ""
        self.plan = Plan(self.file, name, store, self._defaults(defaults))
        jobs = top.get("jobs", "list")
        if not jobs:
            raise top.error("jobs", "expected at least one job")

        drafts: list[_Draft] = []
        for i, raw in enumerate(jobs, start=1):
            made = self._job(top, i, raw)
            for d in made:
                self.plan.jobs[d.name] = (d.kind.name, d.params)
                self.plan.groups.setdefault(d.group, []).append(d.name)
            drafts += made
        self.by_name = {d.name: d for d in drafts}
        self.groups = self.plan.groups
        for d in drafts:
            for url in d.kind.outputs(d.params, self.plan.run(d.name)).values():
                self.plan.writers.setdefault(url, d.name)
        spec = Spec(name, self.file, store, self._order([self._resolve(d) for d in drafts]),
                    hashlib.sha256(data).hexdigest(), deadline)
        if check_store:
            _check_store(top, store)
        return spec

    def _read(self) -> tuple[bytes, dict]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"{self.file}: no such file") from None
        except OSError as e:
            raise ConfigError(f"{self.file}: cannot read ({e.strerror})") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{self.file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        root = loads(text, self.file)
        if not isinstance(root, dict):
            raise ConfigError(f"{self.file}: expected a mapping with a 'jobs' list, got {type_name(root)}")
        return data, root

    def _defaults(self, c: Fields) -> dict:
        kind_fields = [f for k in kinds.names() for f in kinds.get(k).default_fields]
        c.only(dict.fromkeys(COMMON_DEFAULTS + tuple(kind_fields)))
        for k in kinds.names():
            if any(f in c.node for f in kinds.get(k).default_fields):
                kinds.get(k).check_defaults(c)
        c.positive("heartbeat_s")
        if c.node.get("platforms") is not None:
            self._platforms(c)
        c.sub("limits").only(LIMIT_FIELDS)
        c.sub("resources").only(RESOURCE_FIELDS)
        return c.node

    def _platforms(self, c: Fields) -> list[str]:
        if not self.platforms:
            raise c.error("platforms", "no platform profiles found (platforms/*.yaml, $GWI_PLATFORMS)")
        names = c.get("platforms", "str-list", choices=self.platforms)
        if not names:
            raise c.error("platforms", f"expected at least one platform; expected one of: {', '.join(self.platforms)}")
        c.unique("platforms", names)
        return list(names)

    def _fits(self, c: Fields, platforms: list[str], res: Resources) -> None:
        """At least one of the job's platforms has the machine its ``resources`` ask for; else nothing
        could ever run it, which is the plan's error, not a wait."""
        if res == Resources():
            return
        from .adapters.base import get_adapter

        why = {}
        for name in platforms:
            try:
                lacks = get_adapter(self.profiles[name]).offers().lacks(res)
            except GwiError:
                return  # a profile that cannot say: not held against the plan here
            if lacks is None:
                return
            why[name] = lacks
        raise c.error("resources", "no platform of this job has what it asks for: "
                      + "; ".join(f"{n}: {w}" for n, w in why.items()))

    # -- one job -----------------------------------------------------------------------------------

    def _job(self, top: Fields, i: int, raw: Any) -> list[_Draft]:
        if not isinstance(raw, dict):
            raise ConfigError(f"{self.file}:{top.line('jobs')}: job #{i}: expected a mapping, got {type_name(raw)} "
                              f"({quote(raw)})")
        own = Fields(self.file, raw, f"job #{i}")
        name = own.name("name")
        own.owner = f"job '{name}'"
        self._unique_name(own, name, "name", "duplicate job name {new!r} (also at line {line})")
        kind = kinds.get(own.get("kind", "str", choices=kinds.names()))
        own.only(COMMON_FIELDS + kind.fields)
        c = self._merged(own, kind)
        platforms = self._platforms(c)
        after = list(c.get("after", "str-list", []))
        heartbeat_s = c.positive("heartbeat_s", DEFAULT_HEARTBEAT_S)
        priority = c.get("priority", "int", 0)
        resources = self._resources(c.sub("resources"))
        self._fits(c, platforms, resources)
        base = dict(kind=kind, line=raw.line, c=c, platforms=platforms, after=after, priority=priority,
                    resources=resources, limits=self._limits(c.sub("limits"), heartbeat_s),
                    heartbeat_s=heartbeat_s, group=name)
        drafts = [_Draft(name=name + suffix, params=params, **base)
                  for suffix, params in kind.check(c, own, self.plan, name)]
        for d in drafts:
            if d.name != name:
                self._unique_name(own, d.name, "shards" if "shards" in own.node else "config", f"job {{new!r}}, made from {quote(name)}, clashes with job "
                                                         "{other!r} (line {line})")
            self.seen[d.name] = raw.line_of("name")
        return drafts

    def _unique_name(self, own: Fields, name: str, key: str, message: str) -> None:
        # run URLs are folders: names differing only in case would share one on macOS and Windows
        for other, line in self.seen.items():
            if other.lower() == name.lower():
                raise own.error(key, message.format(new=name, other=other, line=line))

    def _merged(self, own: Fields, kind: JobKind) -> Fields:
        """The job's view: the defaults it takes, then its own fields; lines say where each came from.
        Limits and resources merge key by key; a kind reads its other defaults itself."""
        raw = own.node
        plain = ("heartbeat_s", "platforms", "priority") + kind.inherits
        merged = node_at(raw.line, [e for e in entries(self.plan.defaults) if e[0] in plain])
        for k, v, ln in entries(raw):
            merged[k], merged.key_lines[k] = v, ln
        for key, allowed in (("limits", LIMIT_FIELDS), ("resources", RESOURCE_FIELDS)):
            own.sub(key).only(allowed)
            merged[key] = node_at(own.line(key), entries(self.plan.defaults.get(key)) + entries(raw.get(key)))
            merged.key_lines.setdefault(key, raw.line)
        return Fields(self.file, merged, own.owner)

    @staticmethod
    def _limits(lc: Fields, heartbeat_s: float) -> Limits:
        stall_s = lc.positive("stall_s", 6 * heartbeat_s)
        if stall_s <= heartbeat_s:
            raise lc.error("stall_s", f"expected more than heartbeat_s ({heartbeat_s:g}), got {stall_s:g}: "
                                      "every attempt would be declared lost between two heartbeats")
        cost = lc.get("max_cost_usd", "number", None, minimum=0)
        return Limits(max_hours=lc.positive("max_hours"), max_cost_usd=None if cost is None else float(cost),
                      retries=lc.get("retries", "int", 0, minimum=0), stall_s=stall_s,
                      start_timeout_s=lc.positive("start_timeout_s"), stall_set=lc.node.get("stall_s") is not None)

    @staticmethod
    def _resources(rc: Fields) -> Resources:
        return Resources(gpus=rc.get("gpus", "int", 0, minimum=0), gpu=rc.get("gpu", "str", None),
                         cpus=rc.get("cpus", "int", None, minimum=1), memory_gb=rc.positive("memory_gb"))

    # -- references --------------------------------------------------------------------------------

    def _refs(self, d: _Draft, ref: Ref, values: list[str]) -> tuple[list[str], list[str]]:
        """Names of jobs (of ``ref.kind``) or URLs -> (their outputs' URLs, the jobs they name)."""
        urls, jobs = [], []
        known = sorted({x.group for x in self.by_name.values() if x.kind.name == ref.kind})
        allowed = (f"{', '.join(known)}, or {ref.hint}" if known
                   else f"{ref.hint} (this spec has no {ref.kind} jobs)")
        for v in values:
            if "://" in v:
                urls.append(v)
                continue
            names = self.groups.get(v) or ([v] if v in self.by_name else [])
            if not names:
                raise d.c.error(ref.key, f"unknown job {quote(v)}{closest(v, known)}; expected one of: {allowed}")
            # a job made in parts stands for the job joining them: the one writing the output
            names = [n for n in names if ref.output in self._made(n)] or names
            if not ref.many and len(names) > 1:
                raise d.c.error(ref.key, f"{quote(v)} names {len(names)} jobs ({', '.join(names)}); expected one: "
                                         "name one of them")
            bad = next((n for n in names if self.by_name[n].kind.name != ref.kind), None)
            if bad:
                raise d.c.error(ref.key, f"job {quote(v)} is {_a(self.by_name[bad].kind.name)} job, not "
                                         f"{_a(ref.kind)} job; expected one of: {allowed}")
            for n in names:
                made = self._made(n)
                if ref.output not in made:
                    raise d.c.error(ref.key, f"job {quote(v)} writes no {ref.output} file ({', '.join(made) or 'nothing'}); "
                                             f"expected a job that does, or {ref.hint}")
                urls.append(made[ref.output])
                jobs.append(n)
        dup = next((u for i, u in enumerate(urls) if u in urls[:i]), None)
        if dup:
            raise d.c.error(ref.key, f"{dup} is listed twice")
        return urls, jobs

    def _made(self, name: str) -> dict[str, str]:
        target = self.by_name[name]
        return target.kind.outputs(target.params, self.plan.run(name))

    def _resolve(self, d: _Draft) -> Job:
        after: list[str] = []
        for a in d.after:
            names = self.groups.get(a) or ([a] if a in self.by_name else [])
            if not names:
                known = sorted(self.groups)
                raise d.c.error("after", f"unknown job {quote(a)}{closest(a, known)}; expected one of: {', '.join(known)}")
            after += names
        p = dict(d.params)
        for ref in d.kind.refs:
            if ref.key in p:
                urls, jobs = self._refs(d, ref, p[ref.key] if ref.many else [p[ref.key]])
                p[ref.key] = urls if ref.many else urls[0]
                after += jobs
        # a job runs after the jobs that write what it reads (a dataset a synth job makes)
        for key in d.kind.reads:
            value = p.get(key)
            after += [w for url in (value if isinstance(value, list) else [value])
                      if (w := self.plan.writers.get(url or "")) not in (None, d.name)]
        run = self.plan.run(d.name)
        return Job(name=d.name, kind=d.kind.name, platforms=d.platforms, after=list(dict.fromkeys(after)),
                   resources=d.resources, limits=d.limits, heartbeat_s=d.heartbeat_s, params=p, line=d.line,
                   argv=d.kind.argv(p, run, d.heartbeat_s), outputs=d.kind.outputs(p, run), priority=d.priority)

    def _order(self, jobs: list[Job]) -> list[Job]:
        """Dependencies first; among jobs ready at the same time, the file's order."""
        placed: set[str] = set()
        out: list[Job] = []
        left = list(jobs)
        while left:
            ready = next((j for j in left if all(a in placed for a in j.after)), None)
            if ready is None:
                raise self._cycle(left)
            out.append(ready)
            placed.add(ready.name)
            left.remove(ready)
        return out

    def _cycle(self, left: list[Job]) -> ConfigError:
        by = {j.name: j for j in left}
        path = [left[0].name]
        while True:
            nxt = next(a for a in by[path[-1]].after if a in by)  # every job left waits on another left
            if nxt in path:
                cycle = path[path.index(nxt):] + [nxt]
                return self.by_name[cycle[0]].c.error("after", "cycle: " + " -> ".join(cycle))
            path.append(nxt)


def load_spec(path: str | os.PathLike, profiles: dict | None = None, check_store: bool = True) -> Spec:
    """Parse and check a job spec (see the module docstring); every error is a :class:`ConfigError`
    naming the file, line, job and field. ``profiles`` (name -> Profile) replaces the platform profiles
    found on disk; ``check_store`` also makes sure the store answers (a file:// folder is created)."""
    return _Loader(path, profiles).load(check_store)
