"""Job kinds: every kind's command parses with the real CLI parser, and a new kind needs only its
module and its registration."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest
import yaml

from gwi import kinds
from gwi.cli import build_parser
from gwi.kinds.base import JobKind, Plan, dataset_ref
from gwi.runs import Run
from gwi.spec import load_spec
from gwi.yamlfile import ConfigError, Fields

PROFILES = {"local": None}  # only the names matter to a plan


def _plan(tmp_path, jobs: list[dict], name: str = "kinds") -> str:
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump({"name": name, "store": str(tmp_path / "store"),
                                 "defaults": {"platforms": ["local"]}, "jobs": jobs}, sort_keys=False))
    return str(p)


def _every_kind(tmp_path) -> str:
    jobs = []
    for name in kinds.names():
        example = kinds.get(name).example
        assert example, f"kind {name!r} has no example job"
        jobs.append({"name": name, "kind": name, **example})
    return _plan(tmp_path, jobs)


def test_every_kind_builds_a_command_the_cli_parses(tmp_path):
    spec = load_spec(_every_kind(tmp_path), check_store=False, profiles=PROFILES)
    seen = set()
    parser = build_parser()
    for job in spec.jobs:
        assert job.argv[0] == "gwi", job.argv
        try:
            args = parser.parse_args(job.argv[1:])
        except SystemExit:
            pytest.fail(f"{job.name}: the CLI refuses the command the plan builds: {shlex.join(job.argv)}")
        assert callable(args.fn), job.name
        seen.add(job.kind)
    assert seen == set(kinds.names())


def test_parsed_commands_carry_the_plan(tmp_path):
    spec = load_spec(_every_kind(tmp_path), check_store=False, profiles=PROFILES)
    parser = build_parser()
    train = spec.job("train-f1")
    a = parser.parse_args(train.argv[1:])
    assert (a.model, a.preset, a.run) == ("inversionnet", "tiny", train.outputs["run"])
    assert "model.dropout=0.2" in a.set and "lr=1.0e-05" in a.set and "split=kfold:4:1" in a.set
    ens = spec.job("ensemble")
    a = parser.parse_args(ens.argv[1:])
    assert a.member == [spec.job("train-f0").outputs["run"], spec.job("train-f1").outputs["run"]]
    assert a.out == ens.outputs["ensemble"] == Run(ens.outputs["ensemble"].rsplit("/", 1)[0]).ensemble_url
    pred = spec.job("predict")
    a = parser.parse_args(pred.argv[1:])
    assert a.ensemble == ens.outputs["ensemble"] and a.tta == "flip" and a.batch_size == 4
    # dependencies come from what each job reads
    assert spec.job("train-f0").after == ["synth"]
    assert set(ens.after) == {"train-f0", "train-f1", "synth"}
    assert set(pred.after) == {"ensemble", "synth"}


class Verify(JobKind):
    """A kind defined by a test: `gwi data verify` of a dataset the plan writes."""

    name = "verify"
    fields = ("dataset",)
    reads = ("dataset",)
    example = {"dataset": "example-data"}

    def check(self, c: Fields, own: Fields, plan: Plan, job: str) -> list[tuple[str, dict]]:
        return [("", {"dataset": plan.dataset_url(dataset_ref(c, "dataset"))})]

    def outputs(self, params: dict, run: Run) -> dict[str, str]:
        return {}

    def argv(self, params: dict, run: Run, heartbeat_s: float) -> list[str]:
        return ["gwi", "data", "verify", params["dataset"]]


@pytest.fixture
def verify_kind():
    kinds.register(Verify)
    yield
    kinds.unregister("verify")


def test_a_new_kind_needs_only_its_module_and_registration(tmp_path, verify_kind):
    spec = load_spec(_every_kind(tmp_path), check_store=False, profiles=PROFILES)
    job = spec.job("verify")
    assert job.kind == "verify" and job.after == ["synth"]
    assert job.argv == ["gwi", "data", "verify", spec.job("synth").outputs["dataset"]]
    build_parser().parse_args(job.argv[1:])
    # its fields are checked like any other kind's
    bad = _plan(tmp_path, [{"name": "v", "kind": "verify", "dataset": "x", "dataste": "y"}], "bad")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: job 'v': field 'dataste': unknown field \(did you mean "
                                          r"'dataset'\?\)"):
        load_spec(bad, check_store=False, profiles=PROFILES)


def test_unknown_kind_lists_the_registered_ones(tmp_path, verify_kind):
    p = _plan(tmp_path, [{"name": "v", "kind": "verfy", "dataset": "x"}], "unknown")
    with pytest.raises(ConfigError, match=r"field 'kind': unknown value 'verfy' \(did you mean 'verify'\?\); "
                                          r"expected one of: augment, cycle, ensemble, evaluate, predict, prep, pseudo, refine, run, sweep, synth, train, verify"):
        load_spec(p, check_store=False, profiles=PROFILES)


def test_dry_run_of_every_kind(tmp_path):
    """The examples dispatch as a plan (dry run, through the real entry point)."""
    out = subprocess.run([sys.executable, "-m", "gwi", "dispatch", "--dry-run", _every_kind(tmp_path)],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "GWI_HOME": str(tmp_path / "home")})
    assert out.returncode == 0, out.stderr
    for name in ("synth", "train-f0", "train-f1", "ensemble", "predict"):
        assert name in out.stdout
