"""Cycles (issue 26): the plan's checks, the stop rule, and a 2-round cycle run end to end on the local
platforms (real gwi processes): a round that fails fails the cycle and a dispatch goes on from there,
round 1's training is SIGKILLed midway and resumes from its checkpoint, the scheduler itself is
restarted mid-round, and round 2 trains on round 1's pseudo set."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gwi.adapters.base import load_profiles
from gwi.cli import main
from gwi.data.shards import ShardedDataset
from gwi.data.sync import pull
from gwi.data.synth import synthesize
from gwi.kinds.cycle import round_steps
from gwi.scheduler import Scheduler
from gwi.scheduler.cycles import stop
from gwi.spec import load_spec
from gwi.store import open_store
from gwi.yamlfile import ConfigError

from .conftest import run_until
from .test_stream_plan import training_pid

PROFILE = "adapter: local\ncapacity: 2\nstart_timeout_s: 120\noptions: {runtime: process, grace_s: 2}\n"
PLAN = """
name: cy
store: {store}
defaults: {{platforms: [local-a, local-b], heartbeat_s: 0.5, limits: {{stall_s: 60}}}}
jobs:
  - name: base
    kind: train
    model: inversionnet
    preset: tiny
    dataset: d
    config: {{epochs: 2, batch_size: 4, split: "kfold:4:0", ema: 0.0}}
  - name: cycles
    kind: cycle
    start: base
    test: ./test
    rounds: 2
    min_gain: none
    pseudo: 0.5
    flip: true
    backend: deepwave
    shards: {{predict: 2, pseudo: 2}}
    predict: {{tta: none, batch_size: 4}}
    config: {{epochs: 6, lr: 1.0e-4, checkpoint_every: 2}}
"""


@pytest.fixture
def plat(tmp_path):
    d = tmp_path / "platforms"
    d.mkdir()
    for name in ("local-a", "local-b"):
        (d / f"{name}.yaml").write_text(PROFILE)
    return d


def write_plan(tmp_path, store: str, body: str = PLAN) -> Path:
    p = tmp_path / "cy.yaml"
    p.write_text(textwrap.dedent(body.format(store=store)).lstrip("\n"))
    return p


@pytest.mark.parametrize("edit,message", [
    (("start: base", "start: nope"), "field 'start': unknown job 'nope'; expected a train job written above this one (base)"),
    (("start: base", "start: file:///x/runs/a/b"), "field 'start': expected a train job of this plan"),
    (("rounds: 2", "rounds: 0"), "field 'rounds': expected a value >= 1, got 0"),
    (("pseudo: 0.5", "pseudo: 0"), "field 'pseudo': expected a weight > 0"),
    (("lr: 1.0e-4,", "split: 'kfold:5:1', lr: 1.0e-4,"), "field 'config.split': unknown field"),
    (("lr: 1.0e-4,", "lr: -1,"), "field 'config.lr'"),
    (("pseudo: 2}}", "pseudo: 999}}"), "field 'shards': pseudo: expected at most 256"),
    (("keep: all", "keep: some"), "field 'keep': unknown value 'some'"),
])
def test_bad_cycles_name_the_field(tmp_path, plat, edit, message):
    body = PLAN.replace("    flip: true\n", "    flip: true\n    keep: all\n").replace(*edit)
    with pytest.raises(ConfigError) as e:
        load_spec(write_plan(tmp_path, f"file://{tmp_path}/store", body), profiles=load_profiles([plat]), check_store=False)
    assert "job 'cycles': " + message in str(e.value)


def test_the_start_job_must_come_first_and_be_one_train_job(tmp_path, plat):
    folds = PLAN.replace('split: "kfold:4:0", ', "folds: [0, 1], k: 4, ")
    with pytest.raises(ConfigError, match=r"'base' names 2 jobs \(base-f0, base-f1\); expected one"):
        load_spec(write_plan(tmp_path, f"file://{tmp_path}/s", folds), profiles=load_profiles([plat]), check_store=False)


def test_a_round_is_predict_pseudo_train_evaluate_under_rounds_r(tmp_path, plat):
    spec = load_spec(write_plan(tmp_path, f"file://{tmp_path}/store"), profiles=load_profiles([plat]), check_store=False)
    cyc = spec.job("cycles")
    assert cyc.after == ["base"] and cyc.params["start"] == f"file://{tmp_path}/store/runs/cy/base"
    run = f"file://{tmp_path}/store/runs/cy/cycles"
    r2 = {s.name: s for s in round_steps(cyc.params, run, 2)}
    assert list(r2) == ["r2-predict-s1", "r2-predict-s2", "r2-predict", "r2-pseudo-s1", "r2-pseudo-s2", "r2-pseudo",
                        "r2-train", "r2-evaluate"]
    assert r2["r2-predict"].after == ("r2-predict-s1", "r2-predict-s2") and r2["r2-pseudo-s1"].after == ("r2-predict",)
    train = r2["r2-train"].params
    assert train["init_from"] == f"{run}/rounds/1/train"  # from the previous round's model
    assert train["mix"] == [f"file://{tmp_path}/store/datasets/d", f"{run}/rounds/1/datasets/pseudo:0.5",
                            f"{run}/rounds/2/datasets/pseudo:0.5"]
    assert train["config"]["split"] == "kfold:4:0" and train["config"]["epochs"] == 6  # start's split, cycle's epochs
    assert r2["r2-evaluate"].params["members"] == [f"{run}/rounds/2/train"]
    assert r2["r2-evaluate"].params["config"]["split"] == "kfold:4:0"
    assert [s.name for s in round_steps(cyc.params, run, 0)] == ["r0-evaluate"]
    keep_last = {**cyc.params, "keep": "last"}
    assert [m for m in round_steps(keep_last, run, 2)[-2].params["mix"] if "/datasets/pseudo" in m] == [
        f"{run}/rounds/2/datasets/pseudo:0.5"]


def test_the_stop_rule():
    assert stop({0: 400.0, 1: 390.0}, 3, 5.0) is None  # gained 10
    assert "gained 3.0 m/s" in stop({0: 400.0, 1: 397.0}, 3, 5.0)
    assert stop({0: 400.0, 1: 390.0, 2: 395.0}, 3, 0.0).startswith("stopped: round 2 gained -5.0")  # vs the best
    assert stop({0: 400.0, 1: 410.0}, 3, None) is None  # min_gain none: every round runs
    assert stop({0: 400.0, 1: 390.0, 2: 380.0}, 2, 0.0) == "all rounds done"


def _test_folder(store: str, folder: Path) -> None:
    """Four test files: recordings of maps the training set does not have."""
    synthesize(["FlatVel_A", "CurveVel_A"], 2, store, "t", seed=11, batch_size=4, progress=False, backend="deepwave")
    ds = ShardedDataset(pull(f"{store}/datasets/t", progress=False))
    folder.mkdir()
    for i in range(len(ds)):
        np.save(folder / f"t{i:03d}.npy", np.asarray(ds[i][0], np.float16))


@pytest.mark.slow
def test_two_rounds_end_to_end_with_a_killed_round_and_a_restarted_scheduler(tmp_path, plat, monkeypatch, capsys):
    store = f"file://{tmp_path}/store"
    synthesize(["FlatVel_A", "CurveVel_A"], 12, store, "d", seed=3, batch_size=12, progress=False, backend="deepwave")
    monkeypatch.setenv("GWI_PLATFORMS", str(plat))
    monkeypatch.setenv("GWI_HOME", str(tmp_path / "home"))
    profiles = load_profiles([plat])
    run = f"{store}/runs/cy/cycles"
    r1 = f"{run}/rounds/1/train"
    latest = tmp_path / "store/runs/cy/cycles/rounds/1/train/checkpoints/latest.json"
    killed = []

    def kill_round_1_midway():  # once round 1's training has published a checkpoint
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and not killed:
            if latest.exists() and (pid := training_pid(r1)):
                os.kill(pid, signal.SIGKILL)
                killed.append(json.loads(latest.read_text())["latest"]["step"])
            time.sleep(0.01)

    t = threading.Thread(target=kill_round_1_midway, daemon=True)
    t.start()
    s = Scheduler(tmp_path / "home", profiles=profiles)
    reasons = set()

    def cycle_state(sched):
        row = sched.state.job("cy/cycles")
        if row is not None:
            reasons.add(row["reason"].split(":")[0])
        return row is not None and row["state"] in ("succeeded", "failed") and row

    try:
        # the test folder is missing: round 1's prediction fails, and with it the cycle
        s.submit(load_spec(write_plan(tmp_path, store), profiles=profiles))
        failed = run_until(s, lambda: cycle_state(s), 300)
        assert failed["state"] == "failed" and failed["reason"].startswith("round 1: cycles-r1-predict-s"), failed["reason"]
        assert "gwi dispatch again" in failed["reason"]
        # dispatched again once it is there: the round goes on from where it stopped
        _test_folder(store, tmp_path / "test")
        assert "cycles: failed before, queued again" in s.submit(load_spec(write_plan(tmp_path, store), profiles=profiles))
        # the scheduler stops mid-round (round 1 killed) and a new one takes over the same state
        run_until(s, lambda: killed and s.state.job("cy/cycles-r1-train")["state"] == "running", 400)
        s.close()
        s = Scheduler(tmp_path / "home", profiles=profiles)
        row = run_until(s, lambda: cycle_state(s), 600)
        assert row["state"] == "succeeded", row["reason"]
        tries = s.state.attempts("cy/cycles-r1-train")
        r0 = s.state.attempts("cy/cycles-r0-evaluate")
        states = {j["name"]: j["state"] for j in s.state.jobs("cy")}
        r2_def = s.job_def(s.state.job("cy/cycles-r2-train"))
    finally:
        for a in s.state.active_attempts():
            s.adapter(a["platform"]).cancel(json.loads(a["handle"]))
        s.close()
    t.join(timeout=5)

    assert len(r0) == 1  # what had succeeded before the cycle failed did not run again
    assert killed and tries[0]["exit_code"] == 137, [dict(a) for a in tries]
    assert tries[-1]["state"] == "succeeded" and tries[-1]["resumed_from_step"] >= killed[0] > 0
    assert {"round 1/2", "round 2/2"} <= reasons, reasons  # what gwi status shows of the cycle
    assert set(states.values()) == {"succeeded"} and len(states) == 2 + 1 + 2 * 8, states
    assert "all rounds done" in row["reason"] and "r0 " in row["reason"] and "r2 " in row["reason"]

    # round 2 trained on the original data and both rounds' pseudo sets, from round 1's weights
    pseudo1 = f"{run}/rounds/1/datasets/pseudo"
    assert f"{pseudo1}:0.5" in r2_def.argv and r2_def.argv[r2_def.argv.index("--init-from") + 1] == r1
    metrics = json.loads(open_store(f"{run}/rounds/2/train").get_bytes("metrics.json"))
    assert [d["url"] for d in metrics["datasets"]] == [f"{store}/datasets/d", pseudo1, f"{run}/rounds/2/datasets/pseudo"]
    manifest = json.loads(open_store(pseudo1).get_bytes("manifest.json"))
    assert manifest["num_samples"] == 8  # four test maps and their mirrors
    for r in (0, 1, 2):
        assert json.loads(open_store(f"{run}/rounds/{r}/evaluate").get_bytes("evaluation.json"))["metrics"]
    assert main(["status"]) in (0, 1)
    assert "cycles-r2-evaluate" in capsys.readouterr().out
