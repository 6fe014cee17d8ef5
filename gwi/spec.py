"""Job specs: what to run and where, checked as a whole before anything launches.

A spec is one YAML file (``jobs/*.yaml``)::

    name: day2                       # optional; default: the file name without .yaml
    store: s3://my-gwi-bucket        # optional; default: the embedded store ($GWI_HOME/store)
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
        kind: synth                  # synth | train | ensemble | predict
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
heartbeat may get before the attempt is declared lost; ``start_timeout_s`` (default: the platform
profile's) is how long a launch may take to send its first heartbeat.

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

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

from .errors import StoreError
from .yamlfile import Checker, ConfigError, Node, type_name, closest, loads

KINDS = ("synth", "train", "ensemble", "predict")
TOP_FIELDS = ("name", "store", "defaults", "jobs")
DEFAULT_FIELDS = ("dataset", "preset", "precision", "heartbeat_s", "platforms", "limits", "resources", "config")
COMMON_FIELDS = ("name", "kind", "platforms", "after", "resources", "limits", "heartbeat_s")
KIND_FIELDS = {
    "synth": ("dataset", "families", "samples", "seed"),
    "train": ("model", "preset", "dataset", "config"),
    "ensemble": ("members", "dataset", "config", "plots"),
    "predict": ("members", "ensemble", "test", "config", "uncertainty", "plots"),
}
# which defaults a job of each kind takes (a synth job's dataset is its output, so no default for it)
DEFAULTS_FOR = {
    "dataset": ("train", "ensemble"), "preset": ("train",), "precision": ("train",), "config": ("train",),
    "heartbeat_s": KINDS, "platforms": KINDS, "limits": KINDS, "resources": KINDS,
}
LIMIT_FIELDS = ("max_hours", "max_cost_usd", "retries", "stall_s", "start_timeout_s")
RESOURCE_FIELDS = ("gpus", "gpu", "cpus", "memory_gb")
ENSEMBLE_CONFIG = ("split", "crf", "mc_samples")
PREDICT_CONFIG = ("tta", "precision", "batch_size", "mc_samples")
# TrainConfig fields that are not config: the job says them, or the spec derives them
TRAIN_NOT_CONFIG = ("model", "dataset", "run", "preset", "heartbeat_s")
SPLIT_KEYS = ("split", "fold", "folds", "k")
DEFAULT_HEARTBEAT_S = 20.0
DEFAULT_K = 5

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*", re.IGNORECASE)
_DATASET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_PATH_PREFIXES = ("/", "./", "../", "~")


@dataclass(frozen=True)
class Limits:
    max_hours: float | None = None
    max_cost_usd: float | None = None
    retries: int = 0
    stall_s: float = 6 * DEFAULT_HEARTBEAT_S
    start_timeout_s: float | None = None


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

    def to_dict(self) -> dict:
        return {
            "name": self.name, "kind": self.kind, "platforms": list(self.platforms), "after": list(self.after),
            "resources": asdict(self.resources), "limits": asdict(self.limits), "heartbeat_s": self.heartbeat_s,
            "params": json.loads(json.dumps(self.params)), "line": self.line, "argv": list(self.argv),
            "outputs": dict(self.outputs),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Job":
        return cls(
            name=d["name"], kind=d["kind"], platforms=list(d["platforms"]), after=list(d["after"]),
            resources=Resources(**d["resources"]), limits=Limits(**d["limits"]), heartbeat_s=float(d["heartbeat_s"]),
            params=json.loads(json.dumps(d["params"])), line=int(d["line"]), argv=list(d["argv"]),
            outputs=dict(d["outputs"]),
        )


@dataclass
class Spec:
    name: str
    path: str
    store: str  # normalised: file:///absolute/path or s3://bucket[/prefix], no trailing slash
    jobs: list[Job]  # dependencies first; file order among jobs that are ready together
    sha256: str = ""  # of the file's bytes

    def job(self, name: str) -> Job:
        for j in self.jobs:
            if j.name == name:
                return j
        names = [j.name for j in self.jobs]
        raise ConfigError(f"{self.path}: no job {name!r} in spec '{self.name}'{closest(name, names)}; "
                          f"expected one of: {', '.join(names)}")


# ------------------------------------------------------------------------------------------------
# checking


class _Fields(Checker):
    """A :class:`Checker` whose messages name nested fields with dots (``field 'limits.stall_s'``)
    and leave out the owner at the top level (``spec.yaml:2: field 'store': ...``)."""

    def __init__(self, file: str, node: dict, owner: str, prefix: str = ""):
        super().__init__(file, node, owner)
        self.prefix = prefix

    def error(self, key: str | None, message: str) -> ConfigError:
        line = self.line(key)
        where = f"{self.file}:{line}" if line else self.file
        who = f"{self.owner}: " if self.owner else ""
        name = self.prefix + key if key else self.prefix.rstrip(".")
        what = f"field '{name}': " if name else ""
        return ConfigError(f"{where}: {who}{what}{message}")

    def sub(self, key: str, owner: str | None = None) -> "_Fields":
        """The mapping under ``key`` (empty when absent or null), checked with the same owner."""
        v = self.node.get(key)
        if v is None:
            v = _node(self.line(key))
        if not isinstance(v, dict):
            raise self.error(key, f"expected a mapping, got {type_name(v)} ({v!r})")
        return _Fields(self.file, v, self.owner if owner is None else owner, self.prefix + key + ".")

    def name(self, key: str, default: Any = ...) -> str:
        v = self.get(key, "str", default)
        if not _NAME.fullmatch(v):
            raise self.error(key, f"expected a name of letters, digits, '-' and '_' starting with a letter or "
                                  f"digit, got {v!r}")
        return v

    def positive(self, key: str, default: Any = None) -> float | None:
        v = self.get(key, "number", default, minimum=0, exclusive_min=True)
        return None if v is None else float(v)


def _node(line: int, items: Iterable[tuple[str, Any, int]] = ()) -> Node:
    n = Node()
    n.line, n.key_lines = line, {}
    for k, v, ln in items:
        n[k] = v
        n.key_lines[k] = ln
    return n


def _entries(node: dict | None) -> list[tuple[str, Any, int]]:
    if not node:
        return []
    return [(k, v, node.line_of(k) if isinstance(node, Node) else 0) for k, v in node.items()]


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _train():
    from . import config

    return config


def _scalar(v: Any) -> str:
    """A ``--set`` value that YAML (what ``gwi train --set`` parses with) reads back as ``v``."""
    text = v if isinstance(v, str) else json.dumps(v)
    try:
        back = yaml.safe_load(text)
        if back == v and type(back) is type(v):
            return text
    except yaml.YAMLError:
        pass
    if isinstance(v, str):
        return json.dumps(v)
    # e.g. 1e-05, which YAML 1.1 reads as a string; its own spelling is 1.0e-05
    return yaml.safe_dump(v, default_flow_style=True, width=1 << 30).strip().removesuffix("...").strip()


def _normalise_store(c: _Fields, url: str) -> str:
    if url.startswith("s3://"):
        if not url[len("s3://"):].split("/")[0]:
            raise c.error("store", f"s3 URL has no bucket: expected s3://BUCKET[/PREFIX], got {url!r}")
        return url.rstrip("/")
    if url.startswith("file://"):
        path = url[len("file://"):] or "."
    elif "://" in url:
        raise c.error("store", f"unsupported URL scheme in {url!r}; expected one of: file://, s3://")
    else:
        path = url
    # a relative folder means the folder here, wherever the job later runs
    return "file://" + str(Path(path).expanduser().resolve())


def _check_store(c: _Fields, url: str) -> None:
    from .store import open_store

    try:
        if url.startswith("file://"):
            # the embedded default starts empty: a missing folder is one to make, not a typo to report
            Path(url[len("file://"):]).mkdir(parents=True, exist_ok=True)
        open_store(url).list("datasets")
    except StoreError as e:
        raise c.error("store", f"cannot reach {url}: {e}") from None
    except OSError as e:
        raise c.error("store", f"cannot reach {url}: {e.strerror or e}") from None


def _check_split(c: _Fields, key: str, value: str) -> str:
    from .data.layout import FAMILIES

    kind, _, rest = value.partition(":")
    if kind == "kfold":
        m = re.fullmatch(r"(\d+):(\d+)", rest)
        if m and int(m[1]) >= 2 and int(m[2]) < int(m[1]):
            return value
        raise c.error(key, f"expected 'kfold:K:FOLD' with K >= 2 and 0 <= FOLD < K, got {value!r}")
    if kind == "family":
        if rest in FAMILIES:
            return value
        raise c.error(key, f"unknown family {rest!r}{closest(rest, FAMILIES)}; expected one of: "
                           f"{', '.join(sorted(FAMILIES))}")
    raise c.error(key, f"expected 'kfold:K:FOLD' or 'family:NAME', got {value!r}")


def _dataset_ref(c: _Fields, key: str, value: Any = ...) -> str:
    v = c.get(key, "str") if value is ... else value
    if "://" in v or _DATASET.fullmatch(v):
        return v
    raise c.error(key, f"expected a dataset name (letters, digits, '.', '_', '-') or a URL, got {v!r}")


@dataclass
class _Draft:
    """A job checked on its own, before references to other jobs are resolved."""

    name: str
    kind: str
    line: int
    c: _Fields  # the job's merged fields (its own over the defaults), for errors
    platforms: list[str]
    after: list[str]
    resources: Resources
    limits: Limits
    heartbeat_s: float
    params: dict
    group: str  # the name in the file (a fold job's group is its train job's name)


class _Loader:
    def __init__(self, path: str | os.PathLike, profiles: dict | None):
        self.path = Path(path)
        self.file = str(path)
        if profiles is None:
            from .adapters.base import load_profiles

            profiles = load_profiles()
        self.platforms = sorted(profiles)
        self.seen: dict[str, int] = {}  # job name -> line, to report duplicates
        self.written: dict[str, str] = {}  # dataset URL -> the synth job writing it

    # -- top level ---------------------------------------------------------------------------------

    def load(self, check_store: bool) -> Spec:
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
        top = _Fields(self.file, root, "")
        top.only(TOP_FIELDS)
        if "name" in root:
            self.name = top.name("name")
        else:
            self.name = self.path.stem
            if not _NAME.fullmatch(self.name):
                raise top.error("name", f"the file name {self.name!r} is not a spec name (letters, digits, '-' "
                                        "and '_'); set name: in the file")
        from .store import default_store_url

        self.store = _normalise_store(top, top.get("store", "str", None) or default_store_url())
        defaults = top.sub("defaults", "defaults")
        defaults.prefix = ""
        self.defaults = self._defaults(defaults)
        jobs = top.get("jobs", "list")
        if not jobs:
            raise top.error("jobs", "expected at least one job")

        drafts: list[_Draft] = []
        for i, raw in enumerate(jobs, start=1):
            drafts += self._job(top, i, raw)
        self.by_name = {d.name: d for d in drafts}
        self.groups: dict[str, list[str]] = {}
        for d in drafts:
            self.groups.setdefault(d.group, []).append(d.name)
        jobs_out = [self._resolve(d) for d in drafts]
        spec = Spec(self.name, self.file, self.store, self._order(jobs_out), hashlib.sha256(data).hexdigest())
        if check_store:
            _check_store(top, self.store)
        return spec

    def _defaults(self, c: _Fields) -> dict:
        c.only(DEFAULT_FIELDS)
        if "dataset" in c.node:
            _dataset_ref(c, "dataset")
        c.get("preset", "str", None)
        if c.node.get("precision") is not None:
            c.get("precision", "str", choices=_train().PRECISIONS)
        c.positive("heartbeat_s")
        if c.node.get("platforms") is not None:
            self._platforms(c)
        c.sub("limits").only(LIMIT_FIELDS)
        c.sub("resources").only(RESOURCE_FIELDS)
        if c.node.get("config"):
            c.sub("config").only(self._train_config_fields())
        return c.node

    def _platforms(self, c: _Fields) -> list[str]:
        if not self.platforms:
            raise c.error("platforms", "no platform profiles found (platforms/*.yaml, $GWI_PLATFORMS)")
        names = c.get("platforms", "str-list", choices=self.platforms)
        if not names:
            raise c.error("platforms", f"expected at least one platform; expected one of: {', '.join(self.platforms)}")
        dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if dup:
            raise c.error("platforms", f"{dup!r} is listed twice")
        return list(names)

    # -- one job -----------------------------------------------------------------------------------

    def _job(self, top: _Fields, i: int, raw: Any) -> list[_Draft]:
        if not isinstance(raw, dict):
            raise ConfigError(f"{self.file}:{top.line('jobs')}: job #{i}: expected a mapping, got {type_name(raw)} "
                              f"({raw!r})")
        own = _Fields(self.file, raw, f"job #{i}")
        name = own.name("name")
        own.owner = f"job '{name}'"
        # run URLs are folders: names differing only in case would share one on macOS and Windows
        for other, line in self.seen.items():
            if other.lower() == name.lower():
                raise own.error("name", f"duplicate job name {name!r} (also at line {line})")
        kind = own.get("kind", "str", choices=KINDS)
        own.only(COMMON_FIELDS + KIND_FIELDS[kind])

        # the job's view: the defaults it takes, then its own fields; lines say where each came from
        merged = _node(raw.line, [e for e in _entries(self.defaults) if kind in DEFAULTS_FOR[e[0]]
                                  and e[0] not in ("limits", "resources", "config", "precision")])
        for k, v, ln in _entries(raw):
            merged[k], merged.key_lines[k] = v, ln
        for key, allowed in (("limits", LIMIT_FIELDS), ("resources", RESOURCE_FIELDS)):
            own.sub(key).only(allowed)
            merged[key] = _node(own.line(key), _entries(self.defaults.get(key)) + _entries(raw.get(key)))
            merged.key_lines.setdefault(key, raw.line)
        c = _Fields(self.file, merged, own.owner)

        platforms = self._platforms(c)
        after = list(c.get("after", "str-list", []))
        heartbeat_s = c.positive("heartbeat_s", DEFAULT_HEARTBEAT_S)
        lc, rc = c.sub("limits"), c.sub("resources")
        stall_s = lc.positive("stall_s", 6 * heartbeat_s)
        if stall_s <= heartbeat_s:
            raise lc.error("stall_s", f"expected more than heartbeat_s ({heartbeat_s:g}), got {stall_s:g}: "
                                      "every attempt would be declared lost between two heartbeats")
        cost = lc.get("max_cost_usd", "number", None, minimum=0)
        limits = Limits(max_hours=lc.positive("max_hours"), max_cost_usd=None if cost is None else float(cost),
                        retries=lc.get("retries", "int", 0, minimum=0), stall_s=stall_s,
                        start_timeout_s=lc.positive("start_timeout_s"))
        mem = rc.positive("memory_gb")
        resources = Resources(gpus=rc.get("gpus", "int", 0, minimum=0), gpu=rc.get("gpu", "str", None),
                              cpus=rc.get("cpus", "int", None, minimum=1), memory_gb=mem)

        base = dict(name=name, kind=kind, line=raw.line, c=c, platforms=platforms, after=after,
                    resources=resources, limits=limits, heartbeat_s=heartbeat_s, group=name)
        if kind == "train":
            drafts = [_Draft(**{**base, "name": n}, params=p)
                      for n, p in self._train_job(c, own, raw, name, heartbeat_s)]
        elif kind == "synth":
            drafts = [_Draft(**base, params=self._synth_job(c, name))]
        else:
            drafts = [_Draft(**base, params=getattr(self, f"_{kind}_job")(c))]
        for d in drafts:
            if d.name != name:
                for other, line in self.seen.items():
                    if other.lower() == d.name.lower():
                        raise own.error("config", f"fold job {d.name!r} clashes with job {other!r} (line {line})")
            self.seen[d.name] = raw.line_of("name")
        return drafts

    def _url(self, dataset: str) -> str:
        return dataset if "://" in dataset else f"{self.store}/datasets/{dataset}"

    def _synth_job(self, c: _Fields, name: str) -> dict:
        from .data.layout import FAMILIES

        dataset = c.get("dataset", "str")
        if not _DATASET.fullmatch(dataset):
            raise c.error("dataset", f"expected a dataset name (letters, digits, '.', '_', '-'), got {dataset!r}")
        if self._url(dataset) in self.written:
            raise c.error("dataset", f"dataset {dataset!r} is also written by job {self.written[self._url(dataset)]!r}")
        self.written[self._url(dataset)] = name
        families = c.get("families", "str-list", choices=FAMILIES)
        if not families:
            raise c.error("families", f"expected at least one family; expected one of: {', '.join(sorted(FAMILIES))}")
        dup = next((f for i, f in enumerate(families) if f in families[:i]), None)
        if dup:
            raise c.error("families", f"{dup!r} is listed twice")
        return {"dataset": self._url(dataset), "families": list(families),
                "samples": c.get("samples", "int", minimum=1), "seed": c.get("seed", "int", 0, minimum=0)}

    def _train_config_fields(self) -> list[str]:
        names = _train().TrainConfig.field_names()
        return [n for n in names if n not in TRAIN_NOT_CONFIG] + ["fold", "folds", "k"]

    def _train_job(self, c: _Fields, own: _Fields, raw: dict, name: str, heartbeat_s: float) -> list[tuple[str, dict]]:
        from .models import registry

        train = _train()
        model = c.get("model", "str", choices=registry.list_models())
        presets = list(registry.model_card(model).presets)
        preset = c.get("preset", "str", "default")
        if preset not in presets:
            raise c.error("preset", f"unknown value {preset!r}{closest(preset, presets)} for model {model!r}; "
                                    f"expected one of: {', '.join(sorted(presets))}")
        dataset = self._url(_dataset_ref(c, "dataset"))

        allowed = self._train_config_fields()
        own_cfg = own.sub("config")
        for k in own_cfg.node:
            if k in TRAIN_NOT_CONFIG and k not in ("model", "dataset", "run"):
                raise own_cfg.error(k, f"set {k} on the job (or in defaults), not in config")
        own_cfg.only(allowed)
        # a job that chooses its own split replaces the default one instead of mixing with it
        d_cfg = [e for e in _entries(self.defaults.get("config"))
                 if not (e[0] in SPLIT_KEYS and any(k in SPLIT_KEYS for k in raw.get("config") or {}))]
        if self.defaults.get("precision") is not None:
            d_cfg = [("precision", self.defaults["precision"], self.defaults.line_of("precision"))] + d_cfg
        cfg_line = raw.line_of("config") if "config" in raw else raw.line
        c.node["config"] = _node(cfg_line, d_cfg + _entries(raw.get("config")))
        cc = c.sub("config")

        defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                    for f in dataclasses.fields(train.TrainConfig) if f.name not in TRAIN_NOT_CONFIG}
        config: dict[str, Any] = {}
        for k in cc.node:
            if k in SPLIT_KEYS:
                continue
            d = defaults[k]
            kind = {bool: "bool", int: "int", float: "number", str: "str", dict: "mapping"}.get(type(d), "any")
            v = cc.get(k, kind)
            if kind == "number":
                v = float(v)
            if kind == "mapping":
                try:
                    v = json.loads(json.dumps(dict(v)))
                except (TypeError, ValueError):
                    raise cc.error(k, f"expected plain YAML values (numbers, strings, lists), got {v!r}") from None
            config[k] = v

        splits = self._splits(cc)
        out = []
        for suffix, split in splits:
            job_cfg = dict(config)
            if split is not None:
                job_cfg["split"] = split
            try:
                tc = train.TrainConfig(model=model, dataset=dataset, run="", preset=preset,
                                       **job_cfg)
                tc.heartbeat_s = heartbeat_s
                tc.validate()
            except ValueError as e:
                key, _, why = str(e).partition(": ")
                if key in cc.node:
                    raise cc.error(key, why) from None
                raise c.error("config", str(e)) from None
            out.append((name + suffix, {"model": model, "preset": preset, "dataset": dataset, "config": job_cfg}))
        return out

    def _splits(self, cc: _Fields) -> list[tuple[str, str | None]]:
        """(job name suffix, split) pairs: one without a suffix, or one per fold of a folds list."""
        n = cc.node
        if "split" in n:
            for other in ("fold", "folds", "k"):
                if other in n:
                    raise cc.error(other, "give split, or fold/folds, not both")
            return [("", _check_split(cc, "split", cc.get("split", "str")))]
        folds = n.get("folds")
        if isinstance(folds, list):
            if "fold" in n:
                raise cc.error("fold", "a list of folds makes one job per fold: give fold only with folds: K")
            k = cc.get("k", "int", DEFAULT_K, minimum=2)
            if not folds:
                raise cc.error("folds", "expected at least one fold")
            for f in folds:
                if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f < k:
                    raise cc.error("folds", f"expected fold indices in 0..{k - 1} (k: {k}), got {f!r}")
            dup = next((f for i, f in enumerate(folds) if f in folds[:i]), None)
            if dup is not None:
                raise cc.error("folds", f"fold {dup} is listed twice")
            return [(f"-f{f}", f"kfold:{k}:{f}") for f in folds]
        if "k" in n:
            raise cc.error("k", "k only goes with a list of folds; with one fold use folds: K")
        if "fold" not in n and "folds" not in n:
            return [("", None)]
        k = cc.get("folds", "int", DEFAULT_K, minimum=2)
        f = cc.get("fold", "int", 0, minimum=0)
        if f >= k:
            raise cc.error("fold", f"expected a fold in 0..{k - 1} (folds: {k}), got {f}")
        return [("", f"kfold:{k}:{f}")]

    def _members(self, c: _Fields) -> list[str]:
        members = list(c.get("members", "str-list"))
        if not members:
            raise c.error("members", "expected at least one member: a train job of this spec or a run URL")
        return members

    def _ensemble_job(self, c: _Fields) -> dict:
        cc = c.sub("config")
        cc.only(ENSEMBLE_CONFIG)
        config: dict[str, Any] = {}
        if cc.node.get("split") is not None:
            config["split"] = _check_split(cc, "split", cc.get("split", "str"))
        config["crf"] = cc.get("crf", "bool", True)
        if cc.node.get("mc_samples") is not None:
            config["mc_samples"] = cc.get("mc_samples", "int", minimum=0)
        return {"members": self._members(c), "dataset": self._url(_dataset_ref(c, "dataset")),
                "config": config, "plots": c.get("plots", "bool", True)}

    def _predict_job(self, c: _Fields) -> dict:
        has_m, has_e = c.node.get("members") is not None, c.node.get("ensemble") is not None
        if has_m and has_e:
            raise c.error("ensemble", "give members or ensemble, not both")
        if not has_m and not has_e:
            raise c.error("members", "required field is missing: give members (train jobs or run URLs) or "
                                     "ensemble (an ensemble job or an ensemble.json URL)")
        cc = c.sub("config")
        cc.only(PREDICT_CONFIG)
        config: dict[str, Any] = {"tta": cc.get("tta", "str", "none", choices=("none", "flip"))}
        if cc.node.get("precision") is not None:
            config["precision"] = cc.get("precision", "str", choices=_train().PRECISIONS)
        if cc.node.get("batch_size") is not None:
            config["batch_size"] = cc.get("batch_size", "int", minimum=1)
        if cc.node.get("mc_samples") is not None:
            config["mc_samples"] = cc.get("mc_samples", "int", minimum=0)
        test = c.get("test", "str")
        if test.startswith(_PATH_PREFIXES):
            # a folder is where the spec file says, not where dispatch happens to be run from
            test = os.path.abspath(os.path.join(self.path.parent.absolute(), os.path.expanduser(test)))
        elif "://" in test or _DATASET.fullmatch(test):
            test = self._url(test)
        else:
            raise c.error("test", "expected a dataset name, a URL, or a folder starting with /, ./, ../ or ~, "
                                  f"got {test!r}")
        out: dict[str, Any] = {}
        if has_m:
            out["members"] = self._members(c)
        else:
            out["ensemble"] = c.get("ensemble", "str")
        return {**out, "test": test, "config": config, "uncertainty": c.get("uncertainty", "bool", False),
                "plots": c.get("plots", "bool", False)}

    # -- references --------------------------------------------------------------------------------

    def _names_of(self, kind: str) -> list[str]:
        return sorted({d.group for d in self.by_name.values() if d.kind == kind})

    def _refs(self, d: _Draft, key: str, values: list[str], kind: str, url_hint: str) -> tuple[list[str], list[str]]:
        """Names of jobs (of ``kind``) or URLs -> (their URLs or jobs, the jobs they name)."""
        urls, jobs = [], []
        for v in values:
            if "://" in v:
                urls.append(v)
                continue
            known = self._names_of(kind)
            allowed = f"{', '.join(known)}, or {url_hint}" if known else f"{url_hint} (this spec has no {kind} jobs)"
            names = self.groups.get(v) or ([v] if v in self.by_name else [])
            if not names:
                raise d.c.error(key, f"unknown job {v!r}{closest(v, known)}; expected one of: {allowed}")
            bad = next((n for n in names if self.by_name[n].kind != kind), None)
            if bad:
                raise d.c.error(key, f"job {v!r} is {_a(self.by_name[bad].kind)} job, not {_a(kind)} job; "
                                     f"expected one of: {allowed}")
            for n in names:
                urls.append(self._run(n) if kind == "train" else self._run(n) + "/ensemble.json")
                jobs.append(n)
        dup = next((u for i, u in enumerate(urls) if u in urls[:i]), None)
        if dup:
            raise d.c.error(key, f"{dup} is listed twice")
        return urls, jobs

    def _run(self, job: str) -> str:
        return f"{self.store}/runs/{self.name}/{job}"

    def _resolve(self, d: _Draft) -> Job:
        after: list[str] = []
        for a in d.after:
            names = self.groups.get(a) or ([a] if a in self.by_name else [])
            if not names:
                known = sorted(self.groups)
                raise d.c.error("after", f"unknown job {a!r}{closest(a, known)}; expected one of: {', '.join(known)}")
            after += names
        p = dict(d.params)
        run = self._run(d.name)
        if d.kind in ("ensemble", "predict") and "members" in p:
            p["members"], jobs = self._refs(d, "members", p["members"], "train", "a run URL")
            after += jobs
        if "ensemble" in p:
            urls, jobs = self._refs(d, "ensemble", [p["ensemble"]], "ensemble", "an ensemble.json URL")
            p["ensemble"] = urls[0]
            after += jobs
        for key in ("dataset", "test"):
            writer = self.written.get(p.get(key, ""))
            if d.kind != "synth" and writer is not None:
                after.append(writer)
        after = list(dict.fromkeys(after))

        if d.kind == "synth":
            argv = ["gwi", "data", "synth", "--out", self.store, "--name", p["dataset"].rsplit("/", 1)[1],
                    "--family", ",".join(p["families"]), "--samples", str(p["samples"]), "--seed", str(p["seed"]),
                    "--exist-ok"]
            outputs = {"dataset": p["dataset"]}
        elif d.kind == "train":
            argv = ["gwi", "train", "--model", p["model"], "--preset", p["preset"], "--dataset", p["dataset"],
                    "--run", run]
            settings = {**p["config"], "heartbeat_s": d.heartbeat_s}
            order = _train().TrainConfig.field_names()
            for k in sorted(settings, key=order.index):
                if k == "model_args":
                    argv += [a for mk, mv in settings[k].items() for a in ("--set", f"model.{mk}={_scalar(mv)}")]
                else:
                    argv += ["--set", f"{k}={_scalar(settings[k])}"]
            outputs = {"run": run}
        elif d.kind == "ensemble":
            argv = ["gwi", "ensemble", "fit"]
            for m in p["members"]:
                argv += ["--member", m]
            argv += ["--dataset", p["dataset"], "--out", f"{run}/ensemble.json"]
            cfg = p["config"]
            if "split" in cfg:
                argv += ["--split", cfg["split"]]
            if not cfg["crf"]:
                argv += ["--no-crf"]
            if "mc_samples" in cfg:
                argv += ["--mc-samples", str(cfg["mc_samples"])]
            outputs = {"ensemble": f"{run}/ensemble.json"}
            if p["plots"]:
                argv += ["--plots", f"{run}/plots"]
                outputs["plots"] = f"{run}/plots"
        else:
            argv = ["gwi", "predict"]
            if "ensemble" in p:
                argv += ["--ensemble", p["ensemble"]]
            else:
                for m in p["members"]:
                    argv += ["--checkpoint", m]
            argv += ["--test", p["test"], "--out", f"{run}/submission.csv"]
            cfg = p["config"]
            if cfg["tta"] == "flip":
                argv += ["--tta", "flip"]
            for k, flag in (("precision", "--precision"), ("batch_size", "--batch-size"),
                            ("mc_samples", "--mc-samples")):
                if k in cfg:
                    argv += [flag, str(cfg[k])]
            outputs = {"submission": f"{run}/submission.csv"}
            if p["uncertainty"]:
                argv += ["--uncertainty", f"{run}/uncertainty.npy"]
                outputs["uncertainty"] = f"{run}/uncertainty.npy"
            if p["plots"]:
                argv += ["--plots", f"{run}/plots"]
                outputs["plots"] = f"{run}/plots"
        return Job(name=d.name, kind=d.kind, platforms=d.platforms, after=after, resources=d.resources,
                   limits=d.limits, heartbeat_s=d.heartbeat_s, params=p, line=d.line, argv=argv, outputs=outputs)

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
