"""``gwi refine`` from a model, with priors per family (issue 26): the family rule, the priors, the
keep-the-start rule, weights tuned on labelled samples, and ``--init RUN`` end to end."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from gwi.cli import main
from gwi.config import TrainConfig
from gwi.data.synth import synthesize, velocity_batch
from gwi.physics import backend, simulate
from gwi.physics.priors import classify, flat_share, laplacian, pull
from gwi.physics.refine import RefineConfig, refine, tune
from gwi.predict import HEADER, read_submission, rows_csv
from gwi.training import train

from .test_refine import blur


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def mae(got: dict, truth: dict) -> float:
    cols = list(range(1, 70, 2))  # what a submission holds
    return float(np.mean([np.abs(got[o][:, cols] - truth[o][:, cols]).mean() for o in truth]))


def test_the_family_rule_tells_layers_from_smooth_fields():
    layered = [velocity_batch(f, 5, 0, 4) for f in ("FlatVel_A", "FlatVel_B", "FlatFault_A", "CurveVel_A")]
    smooth = [velocity_batch(f, 5, 0, 4) for f in ("Style_A", "Style_B")]
    assert {classify(m) for b in layered for m in b} == {"layered"}
    assert {classify(m) for b in smooth for m in b} == {"smooth"}
    # a model's soft prediction of layers is still layers; a constant map is one layer
    assert {classify(m) for m in blur(layered[0], 2.0)} == {"layered"}
    assert classify(np.full((70, 70), 3000.0)) == "layered" and flat_share(np.full((70, 70), 3000.0)) == 1.0
    with pytest.raises(ValueError, match=r"map: expected a \(nz, nx\) array with nz, nx >= 2, got shape \(70,\)"):
        flat_share(np.zeros(70))


def test_the_priors_and_their_settings():
    z = torch.arange(70.0)[:, None] * 20.0 + 1500.0 + torch.arange(70.0)[None, :] * 5.0  # a plane: no curvature
    v = torch.stack([z, z + 100.0 * torch.sin(torch.arange(70.0))[None, :]])  # (2, 70, 70)
    lap = laplacian(v)
    assert float(lap[0]) == pytest.approx(0.0, abs=1e-10) and float(lap[1]) > 0
    assert pull(v, v).tolist() == [0.0, 0.0] and float(pull(v[:1] + 100.0, v[:1])) == pytest.approx(0.01)
    cfg = RefineConfig(tv=2.0, smooth=0.0, pull=5.0, prior_sets={"smooth": {"tv": 0.0, "smooth": 7.0, "pull": 0.0}})
    assert cfg.weights("fixed") == (2.0, 0.0, 5.0) and cfg.weights("layered") == (2.0, 0.0, 5.0)
    assert cfg.weights("smooth") == (0.0, 7.0, 0.0)
    assert RefineConfig(smooth=0.0).weights("smooth")[1] > 0  # auto's smooth set is never without its prior
    for bad, msg in (({"smooth": -1.0}, "smooth: expected a number >= 0, got -1.0"),
                     ({"pull": -2.0}, "pull: expected a number >= 0, got -2.0"),
                     ({"priors": "family"}, "priors: expected fixed or auto, got 'family'"),
                     ({"prior_sets": {"rough": {}}}, "prior_sets: expected sets among layered, smooth, got 'rough'")):
        with pytest.raises(ValueError, match=msg):
            RefineConfig(**bad).check()


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """A layered and a smooth test file (deepwave) and their true maps."""
    d = tmp_path_factory.mktemp("priors")
    truth = np.concatenate([velocity_batch("FlatVel_A", 31, 0, 1), velocity_batch("Style_A", 31, 0, 1)])
    test = d / "test"
    test.mkdir()
    with torch.no_grad():
        for o, xi in zip(("a", "b"), simulate(truth, "deepwave").numpy()):
            np.save(test / f"{o}.npy", xi)
    return {"dir": d, "test": test, "truth": truth}


def test_a_start_the_data_cannot_improve_on_is_kept(two, tmp_path):
    """The start is the truth: no step lowers its misfit, so the output is the start, row for row,
    and the priors CSV says so, with each file's prior set."""
    init, out = tmp_path / "init.csv", tmp_path / "out.csv"
    init.write_text(HEADER + "\n" + rows_csv(["a", "b"], two["truth"]))
    cfg = RefineConfig(backend="deepwave", iterations=1, bands=(0.0,), scale_range=0.0, batch_size=2, priors="auto",
                       lr=200.0)
    refine(str(two["test"]), str(init), str(out), cfg, log=lambda m: None)
    assert out.read_text() == init.read_text()
    rec = rows(tmp_path / "out.csv.priors.csv")
    assert [(r["oid"], r["prior"], r["kept"]) for r in rec] == [("a", "layered", "start"), ("b", "smooth", "start")]
    assert all(float(r["misfit_after"]) >= float(r["misfit_before"]) for r in rec)
    assert (rec[0]["tv"], rec[0]["smooth"], rec[1]["tv"], rec[1]["smooth"]) == ("0.001", "0", "0", "1000")


def test_tuning_picks_the_weights_with_the_lowest_mae(two):
    """Two points of a layered grid on the layered file (the smooth file is no layered file: not
    used): the chosen point is the one whose refined maps score best, and both scores are kept."""
    fwd = backend("deepwave", device=torch.device("cpu"))
    truth = torch.from_numpy(two["truth"])
    obs = torch.from_numpy(np.stack([np.load(two["test"] / f"{o}.npy") for o in ("a", "b")]))
    v0 = torch.from_numpy(np.clip(blur(two["truth"], 3.0) * 1.03, 1500, 4500).astype(np.float32))
    grid = {"layered": [{"tv": 0.0, "smooth": 0.0, "pull": 0.0}, {"tv": 0.0, "smooth": 0.0, "pull": 1e6}],
            "smooth": []}
    cfg = RefineConfig(backend="deepwave", iterations=1, bands=(5.0,), scale_range=0.0, batch_size=2)
    r = tune(fwd, obs, v0, truth, cfg, grid=grid, log=lambda m: None)
    assert r["files"] == {"layered": 1, "smooth": 1}
    scores = [s["mae"] for s in r["scores"]["layered"]]
    assert r["chosen"]["layered"] == {k: grid["layered"][int(np.argmin(scores))][k] for k in ("tv", "smooth", "pull")}
    assert r["start_mae"]["layered"] == pytest.approx(float((v0[0] - truth[0]).abs().mean()))
    assert "smooth" not in r["chosen"]  # an empty grid chooses nothing: the defaults stay


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny InversionNet trained a few steps on FlatVel_A, and two held-out files of that family."""
    root = tmp_path_factory.mktemp("model")
    synthesize(["FlatVel_A"], 12, f"file://{root}/s", "d", seed=3, batch_size=12, progress=False, backend="deepwave")
    run = f"file://{root}/s/runs/r"
    train(TrainConfig(model="inversionnet", preset="tiny", dataset=f"file://{root}/s/datasets/d", run=run,
                      epochs=3, batch_size=4, heartbeat_s=30), log=lambda *_: None)
    truth = velocity_batch("FlatVel_A", 404, 0, 2)
    test = root / "test"
    test.mkdir()
    with torch.no_grad():
        for o, xi in zip(("t0", "t1"), simulate(truth, "deepwave").numpy()):
            np.save(test / f"{o}.npy", xi)
    return {"run": run, "test": test, "truth": dict(zip(("t0", "t1"), truth)), "dataset": f"file://{root}/s/datasets/d"}


def test_refine_from_a_run_lowers_the_models_mae(model, tmp_path, capsys):
    out = tmp_path / "refined.csv"
    args = ["refine", "--test", str(model["test"]), "--init", model["run"], "--out", str(out), "--backend", "deepwave",
            "--iterations", "4", "--bands", "5,0", "--batch-size", "2", "--priors", "auto"]
    assert main(args) == 0
    start, got = read_submission(tmp_path / "refined.csv.init.csv"), read_submission(out)
    before, after = mae(start, model["truth"]), mae(got, model["truth"])
    with capsys.disabled():
        print(f"\nMAE of the model {before:.1f} -> refined {after:.1f} m/s")
    assert after < before, f"MAE {before:.1f} -> {after:.1f} m/s"
    rec = rows(tmp_path / "refined.csv.priors.csv")
    assert [r["oid"] for r in rec] == ["t0", "t1"] and {r["prior"] for r in rec} <= {"layered", "smooth"}
    assert all(r["kept"] in ("refined", "start") for r in rec)
    capsys.readouterr()
    assert main(args[:-2] + ["--tune-on", model["dataset"]]) == 1  # refused before any work
    assert ("--tune-on chooses the weights of each prior set from the model's maps: expected --priors auto and "
            "--init a run or .pt, got --priors fixed") in capsys.readouterr().err
