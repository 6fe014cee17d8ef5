"""Time budgets: durations, the sizing arithmetic, the resizable schedule, and real ``gwi train
--time-budget`` processes (one runs its budget out, one is killed halfway and resumed elsewhere)."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gwi import budget
from gwi.budget import Costs, format_duration, parse_duration
from gwi.data.synth import synthesize
from gwi.training.optim import Schedule


@pytest.mark.parametrize("text,secs", [("90s", 90), ("45m", 2700), ("1.5h", 5400), ("2h30m", 9000),
                                       ("1h 30m", 5400), ("1d", 86400), ("120", 120), (75, 75), ("0.5s", 0.5)])
def test_durations(text, secs):
    assert parse_duration(text) == secs
    assert parse_duration(format_duration(secs)) == pytest.approx(secs, rel=0.01)


@pytest.mark.parametrize("bad", ["", "abc", "5x", "1h30", "m", "-5m", "0s", True, "h1"])
def test_bad_durations_say_what_is_expected(bad):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_sizing_arithmetic():
    c = Costs(step_s=0.5, val_s=4.0, publish_s=1.0)
    # 1000 s left: margin 50, final event 5 -> 945 s for training with an event (5 s) every 100 s:
    # t (1 + 5/100) = 945 -> t = 900 -> 1800 steps of 0.5 s
    assert budget.steps_that_fit(1000, c, every_s=100) == 1800
    assert budget.steps_that_fit(5, c, every_s=100) == 0
    # interval: a tenth of the budget, at most 15 minutes
    assert budget.interval_s(60) == 6 and budget.interval_s(10 * 3600) == 900
    # the minimum: spent + 3 steps + validation + checkpoint, with the margin (at least 2 s)
    assert budget.minimum_s(10, c) == pytest.approx(10 + 1.5 + 5 + 2)
    # a resumed plan with a like step time that still fits stays as it was
    assert budget.resize(1000, 0.45, c, remaining_s=1000, every_s=100) == 1000
    # ... also 40% slower (a shared CPU measured again), as long as it fits
    assert budget.resize(1000, 0.5 / 1.4, c, remaining_s=1000, every_s=100) == 1000
    # a step twice as slow: the plan's training time (250 s) at the new step time
    assert budget.resize(1000, 0.25, c, remaining_s=1000, every_s=100) == 500
    # the plan no longer fits what is left of this budget: cut to what fits
    assert budget.resize(1000, 0.5, c, remaining_s=300, every_s=100) == budget.steps_that_fit(300, c, 100) < 1000
    # the process that made the plan re-fits it to its budget, past a 3% dead band
    assert budget.replan(1790, 0.5, c, remaining_s=1000, every_s=100, own_plan=True) == 1790
    assert budget.replan(1000, 0.5, c, remaining_s=1000, every_s=100, own_plan=True) == 1800
    assert budget.replan(1000, 0.45, c, remaining_s=1000, every_s=100, own_plan=False) == 1000


def test_the_attempts_time_limit_caps_the_budget():
    # auto (inf) takes the attempt's limit less the margin for start-up (at least 2 min, 5%)
    assert budget.effective_budget_s(math.inf, 7200.0) == 7200 - 360
    assert budget.effective_budget_s(3600.0, 1800.0) == 1800 - 120
    assert budget.effective_budget_s(3600.0, None) == 3600
    assert budget.effective_budget_s(math.inf, None) == 0  # no limit anywhere: sized by epochs
    assert budget.effective_budget_s(0.0, 7200.0) == 0  # no budget asked: the limit alone does not size
    assert parse_duration("auto", allow_auto=True) == math.inf
    with pytest.raises(ValueError):
        parse_duration("auto")


def test_schedule_sizes_resizes_and_matches_the_plain_cosine():
    plain = Schedule(100, 10)
    assert plain(0) == 0.1 and plain(9) == 1.0 and math.isclose(plain(55), 0.5, abs_tol=1e-9) and plain(100) == 0
    s = Schedule(None, 0)
    assert s(0) == s(2) == 0.0  # measuring: lr 0 until sized
    s.size(3, 103, 0.1)
    assert (s.start, s.warmup, s.total) == (3, 10, 103) and s(3) == 0.1 and s(12) == 1.0
    before = s(60)
    s.resize(60, 200)  # a later end: the lr at the re-size step is unchanged, then decays to 0 at 200
    assert math.isclose(s(60), before, rel_tol=1e-12) and s(200) == 0.0 and s(130) > before * 0.2
    # LambdaLR keeps a callable object's attributes: the schedule travels in the checkpoint
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sd = torch.optim.lr_scheduler.LambdaLR(opt, s).state_dict()
    t = Schedule(50, 5)
    torch.optim.lr_scheduler.LambdaLR(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]), t).load_state_dict(sd)
    assert vars(t) == vars(s)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    synthesize(["FlatVel_A", "CurveVel_A"], 16, f"file://{root}", "s", seed=3, batch_size=16, progress=False, backend="deepwave")
    return f"file://{root}/datasets/s"


def gwi_train(dataset, run_dir: Path, budget_text: str, cache: Path, env: dict | None = None):
    """A real ``gwi train --time-budget`` (tiny model, CPU, one thread) and its output in a file."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = open(run_dir.parent / f"{run_dir.name}-{cache.name}.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gwi", "train", "--model", "inversionnet", "--preset", "tiny", "--dataset", dataset,
         "--run", f"file://{run_dir}", "--time-budget", budget_text, "--batch-size", "4", "--heartbeat-s", "0.5",
         "--device", "cpu", "--set", "split=kfold:4:0"],
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "GWI_CACHE": str(cache), **(env or {})})
    proc.log = Path(log.name)
    return proc


def latest(run_dir: Path) -> dict:
    ptr = json.loads((run_dir / "checkpoints" / "latest.json").read_text())
    return torch.load(run_dir / ptr["latest"]["path"], weights_only=True)


@pytest.mark.slow
def test_a_60s_budget_finishes_its_schedule_inside_90s(dataset, tmp_path):
    run = tmp_path / "runs" / "b60"
    t0 = time.monotonic()
    proc = gwi_train(dataset, run, "60s", tmp_path / "cache")
    assert proc.wait(timeout=150) == 0, proc.log.read_text()[-3000:]
    wall = time.monotonic() - t0
    out = proc.log.read_text()
    assert wall <= 90, f"took {wall:.0f} s:\n{out[-2000:]}"
    m = json.loads((run / "metrics.json").read_text())
    # the whole sized schedule ran, the final validation is its last entry, and it used the budget
    assert m["steps"] == m["total_steps"] > 100 and m["history"][-1]["step"] == m["steps"]
    assert 0.8 * 60 <= m["budget_used_s"] <= 60, m["budget_used_s"]
    ck = latest(run)
    assert ck["step"] == m["steps"] and ck["budget"]["budget_s"] == 60
    sched = ck["optimizer"]["schedulers"][0]
    assert sched["_last_lr"][0] < 1e-3 * 2e-3 or sched["_last_lr"][0] == 0.0, "the cosine reached its end"
    assert sched["lr_lambdas"][0]["total"] == m["total_steps"]
    assert "time budget 1m: " in out and "steps of" in out, out[-2000:]


@pytest.mark.slow
def test_a_budgeted_run_killed_halfway_resumes_elsewhere_on_the_same_schedule(dataset, tmp_path):
    """SIGKILL halfway through a 20 s budget, then the same command on "another platform" (another data
    cache, another process): it pulls, resumes the newest checkpoint and finishes the same schedule."""
    run = tmp_path / "runs" / "b20"
    proc = gwi_train(dataset, run, "20s", tmp_path / "here")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                ck = latest(run)
            except (FileNotFoundError, ValueError, RuntimeError, EOFError):
                ck = None
            if ck and ck["step"] >= ck["total_steps"] // 3:  # a periodic checkpoint past a third
                break
            assert proc.poll() is None, proc.log.read_text()[-3000:]
            time.sleep(0.1)
        else:
            raise AssertionError("no periodic checkpoint in 60 s:\n" + proc.log.read_text()[-3000:])
        total, killed_at = ck["total_steps"], ck["step"]
        assert killed_at < total
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (run / "metrics.json").exists()
    again = gwi_train(dataset, run, "20s", tmp_path / "elsewhere")
    assert again.wait(timeout=90) == 0, again.log.read_text()[-3000:]
    out = again.log.read_text()
    m = json.loads((run / "metrics.json").read_text())
    assert m["resumed_from"] and "resumed from" in out
    assert "the schedule goes on unchanged" in out, out[-2000:]
    assert m["total_steps"] == m["steps"] == total
    assert latest(run)["optimizer"]["schedulers"][0]["lr_lambdas"][0]["total"] == total


def test_a_budget_below_the_measured_minimum_is_refused(dataset, tmp_path):
    proc = gwi_train(dataset, tmp_path / "runs" / "b1", "1s", tmp_path / "cache")
    assert proc.wait(timeout=90) != 0
    out = proc.log.read_text()
    assert "time_budget: 1s is shorter than the minimum measured here" in out and "start-up" in out, out[-2000:]
    # auto: the attempt's time limit (set by the scheduler) less its start-up margin of 2 min; 2 s is
    # below any machine's minimum (the margin alone is 2 s)
    proc = gwi_train(dataset, tmp_path / "runs" / "auto", "auto", tmp_path / "cache", env={"GWI_TIME_LIMIT_S": "122"})
    assert proc.wait(timeout=90) != 0
    out = proc.log.read_text()
    assert "time budget: 2s (asked auto, this attempt's time limit 2m2s)" in out, out[-2000:]
    assert "time_budget: 2s is shorter than the minimum measured here" in out
