"""``kind: cycle``: rounds of pseudo-labelling, the winners' loop, run by the scheduler.

Each round predicts the test set with the previous round's model (round 1: the ``start`` train job's),
re-simulates the predicted maps into a labelled dataset, trains the next model from the previous one's
weights on the start job's data mixed with the rounds' pseudo sets, and evaluates it on the start
job's validation split (round 0 evaluates the start model). After a round's evaluation the next round
starts only when its validation MAE is at least ``min_gain`` m/s below the best before it::

    - name: cycles
      kind: cycle
      start: convnext           # a train job of this plan (above): its model, data, config and split
      test: kaggle-test-f16     # the test data each round predicts (a dataset name, a URL or a folder)
      rounds: 3
      min_gain: 2.0             # m/s (default 0: stop at the first round that does not improve;
                                #   none: run every round)
      pseudo: 0.5               # weight of each pseudo set in the mix (samples per epoch as a
                                #   multiple of its size; default 1)
      keep: all                 # all (default): every earlier round's pseudo set stays in the mix;
                                #   last: only the round's own
      flip: true                # each pseudo map also mirrored
      backend: openfwi          # the forward model of the pseudo sets (default openfwi)
      shards: {predict: 4, pseudo: 8}    # or one number for both (default 1)
      predict: {tta: flip, precision: bf16, batch_size: 64, post: plateau}   # also each evaluation's
      config: {time_budget: 2h, lr: 1.0e-4}   # each round's training, over the start job's config

The rounds are ordinary jobs the scheduler adds to the plan as the loop goes on (placed, retried, moved
and resumed like any other): ``<cycle>-r0-evaluate``; then for round R ``<cycle>-rR-predict`` (with
``-s<i>`` parts), ``<cycle>-rR-pseudo`` (likewise), ``<cycle>-rR-train`` and ``<cycle>-rR-evaluate``.
Every round's outputs are kept under ``STORE/runs/<plan>/<cycle>/rounds/R/``: ``predict/`` (its
submission.csv), ``datasets/pseudo/``, ``train/`` (the run) and ``evaluate/`` (evaluation.json).
:func:`round_steps` is the whole of what a round runs; :mod:`gwi.scheduler.cycles` drives them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import config as train_config
from ..data.mix import parse_part, spell_part
from ..physics import BACKENDS, DEFAULT_BACKEND
from ..runs import Run
from ..yamlfile import Fields, quote
from .base import MAX_SHARDS, JobKind, Plan, Ref, dataset_or_folder, register
from .predict import settings as predict_settings
from .train import SPLIT_KEYS, Train, config_fields

KEEP = ("all", "last")
PREDICT_CONFIG = ("tta", "precision", "batch_size", "post")
MAX_ROUNDS = 20


@dataclass(frozen=True)
class Step:
    """One job of a round, as the scheduler adds it: ``<cycle>-<name>``."""

    name: str  # r2-predict-s1
    kind: str  # a registered kind (its params are that kind's, so views read them as for any job)
    params: dict
    run: str  # its folder's URL
    after: tuple[str, ...] = ()  # names of steps of the same round


@register
class Cycle(JobKind):
    name = "cycle"
    fields = ("start", "test", "rounds", "min_gain", "pseudo", "keep", "flip", "backend", "shards", "predict",
              "config")
    refs = (Ref("start", "train", "run", "a train job of this plan", many=False),)
    reads = ("test",)
    controller = True
    example = {"start": "train-f0", "test": "example-data", "rounds": 2, "min_gain": 1.0, "pseudo": 0.5,
               "keep": "all", "flip": True, "backend": "deepwave", "shards": {"predict": 2, "pseudo": 2},
               "predict": {"tta": "none", "batch_size": 4}, "config": {"epochs": 1, "lr": 1.0e-4}}

    def check(self, c: Fields, own: Fields, plan: Plan, job: str) -> list[tuple[str, dict]]:
        start = self._start(c, plan)
        sp = plan.jobs[start][1]
        cc = c.sub("config")
        cc.only([k for k in config_fields() if k not in SPLIT_KEYS])
        if "init_partial" in cc.node:
            raise cc.error("init_partial", "each round starts from the whole of the previous round's model")
        config = {**{k: v for k, v in sp["config"].items() if k != "init_partial"}, **Train._settings(cc)}
        mix = list(sp.get("mix", [sp["dataset"]]))
        try:
            pseudo = spell_part(f"{plan.run(job).url}/rounds/1/datasets/pseudo", self._weight(c))
            train_config.TrainConfig(model=sp["model"], dataset=mix[0], datasets=mix[1:] + [pseudo], run="",
                                     preset=sp["preset"], init_from=plan.run(start).url, **config).validate()
        except ValueError as e:
            key, _, why = str(e).partition(": ")
            raise cc.error(key if key in cc.node else "", why or str(e)) from None
        pc = c.sub("predict")
        pc.only(PREDICT_CONFIG)
        predict = predict_settings(pc)
        rounds = c.get("rounds", "int", minimum=1)
        if rounds > MAX_ROUNDS:
            raise c.error("rounds", f"expected at most {MAX_ROUNDS}, got {rounds}")
        return [("", {"start": start, "test": dataset_or_folder(c, "test", plan), "rounds": rounds,
                      "min_gain": self._min_gain(c),
                      "pseudo": self._weight(c), "keep": c.get("keep", "str", "all", choices=KEEP),
                      "flip": c.get("flip", "bool", False),
                      "backend": c.get("backend", "str", DEFAULT_BACKEND, choices=BACKENDS),
                      "shards": self._shards(c), "predict": predict,
                      "train": {"model": sp["model"], "preset": sp["preset"], "mix": mix, "config": config}})]

    @staticmethod
    def _start(c: Fields, plan: Plan) -> str:
        start = c.get("start", "str")
        trains = sorted(g for g, names in plan.groups.items() if all(plan.jobs[n][0] == "train" for n in names))
        if "://" in start:
            raise c.error("start", "expected a train job of this plan (the rounds take its model, data and split); "
                                   "to start from a run elsewhere, give that train job init_from: URL")
        names = plan.groups.get(start) or ([start] if start in plan.jobs else [])
        if not names:
            known = ", ".join(trains) or "none above this job"
            raise c.error("start", f"unknown job {quote(start)}; expected a train job written above this one ({known})")
        if len(names) > 1:
            raise c.error("start", f"{quote(start)} names {len(names)} jobs ({', '.join(names)}); expected one: "
                                   "name one of them")
        if plan.jobs[names[0]][0] != "train":
            raise c.error("start", f"job {quote(start)} is a {plan.jobs[names[0]][0]} job; expected a train job")
        return names[0]

    @staticmethod
    def _min_gain(c: Fields) -> float | None:
        """m/s a round must gain over the best before it for the next to run; none: every round runs."""
        if c.node.get("min_gain") == "none":
            return None
        return float(c.get("min_gain", "number", 0.0, minimum=0))

    @staticmethod
    def _weight(c: Fields) -> float:
        w = float(c.get("pseudo", "number", 1.0))
        if not w > 0:
            raise c.error("pseudo", f"expected a weight > 0 (samples per epoch as a multiple of the set's size), got {w}")
        return w

    @staticmethod
    def _shards(c: Fields) -> dict[str, int]:
        raw = c.node.get("shards", 1)
        if isinstance(raw, dict):
            sc = c.sub("shards")
            sc.only(("predict", "pseudo"))
            out = {k: sc.get(k, "int", 1, minimum=1) for k in ("predict", "pseudo")}
        else:
            n = c.get("shards", "int", 1, minimum=1)
            out = {"predict": n, "pseudo": n}
        for k, n in out.items():
            if n > MAX_SHARDS:
                raise c.error("shards", f"{k}: expected at most {MAX_SHARDS}, got {n}")
        return out

    def outputs(self, params: dict, run: Run) -> dict[str, str]:
        return {}

    def argv(self, params: dict, run: Run, heartbeat_s: float) -> list[str]:
        # the scheduler runs a cycle itself; this is how a person looks at one
        return ["gwi", "status", "/".join(run.url.rstrip("/").rsplit("/", 2)[-2:])]

    def summary(self, params: dict) -> str:
        stop = (f", stops when a round gains < {params['min_gain']:g} m/s"
                if params["rounds"] > 1 and params["min_gain"] is not None else "")
        return f"up to {params['rounds']} round(s) of predict, pseudo, train, evaluate{stop}"

    def preview(self, params: dict, run: Run, heartbeat_s: float) -> list[tuple[str, list[str]]]:
        from . import get

        return [(s.name, get(s.kind).argv(s.params, Run(s.run), heartbeat_s))
                for r in (0, 1) for s in round_steps(params, run.url, r)]


def round_url(cycle_run: str, r: int) -> str:
    return f"{cycle_run}/rounds/{r}"


def model_of(params: dict, cycle_run: str, r: int) -> str:
    """The run of round ``r``'s model (round 0: the start job's)."""
    return params["start"] if r == 0 else f"{round_url(cycle_run, r)}/train"


def round_steps(params: dict, cycle_run: str, r: int) -> list[Step]:
    """The jobs of round ``r`` (round 0: the start model's evaluation), in order."""
    folder = round_url(cycle_run, r)
    t = params["train"]
    evaluate = Step(f"r{r}-evaluate", "evaluate", {
        "members": [model_of(params, cycle_run, r)], "dataset": parse_part(t["mix"][0])[0],
        "config": {"split": t["config"].get("split", train_config.TrainConfig.split),
                   **params["predict"]}},
        f"{folder}/evaluate", (f"r{r}-train",) if r else ())
    if r == 0:
        return [evaluate]
    prev = model_of(params, cycle_run, r - 1)
    predictions = f"{folder}/predict"
    steps = _in_parts(Step(f"r{r}-predict", "predict", {
        "members": [prev], "test": params["test"], "config": dict(params["predict"]), "uncertainty": False,
        "plots": False, "misfit": False}, predictions), params["shards"]["predict"])
    steps += _in_parts(Step(f"r{r}-pseudo", "pseudo", {
        "from": Run(predictions).submission_url, "test": params["test"], "dataset": pseudo_url(cycle_run, r),
        "flip": params["flip"], "backend": params["backend"]}, f"{folder}/pseudo", (f"r{r}-predict",)),
        params["shards"]["pseudo"])
    sets = range(1, r + 1) if params["keep"] == "all" else [r]
    mix = list(t["mix"]) + [spell_part(pseudo_url(cycle_run, k), params["pseudo"]) for k in sets]
    train = {"model": t["model"], "preset": t["preset"], "dataset": parse_part(mix[0])[0], "config": dict(t["config"]),
             "init_from": prev, "datasets": [parse_part(m)[0] for m in mix], "mix": mix}
    return steps + [Step(f"r{r}-train", "train", train, f"{folder}/train", (f"r{r}-pseudo",)), evaluate]


def pseudo_url(cycle_run: str, r: int) -> str:
    return f"{round_url(cycle_run, r)}/datasets/pseudo"


def _in_parts(step: Step, shards: int) -> list[Step]:
    """``step``, or its ``shards`` parts (``<name>-s<i>``, each in a folder of its own) and the step
    joining them (its ``parts``: what the parts wrote, as their kind says)."""
    from . import get

    if shards == 1:
        return [Step(step.name, step.kind, {**step.params, "shard": None}, step.run, step.after)]
    parts = [Step(f"{step.name}-s{i}", step.kind, {**step.params, "shard": f"{i}/{shards}"},
                  f"{step.run}/parts/{i}-of-{shards}", step.after) for i in range(1, shards + 1)]
    urls = [get(step.kind).outputs(p.params, Run(p.run))["part"] for p in parts]
    return parts + [Step(step.name, step.kind, {**step.params, "parts": urls}, step.run, tuple(p.name for p in parts))]
