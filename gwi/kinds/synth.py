"""``kind: synth``: OpenFWI-style synthetic data, forward-modelled, written as a dataset (``gwi data synth``)."""

from __future__ import annotations

from ..physics import BACKENDS, DEFAULT_BACKEND
from ..runs import Run
from ..yamlfile import Fields, quote
from .base import JobKind, Plan, dataset_name, register


@register
class Synth(JobKind):
    name = "synth"
    fields = ("dataset", "families", "samples", "seed", "backend")
    example = {"dataset": "example-data", "families": ["FlatVel_A", "CurveFault_B"], "samples": 8, "seed": 1,
               "backend": "openfwi"}

    def check(self, c: Fields, own: Fields, plan: Plan, job: str) -> list[tuple[str, dict]]:
        from ..data.layout import FAMILIES

        name = dataset_name(c, "dataset")
        dataset = plan.dataset_url(name)
        plan.claim(c, "dataset", dataset, job, f"dataset {quote(name)}")
        families = c.get("families", "str-list", choices=FAMILIES)
        if not families:
            raise c.error("families", f"expected at least one family; expected one of: {', '.join(sorted(FAMILIES))}")
        c.unique("families", families)
        return [("", {"dataset": dataset, "families": list(families),
                      "samples": c.get("samples", "int", minimum=1), "seed": c.get("seed", "int", 0, minimum=0),
                      "backend": c.get("backend", "str", DEFAULT_BACKEND, choices=BACKENDS)})]

    def outputs(self, params: dict, run: Run) -> dict[str, str]:
        return {"dataset": params["dataset"]}

    def argv(self, params: dict, run: Run, heartbeat_s: float) -> list[str]:
        store, _, name = params["dataset"].rpartition("/datasets/")
        return ["gwi", "data", "synth", "--out", store, "--name", name, "--family", ",".join(params["families"]),
                "--samples", str(params["samples"]), "--seed", str(params["seed"]),
                "--backend", params.get("backend", DEFAULT_BACKEND), "--exist-ok"]
