"""``kind: refine``: ``gwi refine`` (FWI of test files from a submission), over ``shards: N`` attempts.

With ``shards: N`` (N > 1) the job becomes N jobs ``<name>-s1`` ... ``<name>-sN``, each refining an
interleaved share of the files (``--shard i/N``) as an ordinary job (placed, retried, moved to the
next platform, resumed from the rows its last attempt saved in the store), and the job ``<name>``
itself, which runs once they all succeeded and merges their parts over the starting submission
(``gwi merge --base``) into ``<name>``'s ``submission.csv``. With ``worst: F`` only the fraction F
of the files with the largest data misfit is refined: ``init`` must then name a predict job with
``misfit: true`` (or ``rank`` a misfit CSV URL)::

    - name: refine
      kind: refine
      init: submission          # a predict job of this plan, or a submission.csv URL
      test: kaggle-test         # a dataset name, a URL, or a folder
      worst: 0.25               # default 1: every file
      shards: 8
      backend: openfwi          # default openfwi
      config: {iterations: 60, lr: 50, tv: 1.0e-3, bands: [5, 10, 0], optimizer: gd, batch_size: 4,
               scale_range: 0.1, time_budget: 10h, nbc: 120}
"""

from __future__ import annotations

from typing import Any

from ..runs import Run
from ..yamlfile import Fields, quote
from .base import JobKind, Plan, Ref, dataset_or_folder, register, shards_of, submission_parts

CONFIG = ("iterations", "lr", "tv", "smooth", "pull", "bands", "optimizer", "batch_size", "scale_range", "time_budget",
          "nbc", "device")
_FLAGS = (("iterations", "--iterations"), ("lr", "--lr"), ("tv", "--tv"), ("smooth", "--smooth"), ("pull", "--pull"),
          ("optimizer", "--optimizer"), ("batch_size", "--batch-size"), ("scale_range", "--scale-range"),
          ("time_budget", "--time-budget"),
          ("nbc", "--nbc"), ("device", "--device"))


@register
class Refine(JobKind):
    name = "refine"
    fields = ("init", "rank", "test", "worst", "shards", "backend", "config")
    refs = (Ref("init", "predict", "submission", "a submission.csv URL", many=False),
            Ref("rank", "predict", "misfit", "a misfit.csv URL (gwi predict --misfit)", many=False))
    reads = ("test", "parts")
    example = {"init": "predict", "test": "example-data", "worst": 0.5, "shards": 2, "backend": "deepwave",
               "config": {"iterations": 30, "lr": 50.0, "tv": 1.0e-3, "bands": [5, 10, 0], "optimizer": "gd",
                          "batch_size": 2, "time_budget": "2h"}}

    def check(self, c: Fields, own: Fields, plan: Plan, job: str) -> list[tuple[str, dict]]:
        from ..budget import format_duration, parse_duration
        from ..physics import BACKENDS, DEFAULT_BACKEND
        from ..physics.refine_config import RefineConfig

        init = c.get("init", "str")
        worst = c.get("worst", "number", 1.0)
        if not 0 < worst <= 1:
            raise c.error("worst", f"expected a fraction in (0, 1] of the files to refine, got {quote(worst)}")
        rank = c.get("rank", "str", None)
        if worst < 1 and rank is None:
            if "://" in init:
                raise c.error("rank", "worst < 1 ranks files by misfit: give rank (a misfit.csv URL), or name a "
                                      "predict job with misfit: true as init")
            rank = init  # the predict job's misfit file (its check says when it writes none)
        shards = shards_of(c)
        cc = c.sub("config")
        cc.only(CONFIG)
        config: dict[str, Any] = {}
        for key, kind in (("iterations", "int"), ("batch_size", "int"), ("nbc", "int"), ("lr", "number"),
                          ("tv", "number"), ("smooth", "number"), ("pull", "number"), ("scale_range", "number"),
                          ("optimizer", "str"), ("device", "str")):
            if cc.node.get(key) is not None:
                config[key] = cc.get(key, kind)
        if cc.node.get("bands") is not None:
            bands = cc.get("bands", "list")
            if not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bands):
                raise cc.error("bands", f"expected low-pass cut-offs in Hz, coarse to fine (0: the full band), "
                                        f"got {quote(bands)}")
            config["bands"] = ",".join(f"{b:g}" for b in bands)
        if cc.node.get("time_budget") is not None:  # 2h30m, 45m, 90s or seconds
            try:
                config["time_budget"] = format_duration(parse_duration(cc.node["time_budget"]))
            except ValueError as e:
                raise cc.error("time_budget", str(e)) from None
        backend = c.get("backend", "str", DEFAULT_BACKEND, choices=BACKENDS)
        if "nbc" in config and backend != "openfwi":
            raise cc.error("nbc", f"nbc (absorbing cells) is an openfwi setting; the backend is {backend}")
        # the ranges are the command's own (RefineConfig.check): a plan is refused for what gwi refine refuses
        settings = {k: v for k, v in config.items() if k not in ("bands", "time_budget", "nbc")}
        if "bands" in config:
            settings["bands"] = tuple(float(b) for b in config["bands"].split(","))
        try:
            RefineConfig(backend=backend, **settings).check()
        except ValueError as e:
            key, _, msg = str(e).partition(": ")
            raise cc.error(key if key in CONFIG else "", msg) from None
        if config.get("nbc", 1) < 1:
            raise cc.error("nbc", f"expected a value >= 1, got {quote(config['nbc'])}")
        common = {"init": init, "test": dataset_or_folder(c, "test", plan), "worst": worst, "backend": backend,
                  "config": config}
        if rank is not None:
            common["rank"] = rank
        return submission_parts(c, plan, job, shards, common)

    def outputs(self, params: dict, run: Run) -> dict[str, str]:
        return {"part" if params.get("shard") else "submission": run.submission_url}

    def argv(self, params: dict, run: Run, heartbeat_s: float) -> list[str]:
        if params.get("parts"):  # the parts over the start: the files no shard refined keep its rows
            return ["gwi", "merge", *params["parts"], "--base", params["init"], "--test", params["test"],
                    "--out", run.submission_url]
        argv = ["gwi", "refine", "--test", params["test"], "--init", params["init"], "--out", run.submission_url,
                "--backend", params["backend"]]
        if params.get("shard"):
            argv += ["--shard", params["shard"]]
        if params["worst"] < 1:
            argv += ["--rank", params["rank"], "--worst", f"{params['worst']:g}"]
        for key, flag in _FLAGS + (("bands", "--bands"),):
            if key in params["config"]:
                argv += [flag, str(params["config"][key])]
        return argv
