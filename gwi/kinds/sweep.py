"""``kind: sweep``: hyperparameter search over train jobs (Optuna: TPE, with successive halving or
Hyperband pruning on the validation MAE each trial reports).

The scheduler runs the sweep itself (:mod:`gwi.scheduler.sweeps`): it asks the study for a trial,
starts it as an ordinary train job named ``<sweep>-t<N>`` (placed, retried, resumed like any other),
feeds the study the trial's validation MAE at each validation, cancels a trial the pruner stops,
and ends when ``trials`` trials have ended. ``space`` maps a setting of ``config`` (or ``model``,
``preset``) to one of::

    lr: {log_uniform: [1.0e-5, 3.0e-3]}
    weight_decay: {uniform: [0.0, 0.1]}
    batch_size: {choice: [16, 32, 64]}
    warmup_frac: {uniform: [0.0, 0.1]}
    seed: {int: [0, 9]}

``config`` holds every trial's other settings; give each a ``time_budget`` so trials are comparable
and the pruner's rungs (validations) come at the same fractions of their time.
"""

from __future__ import annotations

import math
from typing import Any

from .. import config as train_config
from ..models import registry
from ..runs import Run
from ..yamlfile import Fields, closest, quote
from .base import JobKind, Plan, dataset_ref, register
from .train import Train, _splits, config_fields

PRUNERS = ("halving", "hyperband", "none")
HOWS = ("log_uniform", "uniform", "int", "choice")


@register
class Sweep(JobKind):
    name = "sweep"
    fields = ("model", "preset", "dataset", "space", "trials", "parallel", "pruner", "seed", "config")
    default_fields = ("dataset", "preset")
    inherits = ("dataset", "preset")
    reads = ("dataset",)
    controller = True
    example = {"model": "inversionnet", "preset": "tiny", "dataset": "example-data", "trials": 4, "parallel": 2,
               "pruner": "halving", "seed": 1,
               "space": {"lr": {"log_uniform": [1.0e-4, 1.0e-2]}, "batch_size": {"choice": [4, 8]}},
               "config": {"time_budget": "2m", "split": "kfold:4:0"}}

    def check(self, c: Fields, own: Fields, plan: Plan, job: str) -> list[tuple[str, dict]]:
        model = c.get("model", "str", choices=registry.list_models())
        preset = c.get("preset", "str", "default")
        dataset = plan.dataset_url(dataset_ref(c, "dataset"))
        cc = c.sub("config")
        cc.only(config_fields())
        config = Train._settings(cc)
        splits = _splits(cc)
        if len(splits) != 1:
            raise cc.error("folds", "a sweep's trials share one validation split: give split or fold, not a list")
        if splits[0][1]:
            config["split"] = splits[0][1]
        space = self._space(c, model, preset, dataset, config)
        trials = c.get("trials", "int", minimum=1)
        parallel = c.get("parallel", "int", 1, minimum=1)
        return [("", {"model": model, "preset": preset, "dataset": dataset, "config": config, "space": space,
                      "trials": trials, "parallel": parallel, "pruner": c.get("pruner", "str", "halving", choices=PRUNERS),
                      "seed": c.get("seed", "int", 0)})]

    @staticmethod
    def _space(c: Fields, model: str, preset: str, dataset: str, config: dict) -> dict[str, dict]:
        sc = c.sub("space")
        allowed = [n for n in train_config.TrainConfig.field_names()
                   if n not in ("dataset", "run", "init_from", "heartbeat_s", "model_args")]
        if not sc.node:
            raise c.error("space", "expected at least one setting to search, like lr: {log_uniform: [1.0e-5, 1.0e-3]}")
        sc.only(allowed)
        space: dict[str, dict] = {}
        for key in sc.node:
            spec = sc.get(key, "mapping")
            if len(spec) != 1 or next(iter(spec)) not in HOWS:
                got = ", ".join(map(str, spec)) or "nothing"
                raise sc.error(key, f"expected one of {', '.join(HOWS)} (e.g. log_uniform: [1.0e-5, 1.0e-3]), got {got}"
                                    + (closest(str(next(iter(spec))), HOWS) if len(spec) == 1 else ""))
            how, arg = next(iter(spec.items()))
            values = _check_range(sc, key, how, arg)
            for v in values:  # every value the search may draw must make a valid train job
                trial = {"model": model, "preset": preset, **{k: val for k, val in config.items()}, key: v}
                try:
                    train_config.TrainConfig(dataset=dataset, run="", **trial).validate()
                except (ValueError, TypeError) as e:
                    raise sc.error(key, f"{quote(v)} does not make a valid trial: {e}") from None
            space[key] = {how: list(arg)}
        return space

    def outputs(self, params: dict, run: Run) -> dict[str, str]:
        return {}

    def summary(self, params: dict) -> str:
        return f"{params['trials']} train trials, {params['parallel']} at a time"

    def argv(self, params: dict, run: Run, heartbeat_s: float) -> list[str]:
        # the scheduler runs a sweep itself; this is how a person looks at one
        return ["gwi", "sweep", "show", "/".join(run.url.rstrip("/").rsplit("/", 2)[-2:])]


def _check_range(sc: Fields, key: str, how: str, arg: Any) -> list:
    """The values of a search dimension worth validating (its ends, or every choice); errors name it."""
    if how == "choice":
        if not isinstance(arg, list) or not arg:
            raise sc.error(key, f"choice: expected a non-empty list of values, got {quote(arg)}")
        return list(arg)
    if (not isinstance(arg, list) or len(arg) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in arg)):
        raise sc.error(key, f"{how}: expected [low, high], got {quote(arg)}")
    lo, hi = arg
    if how == "int" and not all(isinstance(v, int) for v in arg):
        raise sc.error(key, f"int: expected two integers [low, high], got {quote(arg)}")
    if not lo < hi:
        raise sc.error(key, f"{how}: an empty range: expected low < high, got [{lo}, {hi}]")
    if how == "log_uniform" and lo <= 0:
        raise sc.error(key, f"log_uniform: expected low > 0, got {lo}")
    if not all(math.isfinite(v) for v in arg):
        raise sc.error(key, f"{how}: expected finite numbers, got {quote(arg)}")
    return [lo, hi]
