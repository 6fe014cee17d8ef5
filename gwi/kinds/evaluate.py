"""``kind: evaluate``: ``gwi evaluate`` of a trained run (or several, averaged) or an ensemble on a
labelled dataset; the report and the worst samples' plot go to the job's run folder, where
``gwi status`` finds them."""

from __future__ import annotations

from typing import Any

from .. import config as train_config
from ..runs import Run
from ..yamlfile import Fields
from .base import JobKind, Plan, Ref, check_split, dataset_ref, flags, optional, post_steps, register
from .ensemble import members
from .predict import model_source

CONFIG = ("split", "tta", "precision", "batch_size", "worst", "post")
_FLAGS = (("split", "--split"), ("precision", "--precision"), ("batch_size", "--batch-size"), ("worst", "--worst"),
          ("post", "--post"))


@register
class Evaluate(JobKind):
    name = "evaluate"
    fields = ("members", "ensemble", "dataset", "config")
    default_fields = ("dataset",)
    inherits = ("dataset",)
    refs = (Ref("members", "train", "run", "a run URL"),
            Ref("ensemble", "ensemble", "ensemble", "an ensemble.json URL", many=False))
    reads = ("dataset",)
    example = {"members": ["train"], "dataset": "example-data",
               "config": {"split": "kfold:4:0", "tta": "none", "precision": "fp32", "batch_size": 4, "worst": 3,
                          "post": "plateau"}}

    def check_defaults(self, c: Fields) -> None:
        if "dataset" in c.node:
            dataset_ref(c, "dataset")

    def check(self, c: Fields, own: Fields, plan: Plan, job: str) -> list[tuple[str, dict]]:
        has_m, has_e = c.node.get("members") is not None, c.node.get("ensemble") is not None
        if has_m == has_e:
            raise c.error("members" if not has_m else "ensemble",
                          "give members (train jobs or run URLs) or ensemble (an ensemble job or an "
                          "ensemble.json URL), one of them")
        cc = c.sub("config")
        cc.only(CONFIG)
        config: dict[str, Any] = {"tta": cc.get("tta", "str", "flip", choices=("none", "flip"))}
        if cc.node.get("split") is not None:
            split = cc.get("split", "str")
            config["split"] = split if split == "all" else check_split(cc, "split", split)
        optional(cc, config, "precision", "str", choices=train_config.PRECISIONS)
        optional(cc, config, "batch_size", "int", minimum=1)
        if cc.node.get("post") is not None:
            config["post"] = post_steps(cc)
        optional(cc, config, "worst", "int", minimum=0)
        source = {"members": members(c)} if has_m else {"ensemble": c.get("ensemble", "str")}
        return [("", {**source, "dataset": plan.dataset_url(dataset_ref(c, "dataset")), "config": config})]

    def outputs(self, params: dict, run: Run) -> dict[str, str]:
        return {"evaluation": run.evaluation_url, "plot": run.worst_url}

    def argv(self, params: dict, run: Run, heartbeat_s: float) -> list[str]:
        argv = ["gwi", "evaluate", *model_source(params)]
        argv += ["--dataset", params["dataset"], "--tta", params["config"]["tta"]]
        argv += flags(params["config"], _FLAGS)
        return argv + ["--out", run.evaluation_url, "--plot", run.worst_url]
