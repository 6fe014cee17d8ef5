"""``kind: predict``: ``gwi predict`` of members or an ensemble on test data -> submission.csv.

With ``shards: N`` (N > 1) the job becomes N jobs ``<name>-s1`` ... ``<name>-sN``, each predicting an
interleaved share of the test files (``--shard i/N``), and the job ``<name>`` itself, which joins
their parts into its ``submission.csv`` (``gwi merge --test``: none missing, none twice)."""

from __future__ import annotations

from typing import Any

from .. import config as train_config
from ..physics import BACKENDS
from ..runs import Run
from ..yamlfile import Fields
from .base import (
    JobKind,
    Plan,
    Ref,
    dataset_or_folder,
    flags,
    optional,
    post_steps,
    register,
    shards_of,
    submission_parts,
)
from .ensemble import members

MISFIT = "misfit.csv"  # oid,misfit per test file: what refine's worst fraction is ranked by

CONFIG = ("tta", "precision", "batch_size", "mc_samples", "misfit_backend", "post")
_FLAGS = (("precision", "--precision"), ("batch_size", "--batch-size"), ("mc_samples", "--mc-samples"),
          ("misfit_backend", "--misfit-backend"), ("post", "--post"))


@register
class Predict(JobKind):
    name = "predict"
    fields = ("members", "ensemble", "test", "config", "uncertainty", "plots", "misfit", "shards")
    refs = (Ref("members", "train", "run", "a run URL"),
            Ref("ensemble", "ensemble", "ensemble", "an ensemble.json URL", many=False))
    reads = ("test",)
    example = {"ensemble": "ensemble", "test": "example-data", "uncertainty": True, "plots": True, "misfit": True,
               "config": {"tta": "flip", "precision": "fp32", "batch_size": 4, "mc_samples": 2,
                          "misfit_backend": "deepwave", "post": "plateau:20"}}

    def check(self, c: Fields, own: Fields, plan: Plan, job: str) -> list[tuple[str, dict]]:
        has_m, has_e = c.node.get("members") is not None, c.node.get("ensemble") is not None
        if has_m and has_e:
            raise c.error("ensemble", "give members or ensemble, not both")
        if not has_m and not has_e:
            raise c.error("members", "required field is missing: give members (train jobs or run URLs) or "
                                     "ensemble (an ensemble job or an ensemble.json URL)")
        cc = c.sub("config")
        cc.only(CONFIG)
        config = settings(cc)
        optional(cc, config, "mc_samples", "int", minimum=0)
        optional(cc, config, "misfit_backend", "str", choices=BACKENDS)
        misfit = c.get("misfit", "bool", False)
        if "misfit_backend" in config and not misfit:
            raise cc.error("misfit_backend", "the forward model of the misfit: set misfit: true as well")
        test = dataset_or_folder(c, "test", plan)
        source = {"members": members(c)} if has_m else {"ensemble": c.get("ensemble", "str")}
        common = {**source, "test": test, "config": config, "uncertainty": c.get("uncertainty", "bool", False),
                  "plots": c.get("plots", "bool", False), "misfit": misfit}
        shards = shards_of(c)
        extra = [k for k in ("uncertainty", "plots", "misfit") if common[k]]
        if shards > 1 and extra:
            raise c.error("shards", f"{', '.join(extra)} cannot be made in shards yet: give shards: 1, or drop them")
        return submission_parts(c, plan, job, shards, common)

    def outputs(self, params: dict, run: Run) -> dict[str, str]:
        if params.get("shard"):
            return {"part": run.submission_url}
        out = {"submission": run.submission_url}
        if params["uncertainty"]:
            out["uncertainty"] = run.uncertainty_url
        if params["plots"]:
            out["plots"] = run.plots_url
        if params.get("misfit"):
            out["misfit"] = run.key_url(MISFIT)
        return out

    def argv(self, params: dict, run: Run, heartbeat_s: float) -> list[str]:
        if params.get("parts"):
            return ["gwi", "merge", *params["parts"], "--test", params["test"], "--out", run.submission_url]
        argv = ["gwi", "predict", *model_source(params)]
        argv += ["--test", params["test"], "--out", run.submission_url]
        argv += ["--tta", params["config"]["tta"]]
        argv += flags(params["config"], _FLAGS)
        if params["uncertainty"]:
            argv += ["--uncertainty", run.uncertainty_url]
        if params["plots"]:
            argv += ["--plots", run.plots_url]
        if params.get("misfit"):
            argv += ["--misfit", run.key_url(MISFIT)]
        if params.get("shard"):
            argv += ["--shard", params["shard"]]
        return argv


def settings(cc: Fields) -> dict[str, Any]:
    """How maps are predicted (``tta``, ``precision``, ``batch_size``, ``post``): predict's config,
    and a cycle's ``predict:``."""
    config: dict[str, Any] = {"tta": cc.get("tta", "str", "flip", choices=("none", "flip"))}
    optional(cc, config, "precision", "str", choices=train_config.PRECISIONS)
    optional(cc, config, "batch_size", "int", minimum=1)
    if cc.node.get("post") is not None:
        config["post"] = post_steps(cc)
    return config


def model_source(params: dict) -> list[str]:
    """``--ensemble URL`` or ``--checkpoint RUN`` per member: what predicts, for predict and evaluate."""
    if "ensemble" in params:
        return ["--ensemble", params["ensemble"]]
    return [a for m in params["members"] for a in ("--checkpoint", m)]
