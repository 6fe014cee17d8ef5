"""``kind: pseudo``: ``gwi data pseudo`` (a predict job's maps re-simulated into a labelled dataset),
over ``shards: N`` attempts.

With ``shards: N`` (N > 1) the job becomes N jobs ``<name>-s1`` ... ``<name>-sN``, each re-simulating an
interleaved share of the maps (``--shard i/N``; a part already written is kept), and the job
``<name>`` itself, which joins the parts into the dataset (``gwi data merge``)::

    - name: pseudo
      kind: pseudo
      from: predict             # a predict job of this plan, or a submission.csv URL
      test: kaggle-test-f16     # the test data it predicted (a dataset name, a URL, or a folder)
      dataset: test-pseudo      # the new dataset's name
      flip: true                # also each map mirrored
      backend: openfwi          # default openfwi
      shards: 8

A ``cycle`` job makes one of these per round (see :mod:`gwi.kinds.cycle`).
"""

from __future__ import annotations

from ..physics import BACKENDS, DEFAULT_BACKEND
from ..runs import Run
from ..yamlfile import Fields, quote
from .base import (
    JobKind,
    Plan,
    Ref,
    dataset_name,
    dataset_or_folder,
    in_parts,
    merge_argv,
    part_outputs,
    register,
    shards_of,
)


@register
class Pseudo(JobKind):
    name = "pseudo"
    fields = ("from", "test", "dataset", "flip", "backend", "shards")
    refs = (Ref("from", "predict", "submission", "a submission.csv URL", many=False),)
    reads = ("test", "parts")
    example = {"from": "predict", "test": "example-data", "dataset": "example-pseudo", "flip": True,
               "backend": "deepwave", "shards": 2}

    def check(self, c: Fields, own: Fields, plan: Plan, job: str) -> list[tuple[str, dict]]:
        name = dataset_name(c, "dataset")
        dataset = plan.dataset_url(name)
        plan.claim(c, "dataset", dataset, job, f"dataset {quote(name)}")
        common = {"from": c.get("from", "str"), "test": dataset_or_folder(c, "test", plan), "dataset": dataset,
                  "flip": c.get("flip", "bool", False),
                  "backend": c.get("backend", "str", DEFAULT_BACKEND, choices=BACKENDS)}
        return in_parts(c, plan, job, dataset, shards_of(c), common)

    def outputs(self, params: dict, run: Run) -> dict[str, str]:
        return part_outputs(params)

    def argv(self, params: dict, run: Run, heartbeat_s: float) -> list[str]:
        if merge := merge_argv(params):
            return merge
        store, _, name = params["dataset"].rpartition("/datasets/")
        argv = ["gwi", "data", "pseudo", "--predictions", params["from"], "--test", params["test"], "--out", store,
                "--name", name, "--backend", params["backend"], "--exist-ok"]
        if params["flip"]:
            argv.append("--flip")
        if params.get("shard"):
            argv += ["--shard", params["shard"]]
        return argv
