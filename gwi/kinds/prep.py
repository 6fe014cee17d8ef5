"""``kind: prep``: a Kaggle or OpenFWI folder made into a dataset (``gwi data prep``), in parts.

The folder is on the machine that runs the job (a path there: a mounted disk, a Kaggle input, a
Lambda instance's filesystem), so ``platforms`` should list only machines that have it. With
``shards: N`` the source files are split over N jobs ``<name>-s1`` ... ``<name>-sN``, placed wherever
there is room, each writing part i of N; the job ``<name>`` merges them. A part already written is
kept when its job runs again (``--exist-ok``)::

    - name: prep-openfwi
      kind: prep
      src: /data/openfwi          # on each platform below
      dataset: openfwi-f16
      shards: 8
      platforms: [lambda, local]
"""

from __future__ import annotations

from ..runs import Run
from ..yamlfile import Fields, quote
from .base import (PATH_PREFIXES, JobKind, Plan, dataset_name, folder, in_parts, merge_argv, part_outputs, register,
                   shards_of)


@register
class Prep(JobKind):
    name = "prep"
    fields = ("src", "test", "dataset", "shards", "shard_size")
    reads = ("parts",)
    example = {"src": "/data/openfwi", "dataset": "openfwi-f16", "shards": 4}

    def check(self, c: Fields, own: Fields, plan: Plan, job: str) -> list[tuple[str, dict]]:
        src = c.get("src", "str")
        if not src.startswith(PATH_PREFIXES):
            raise c.error("src", f"expected a folder path (absolute, or starting with ./, ../ or ~), got {quote(src)}")
        src = folder(plan, src)  # an absolute path stays as it is: a folder on the platform
        name = dataset_name(c, "dataset")
        dataset = plan.dataset_url(name)
        plan.claim(c, "dataset", dataset, job, f"dataset {quote(name)}")
        common = {"src": src, "test": c.get("test", "bool", False), "dataset": dataset,
                  "shard_size": c.get("shard_size", "int", 500, minimum=1)}
        return in_parts(c, plan, job, dataset, shards_of(c), common)

    def outputs(self, params: dict, run: Run) -> dict[str, str]:
        return part_outputs(params)

    def argv(self, params: dict, run: Run, heartbeat_s: float) -> list[str]:
        if merge := merge_argv(params):
            return merge
        store, _, name = params["dataset"].rpartition("/datasets/")
        argv = ["gwi", "data", "prep", "--test-dir" if params["test"] else "--src", params["src"], "--out", store,
                "--name", name, "--shard-size", str(params["shard_size"]), "--exist-ok"]
        return argv + (["--shard", params["shard"]] if params.get("shard") else [])
