"""Sweeps: the plan's checks, and a real sweep of six tiny trials, two at a time, on the local
platform (real ``gwi train`` processes), in which the pruner stops at least one."""

from __future__ import annotations

import json
import textwrap

import pytest

from gwi.adapters.base import load_profiles
from gwi.cli import main
from gwi.data.synth import synthesize
from gwi.scheduler import Scheduler
from gwi.scheduler.sweeps import show
from gwi.spec import load_spec
from gwi.yamlfile import ConfigError

from .conftest import run_until

PROFILE = "adapter: local\ncapacity: 2\nstart_timeout_s: 120\noptions: {runtime: process, grace_s: 2}\n"

SWEEP = """
name: tune
store: {store}
jobs:
  - name: tune
    kind: sweep
    model: inversionnet
    preset: tiny
    dataset: d
    trials: 6
    parallel: 2
    seed: 0
    space:
      lr: {{choice: [1.0e-6, 3.0e-3]}}
      batch_size: {{choice: [4, 8]}}
    config: {{epochs: 16, val_every: 4, split: "kfold:4:0", ema: 0.0}}
    platforms: [local-a]
    heartbeat_s: 0.5
    limits: {{stall_s: 60}}
"""


@pytest.fixture
def plat(tmp_path):
    d = tmp_path / "platforms"
    d.mkdir()
    (d / "local-a.yaml").write_text(PROFILE)
    return d


def load(tmp_path, plat, body: str):
    p = tmp_path / "tune.yaml"
    p.write_text(textwrap.dedent(body).lstrip("\n"))
    return load_spec(p, profiles=load_profiles([plat]))


@pytest.mark.parametrize("space,message", [
    ("lr: {log_uniform: [1.0e-3, 1.0e-5]}", "field 'space.lr': log_uniform: an empty range: expected low < high, "
                                           "got [0.001, 1e-05]"),
    ("lr: {log_uniform: [0, 1.0e-3]}", "field 'space.lr': log_uniform: expected low > 0, got 0"),
    ("batch_size: {choice: []}", "field 'space.batch_size': choice: expected a non-empty list of values, got []"),
    ("lr: {loguniform: [1.0e-5, 1.0e-3]}", "field 'space.lr': expected one of log_uniform, uniform, int, choice "
                                          "(e.g. log_uniform: [1.0e-5, 1.0e-3]), got loguniform (did you mean "
                                          "'log_uniform'?)"),
    ("batch_size: {choice: [8, 0]}", "field 'space.batch_size': 0 does not make a valid trial: batch_size: "
                                     "expected an integer >= 1, got 0"),
    ("lrr: {uniform: [0.1, 0.2]}", "field 'space.lrr': unknown field (did you mean 'lr'?)"),
])
def test_bad_search_spaces_name_the_line(tmp_path, plat, space, message):
    body = SWEEP.format(store=f"file://{tmp_path}/store")
    body = body.replace("      lr: {choice: [1.0e-6, 3.0e-3]}\n      batch_size: {choice: [4, 8]}\n", f"      {space}\n")
    with pytest.raises(ConfigError) as e:
        load(tmp_path, plat, body)
    assert f"tune.yaml:13: job 'tune': {message}" in str(e.value)


@pytest.mark.slow
def test_six_trials_two_at_a_time_prune_and_report_the_best(tmp_path, plat, monkeypatch, capsys):
    store = f"file://{tmp_path}/store"
    synthesize(["FlatVel_A", "CurveVel_A"], 32, store, "d", seed=3, batch_size=32, progress=False, backend="deepwave")
    monkeypatch.setenv("GWI_PLATFORMS", str(plat))
    monkeypatch.setenv("GWI_HOME", str(tmp_path / "home"))
    s = Scheduler(tmp_path / "home", profiles=load_profiles([plat]))
    try:
        s.submit(load(tmp_path, plat, SWEEP.format(store=store)))
        seen_parallel = []

        def done():
            seen_parallel.append(len(s.state.active_attempts()))
            return s.state.job("tune/tune")["state"] in ("succeeded", "failed")

        run_until(s, done, timeout=420, interval=0.5)
        row = s.state.job("tune/tune")
        assert row["state"] == "succeeded", row["reason"]
        assert max(seen_parallel) == 2, "two trials ran at once"
        r = show(s.home, "tune/tune", s.job_def(row))
    finally:
        for a in s.state.active_attempts():
            s.adapter(a["platform"]).cancel(json.loads(a["handle"]))
        s.close()
    states = [t["state"] for t in r["trials"]]
    assert len(states) == 6 and set(states) == {"pruned", "complete"}, r["trials"]
    # the seeded sampler draws lr 1e-6 for four of the six trials: they learn nothing, and those that reach
    # the pruner's first rung (the third validation) after a trial that learns has passed it are stopped. Trials
    # run epochs, not a time budget: on loaded CI cores a 45 s trial with lr 3e-3 once learnt less than
    # a 1e-6 one and lost
    pruned = [t for t in r["trials"] if t["state"] == "pruned"]
    assert any(t["params"]["lr"] == 1e-6 for t in pruned), r["trials"]
    assert all(t["validations"] >= 3 for t in pruned), "no trial is pruned before the third validation"
    complete = [t for t in r["trials"] if t["state"] == "complete"]
    assert r["best"]["value"] == min(t["value"] for t in complete) and r["best"]["params"]["lr"] == 3e-3, r["trials"]
    assert f"best t{r['best']['trial']}" in row["reason"] and "pruned" in row["reason"]
    # the pruned trials' train jobs were cancelled, saying why; gwi sweep show prints the table
    assert main(["status"]) in (0, 1)
    capsys.readouterr()
    assert main(["sweep", "show", "tune"]) == 0
    out = capsys.readouterr().out
    assert "best: t" in out and "pruned" in out and "lr" in out and "batch_size" in out
    assert main(["history", pruned[0]["job"]]) == 0
    assert "pruned by sweep tune" in capsys.readouterr().out
