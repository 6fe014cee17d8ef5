"""``kind: train``: ``gwi train`` of one model on one dataset, its run in the store (resumable).

``config:`` takes the settings of :class:`gwi.config.TrainConfig` plus the validation split, given one
way only: ``split: kfold:K:I`` / ``family:NAME``; ``fold: I`` with ``folds: K``; or ``folds: [0, 2]``
(a list), which makes one job per fold named ``<name>-f0``, ``<name>-f2``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from .. import config as train_config
from ..budget import parse_duration
from ..data.mix import parse_part, spell_part
from ..models import registry
from ..runs import Run
from ..yamlfile import Fields, closest, entries, node_at, quote
from .base import JobKind, Plan, Ref, check_split, dataset_ref, register, scalar

# TrainConfig fields that are not config: the job says them, or the plan derives them
NOT_CONFIG = ("model", "dataset", "datasets", "run", "preset", "heartbeat_s", "init_from")
SPLIT_KEYS = ("split", "fold", "folds", "k")
DEFAULT_K = 5
_YAML_KIND = {bool: "bool", int: "int", float: "number", str: "str", dict: "mapping", list: "str-list"}


def config_fields() -> list[str]:
    return [n for n in train_config.TrainConfig.field_names() if n not in NOT_CONFIG] + ["fold", "folds", "k"]


@register
class Train(JobKind):
    name = "train"
    fields = ("model", "preset", "dataset", "datasets", "init_from", "config")
    default_fields = ("dataset", "preset", "precision", "config")
    inherits = ("dataset", "preset")
    # fine-tuning: start from another train job's run (its latest checkpoint when this job starts)
    refs = (Ref("init_from", "train", "run", "a run URL or a .pt file URL", many=False),)
    reads = ("dataset", "datasets")
    example = {"model": "inversionnet", "preset": "tiny", "dataset": "example-data",
               "config": {"epochs": 2, "lr": 1.0e-5, "ema": 0.99, "folds": [0, 1], "k": 4,
                          "model_args": {"dropout": 0.2}}}

    def check_defaults(self, c: Fields) -> None:
        if "dataset" in c.node:
            dataset_ref(c, "dataset")
        c.get("preset", "str", None)
        if c.node.get("precision") is not None:
            c.get("precision", "str", choices=train_config.PRECISIONS)
        if c.node.get("config"):
            c.sub("config").only(config_fields())

    def check(self, c: Fields, own: Fields, plan: Plan, job: str) -> list[tuple[str, dict]]:
        model = c.get("model", "str", choices=registry.list_models())
        presets = list(registry.model_card(model).presets)
        preset = c.get("preset", "str", "default")
        if preset not in presets:
            raise c.error("preset", f"unknown value {quote(preset)}{closest(preset, presets)} for model {quote(model)}; "
                                    f"expected one of: {', '.join(sorted(presets))}")
        mix = self._datasets(c, own, plan)
        dataset, more = parse_part(mix[0])[0], mix[1:]
        cc = self._merged_config(c, own, plan)
        config = self._settings(cc)
        init_from = c.get("init_from", "str", None)
        if config.get("init_partial") and not init_from:
            raise cc.error("init_partial", "init_partial needs init_from on the job (a train job or a run URL)")
        out = []
        for suffix, split in _splits(cc):
            job_cfg = dict(config) if split is None else {**config, "split": split}
            try:
                train_config.TrainConfig(model=model, dataset=mix[0], datasets=more, run="", preset=preset,
                                         init_from=init_from or "", **job_cfg).validate()
            except ValueError as e:
                key, _, why = str(e).partition(": ")
                if key in cc.node:
                    raise cc.error(key, why) from None
                raise c.error("config", str(e)) from None
            out.append((suffix, {"model": model, "preset": preset, "dataset": dataset, "config": job_cfg,
                                 **({"init_from": init_from} if init_from else {}),
                                 **({"datasets": [parse_part(t)[0] for t in mix], "mix": mix} if len(mix) > 1 else {})}))
        return out

    @staticmethod
    def _datasets(c: Fields, own: Fields, plan: Plan) -> list[str]:
        """``dataset``, or ``datasets:`` (which replaces it): a list of names or URLs, each alone (weight
        1) or with its weight (``synth-aug: 0.3`` or ``synth-aug:0.3``). Returns each as ``URL[:WEIGHT]``,
        the spelling of ``gwi train --dataset``."""
        if "datasets" not in own.node:
            return [plan.dataset_url(dataset_ref(c, "dataset"))]
        if "dataset" in own.node:
            raise own.error("datasets", "give dataset or datasets, not both")
        items = own.get("datasets", "list")
        if not items:
            raise own.error("datasets", "expected at least one dataset")
        spelled, urls = [], []
        for item in items:
            if isinstance(item, dict) and len(item) == 1:
                (name, weight), = item.items()
                item = f"{name}:{weight}"
            elif not isinstance(item, str):
                raise own.error("datasets", f"expected a name, a URL or NAME: WEIGHT, got {quote(item)}")
            try:
                name, weight = parse_part(item)
            except ValueError as e:
                raise own.error("datasets", str(e)) from None
            url = plan.dataset_url(dataset_ref(own, "datasets", name))
            if url in urls:
                raise own.error("datasets", f"{quote(name)} is listed twice")
            urls.append(url)
            spelled.append(spell_part(url, weight))
        return spelled

    @staticmethod
    def _merged_config(c: Fields, own: Fields, plan: Plan) -> Fields:
        """The job's config over the defaults' (and the default precision), lines kept for errors."""
        own_cfg = own.sub("config")
        for k in own_cfg.node:
            if k in NOT_CONFIG and k not in ("model", "dataset", "run"):
                where = "on the job" if k == "init_from" else "on the job (or in defaults)"
                raise own_cfg.error(k, f"set {k} {where}, not in config")
        own_cfg.only(config_fields())
        raw, defaults = own.node, plan.defaults
        # a job that chooses its own split replaces the default one instead of mixing with it
        d_cfg = [e for e in entries(defaults.get("config"))
                 if not (e[0] in SPLIT_KEYS and any(k in SPLIT_KEYS for k in raw.get("config") or {}))]
        if defaults.get("precision") is not None:
            d_cfg = [("precision", defaults["precision"], defaults.line_of("precision"))] + d_cfg
        cfg_line = raw.line_of("config") if "config" in raw else raw.line
        c.node["config"] = node_at(cfg_line, d_cfg + entries(raw.get("config")))
        return c.sub("config")

    @staticmethod
    def _settings(cc: Fields) -> dict[str, Any]:
        """The config's settings (split keys aside), each checked against TrainConfig's field type."""
        defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                    for f in dataclasses.fields(train_config.TrainConfig) if f.name not in NOT_CONFIG}
        config: dict[str, Any] = {}
        for k in cc.node:
            if k in SPLIT_KEYS:
                continue
            if k == "time_budget":  # 2h30m, 45m, 90s, seconds, or auto (the attempt's time limit)
                try:
                    config[k] = parse_duration(cc.node[k], allow_auto=True)
                except ValueError as e:
                    raise cc.error(k, str(e)) from None
                continue
            kind = _YAML_KIND.get(type(defaults[k]), "any")
            v = cc.get(k, kind)
            if kind == "number":
                v = float(v)
            if kind == "mapping":
                try:
                    v = json.loads(json.dumps(dict(v)))
                except (TypeError, ValueError):
                    raise cc.error(k, f"expected plain YAML values (numbers, strings, lists), got {quote(v)}") from None
            config[k] = v
        return config

    def outputs(self, params: dict, run: Run) -> dict[str, str]:
        return {"run": run.url}

    def argv(self, params: dict, run: Run, heartbeat_s: float) -> list[str]:
        argv = ["gwi", "train", "--model", params["model"], "--preset", params["preset"],
                *[a for t in params.get("mix", [params["dataset"]]) for a in ("--dataset", t)], "--run", run.url]
        if params.get("init_from"):
            argv += ["--init-from", params["init_from"]]
        settings = {**params["config"], "heartbeat_s": heartbeat_s}
        order = train_config.TrainConfig.field_names()
        for k in sorted(settings, key=order.index):
            if k == "model_args":
                argv += [a for mk, mv in settings[k].items() for a in ("--set", f"model.{mk}={scalar(mv)}")]
            elif k == "time_budget" and math.isinf(settings[k]):
                argv += ["--set", "time_budget=auto"]
            else:
                argv += ["--set", f"{k}={scalar(settings[k])}"]
        return argv


def _splits(cc: Fields) -> list[tuple[str, str | None]]:
    """(job name suffix, split) pairs: one without a suffix, or one per fold of a folds list."""
    n = cc.node
    if "split" in n:
        for other in ("fold", "folds", "k"):
            if other in n:
                raise cc.error(other, "give split, or fold/folds, not both")
        return [("", check_split(cc, "split", cc.get("split", "str")))]
    folds = n.get("folds")
    if isinstance(folds, list):
        return _fold_list(cc, folds)
    if "k" in n:
        raise cc.error("k", "k only goes with a list of folds; with one fold use folds: K")
    if "fold" not in n and "folds" not in n:
        return [("", None)]
    k = cc.get("folds", "int", DEFAULT_K, minimum=2)
    f = cc.get("fold", "int", 0, minimum=0)
    if f >= k:
        raise cc.error("fold", f"expected a fold in 0..{k - 1} (folds: {k}), got {f}")
    return [("", f"kfold:{k}:{f}")]


def _fold_list(cc: Fields, folds: list) -> list[tuple[str, str]]:
    if "fold" in cc.node:
        raise cc.error("fold", "a list of folds makes one job per fold: give fold only with folds: K")
    k = cc.get("k", "int", DEFAULT_K, minimum=2)
    if not folds:
        raise cc.error("folds", "expected at least one fold")
    for f in folds:
        if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f < k:
            raise cc.error("folds", f"expected fold indices in 0..{k - 1} (k: {k}), got {quote(f)}")
    dup = next((f for i, f in enumerate(folds) if f in folds[:i]), None)
    if dup is not None:
        raise cc.error("folds", f"fold {dup} is listed twice")
    return [(f"-f{f}", f"kfold:{k}:{f}") for f in folds]
