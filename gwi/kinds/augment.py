"""``kind: augment``: ``gwi data augment`` (a dataset's maps transformed and re-simulated into a new
dataset), over ``shards: N`` attempts.

With ``shards: N`` (N > 1) the job becomes N jobs ``<name>-s1`` ... ``<name>-sN``, each making the new
maps of an interleaved share of the source maps (``--shard i/N``) as an ordinary job (placed,
retried, moved to the next platform; a part already written is kept), and the job ``<name>``
itself, which runs once they all succeeded and joins the parts into the dataset
(``gwi data merge``)::

    - name: augment
      kind: augment
      from: train-data          # a dataset of this plan (or a URL) with velocity maps
      dataset: train-aug        # the new dataset's name
      factor: 10                # new maps per source map
      recipe: [flip, crop, affine, blend]   # default: all
      keep_source: true         # also copy the source samples in (train on the one dataset)
      seed: 0
      backend: openfwi          # default: the backend that made the source
      shards: 8
"""

from __future__ import annotations

from ..physics import AUGMENT_OPS, BACKENDS
from ..runs import Run
from ..yamlfile import Fields, quote
from .base import JobKind, Plan, dataset_name, in_parts, merge_argv, part_outputs, register, shards_of


@register
class Augment(JobKind):
    name = "augment"
    fields = ("from", "dataset", "factor", "recipe", "keep_source", "seed", "backend", "shards")
    reads = ("from", "parts")
    example = {"from": "example-data", "dataset": "example-aug", "factor": 2, "recipe": ["flip", "crop"],
               "keep_source": True, "seed": 1, "backend": "deepwave", "shards": 2}

    def check(self, c: Fields, own: Fields, plan: Plan, job: str) -> list[tuple[str, dict]]:
        source = c.get("from", "str")
        if "://" not in source:
            source = plan.dataset_url(dataset_name(c, "from"))
        name = dataset_name(c, "dataset")
        dataset = plan.dataset_url(name)
        if dataset == source:
            raise c.error("dataset", f"expected a new dataset, got the source {quote(name)} itself")
        recipe = list(c.get("recipe", "str-list", list(AUGMENT_OPS), choices=AUGMENT_OPS))
        if not recipe:
            raise c.error("recipe", f"expected at least one of: {', '.join(AUGMENT_OPS)}")
        c.unique("recipe", recipe)
        shards = shards_of(c)
        common = {"from": source, "dataset": dataset, "factor": c.get("factor", "int", 10, minimum=1),
                  "recipe": [o for o in AUGMENT_OPS if o in recipe], "seed": c.get("seed", "int", 0, minimum=0),
                  "keep_source": c.get("keep_source", "bool", False), "backend": c.get("backend", "str", None,
                                                                                    choices=BACKENDS)}
        plan.claim(c, "dataset", dataset, job, f"dataset {quote(name)}")
        return in_parts(c, plan, job, dataset, shards, common)

    def outputs(self, params: dict, run: Run) -> dict[str, str]:
        return part_outputs(params)

    def argv(self, params: dict, run: Run, heartbeat_s: float) -> list[str]:
        store, _, name = params["dataset"].rpartition("/datasets/")
        if merge := merge_argv(params):
            return merge
        argv = ["gwi", "data", "augment", "--from", params["from"], "--out", store, "--name", name,
                "--factor", str(params["factor"]), "--recipe", ",".join(params["recipe"]),
                "--seed", str(params["seed"]), "--exist-ok"]
        if params["keep_source"]:
            argv.append("--keep-source")
        if params.get("backend"):
            argv += ["--backend", params["backend"]]
        if params.get("shard"):
            argv += ["--shard", params["shard"]]
        return argv
