"""``kind: ensemble``: ``gwi ensemble fit`` of trained members on a dataset's validation fold."""

from __future__ import annotations

from typing import Any

from ..runs import Run
from ..yamlfile import Fields
from .base import (
    JobKind,
    Plan,
    Ref,
    check_split,
    dataset_ref,
    flags,
    optional,
    register,
)

CONFIG = ("split", "crf", "mc_samples")


def members(c: Fields) -> list[str]:
    out = list(c.get("members", "str-list"))
    if not out:
        raise c.error("members", "expected at least one member: a train job of this spec or a run URL")
    return out


@register
class Ensemble(JobKind):
    name = "ensemble"
    fields = ("members", "dataset", "config", "plots")
    default_fields = ("dataset",)
    inherits = ("dataset",)
    refs = (Ref("members", "train", "run", "a run URL"),)
    reads = ("dataset",)
    example = {"members": ["train"], "dataset": "example-data",
               "config": {"split": "kfold:4:0", "crf": False, "mc_samples": 4}, "plots": True}

    def check_defaults(self, c: Fields) -> None:
        if "dataset" in c.node:
            dataset_ref(c, "dataset")

    def check(self, c: Fields, own: Fields, plan: Plan, job: str) -> list[tuple[str, dict]]:
        cc = c.sub("config")
        cc.only(CONFIG)
        config: dict[str, Any] = {}
        if cc.node.get("split") is not None:
            config["split"] = check_split(cc, "split", cc.get("split", "str"))
        config["crf"] = cc.get("crf", "bool", True)
        optional(cc, config, "mc_samples", "int", minimum=0)
        return [("", {"members": members(c), "dataset": plan.dataset_url(dataset_ref(c, "dataset")),
                      "config": config, "plots": c.get("plots", "bool", True)})]

    def outputs(self, params: dict, run: Run) -> dict[str, str]:
        return {"ensemble": run.ensemble_url, **({"plots": run.plots_url} if params["plots"] else {})}

    def argv(self, params: dict, run: Run, heartbeat_s: float) -> list[str]:
        argv = ["gwi", "ensemble", "fit"]
        for m in params["members"]:
            argv += ["--member", m]
        argv += ["--dataset", params["dataset"], "--out", run.ensemble_url]
        cfg = params["config"]
        argv += flags(cfg, (("split", "--split"),))
        if not cfg["crf"]:
            argv += ["--no-crf"]
        argv += flags(cfg, (("mc_samples", "--mc-samples"),))
        if params["plots"]:
            argv += ["--plots", run.plots_url]
        return argv
