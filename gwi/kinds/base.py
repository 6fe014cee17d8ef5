"""What a job kind is: its fields and their checks, the jobs it reads from, its outputs and its command.

A kind is one module in ``gwi/kinds/`` with one class registered by ``@register`` (see
``gwi/kinds/__init__.py``). The plan loader (``gwi/spec.py``) does what is common to every job
(name, platforms, after, limits, resources, heartbeat, defaults, order) and asks the job's kind for
the rest, so adding a kind touches nothing else.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from ..runs import Run, run_url
from ..yamlfile import Fields, Node, closest, quote

_DATASET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
PATH_PREFIXES = ("/", "./", "../", "~")


@dataclass(frozen=True)
class Ref:
    """A field naming other jobs of the plan (or giving URLs instead): ``members: [egnn]``."""

    key: str  # the field in the kind's params
    kind: str  # the kind of job it may name
    output: str  # which of that job's outputs the name stands for
    hint: str  # what a URL given instead is, for errors ("a run URL")
    many: bool = True  # a list of names, or one


@dataclass
class Plan:
    """What a kind may know of the plan it is checked in."""

    file: str
    name: str
    store: str  # normalised store URL
    defaults: Node
    writers: dict[str, str] = field(default_factory=dict)  # output URL -> the job writing it
    # the jobs checked so far (those above in the file): name -> (kind, params), and the name in the
    # file -> the jobs it made (a train job with a list of folds makes one per fold)
    jobs: dict[str, tuple[str, dict]] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return Path(self.file).parent.absolute()

    def dataset_url(self, dataset: str) -> str:
        return dataset if "://" in dataset else f"{self.store}/datasets/{dataset}"

    def run(self, job: str) -> Run:
        return Run(run_url(self.store, self.name, job))

    def claim(self, c: Fields, key: str, url: str, job: str, what: str) -> None:
        """``job`` writes ``url`` (``what``, for the error): a second writer is an error at ``key``."""
        if url in self.writers and self.writers[url] != job:
            raise c.error(key, f"{what} is also written by job {quote(self.writers[url])}")
        self.writers[url] = job


class JobKind:
    """One kind of job. Subclasses set the class attributes and implement :meth:`check`,
    :meth:`outputs` and :meth:`argv`."""

    name: ClassVar[str]
    fields: ClassVar[tuple[str, ...]] = ()  # its own fields in a job, beside the common ones
    default_fields: ClassVar[tuple[str, ...]] = ()  # keys of the plan's ``defaults:`` it reads
    inherits: ClassVar[tuple[str, ...]] = ()  # of those, the ones a job takes as they are when it lacks them
    refs: ClassVar[tuple[Ref, ...]] = ()  # fields naming other jobs
    reads: ClassVar[tuple[str, ...]] = ()  # params holding URLs another job of the plan may write
    # a job of this kind using every field, named after the kind, that may name the other kinds'
    # examples as jobs: documentation, and what the tests build every kind's command from
    example: ClassVar[dict]
    # run by the scheduler itself, not launched on a platform (a sweep starts train jobs of its own)
    controller: ClassVar[bool] = False

    def check_defaults(self, c: Fields) -> None:
        """Check the ``defaults:`` keys this kind reads, where they are written."""

    def check(self, c: Fields, own: Fields, plan: Plan, job: str) -> list[tuple[str, dict]]:
        """The job's kind-specific fields -> [(name suffix, params)]: one job, or several (folds).
        ``c`` holds the job's fields merged over the defaults it inherits, ``own`` only its own."""
        raise NotImplementedError

    def outputs(self, params: dict, run: Run) -> dict[str, str]:
        """What the job produces, as store URLs, by name (``run``, ``dataset``, ``submission``...)."""
        raise NotImplementedError

    def argv(self, params: dict, run: Run, heartbeat_s: float) -> list[str]:
        """The ``gwi`` command the job runs, on every platform."""
        raise NotImplementedError

    # a controller's side of ``gwi dispatch --dry-run``
    def summary(self, params: dict) -> str:
        """What the scheduler will do with the job, in a few words."""
        return ""

    def preview(self, params: dict, run: Run, heartbeat_s: float) -> list[tuple[str, list[str]]]:
        """(job name suffix, command) of the first jobs the controller will add."""
        return []


# ------------------------------------------------------------------------------------------------
# checks several kinds share


def dataset_ref(c: Fields, key: str, value: Any = ...) -> str:
    v = c.get(key, "str") if value is ... else value
    if "://" in v or _DATASET.fullmatch(v):
        return v
    raise c.error(key, f"expected a dataset name (letters, digits, '.', '_', '-') or a URL, got {quote(v)}")


def dataset_name(c: Fields, key: str) -> str:
    """A dataset the job writes: a bare name (it goes to STORE/datasets/)."""
    v = c.get(key, "str")
    if not _DATASET.fullmatch(v):
        raise c.error(key, f"expected a dataset name (letters, digits, '.', '_', '-'), got {quote(v)}")
    return v


def folder(plan: Plan, path: str) -> str:
    """A folder a plan names (``/``, ``./``, ``../``, ``~``), absolute: where the plan file says, not where
    dispatch happens to be run from."""
    return os.path.abspath(os.path.join(plan.folder, os.path.expanduser(path)))


def dataset_or_folder(c: Fields, key: str, plan: Plan) -> str:
    """A dataset name, a URL, or a folder; a folder is where the plan file says, not where dispatch
    happens to be run from."""
    v = c.get(key, "str")
    if v.startswith(PATH_PREFIXES):
        return folder(plan, v)
    if "://" in v or _DATASET.fullmatch(v):
        return plan.dataset_url(v)
    raise c.error(key, f"expected a dataset name, a URL, or a folder starting with /, ./, ../ or ~, got {quote(v)}")


MAX_SHARDS = 256


def shards_of(c: Fields) -> int:
    """``shards``: how many jobs share the work (default 1)."""
    shards = c.get("shards", "int", 1, minimum=1)
    if shards > MAX_SHARDS:
        raise c.error("shards", f"expected at most {MAX_SHARDS}, got {shards}")
    return shards


def in_parts(c: Fields, plan: Plan, job: str, dataset: str, shards: int, common: dict) -> list[tuple[str, dict]]:
    """The drafts of a kind that writes ``dataset`` in parts: ``<job>-s<i>`` writing part i of N (its
    ``shard``), then ``<job>`` itself joining them (its ``parts``, which it reads: it runs after them).
    One draft when ``shards`` is 1."""
    if shards == 1:
        return [("", {**common, "shard": None})]
    drafts, parts = [], []
    for i in range(1, shards + 1):
        part = f"{dataset}/parts/{i}-of-{shards}.json"
        plan.claim(c, "shards", part, f"{job}-s{i}", f"part {i}/{shards}")
        drafts.append((f"-s{i}", {**common, "shard": f"{i}/{shards}"}))
        parts.append(part)
    return drafts + [("", {**common, "parts": parts})]


def submission_parts(c: Fields, plan: Plan, job: str, shards: int, common: dict) -> list[tuple[str, dict]]:
    """The drafts of a kind that writes a submission in parts: ``<job>-s<i>`` writing its share (its
    ``shard``) to its own run folder, then ``<job>`` joining them (its ``parts``: the parts' URLs).
    One draft when ``shards`` is 1."""
    if shards == 1:
        return [("", {**common, "shard": None})]
    drafts, parts = [], []
    for i in range(1, shards + 1):
        name = f"{job}-s{i}"
        part = plan.run(name).submission_url
        plan.claim(c, "shards", part, name, f"shard {i}/{shards}")
        drafts.append((f"-s{i}", {**common, "shard": f"{i}/{shards}"}))
        parts.append(part)
    return drafts + [("", {**common, "parts": parts})]


def part_outputs(params: dict) -> dict[str, str]:
    """What a draft of :func:`in_parts` writes: its part, or (the joining job) the dataset."""
    if params.get("shard"):
        i, n = params["shard"].split("/")
        return {"part": f"{params['dataset']}/parts/{i}-of-{n}.json"}
    return {"dataset": params["dataset"]}


def merge_argv(params: dict) -> list[str] | None:
    """The joining job's command (``gwi data merge``); None for the other drafts."""
    if not params.get("parts"):
        return None
    store, _, name = params["dataset"].rpartition("/datasets/")
    return ["gwi", "data", "merge", "--out", store, "--name", name, "--parts", str(len(params["parts"]))]


def check_split(c: Fields, key: str, value: str) -> str:
    from ..data.layout import FAMILIES

    kind, _, rest = value.partition(":")
    if kind == "kfold":
        m = re.fullmatch(r"(\d+):(\d+)", rest)
        if m and int(m[1]) >= 2 and int(m[2]) < int(m[1]):
            return value
        raise c.error(key, f"expected 'kfold:K:FOLD' with K >= 2 and 0 <= FOLD < K, got {quote(value)}")
    if kind == "family":
        if rest in FAMILIES:
            return value
        raise c.error(key, f"unknown family {quote(rest)}{closest(rest, FAMILIES)}; expected one of: "
                           f"{', '.join(sorted(FAMILIES))}")
    raise c.error(key, f"expected 'kfold:K:FOLD' or 'family:NAME', got {quote(value)}")


def post_steps(cc: Fields) -> str:
    """``post``: post-processing steps of predict and evaluate (``plateau`` or ``plateau:20``), checked."""
    from ..postprocess import parse

    v = cc.get("post", "str")
    try:
        return ",".join(map(str, parse(v)))
    except ValueError as e:
        raise cc.error("post", str(e).removeprefix("--post: ")) from None


def optional(cc: Fields, config: dict, key: str, kind: str, **checks) -> None:
    """Copy ``key`` into ``config`` when the plan gives it (commands keep their own defaults)."""
    if cc.node.get(key) is not None:
        config[key] = cc.get(key, kind, **checks)


def flags(config: dict, table: tuple[tuple[str, str], ...]) -> list[str]:
    """``--flag value`` for each (config key, flag) present in ``config``."""
    return [a for k, flag in table if k in config for a in (flag, str(config[k]))]


def scalar(v: Any) -> str:
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


# ------------------------------------------------------------------------------------------------
# the table of kinds (gwi/kinds/__init__.py imports each kind's module, which registers it)

_KINDS: dict[str, JobKind] = {}


def register(cls: type[JobKind]) -> type[JobKind]:
    if cls.name in _KINDS and type(_KINDS[cls.name]) is not cls:
        raise ValueError(f"job kind {quote(cls.name)} is registered twice")
    _KINDS[cls.name] = cls()
    return cls


def unregister(name: str) -> None:
    """For tests that register a kind of their own."""
    _KINDS.pop(name, None)


def get(name: str) -> JobKind:
    return _KINDS[name]


def names() -> list[str]:
    return list(_KINDS)
