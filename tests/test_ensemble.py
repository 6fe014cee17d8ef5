import json

import numpy as np
import pytest
import torch

from gwi.config import TrainConfig
from gwi.data.synth import synthesize, velocity_batch
from gwi.physics import simulate
from gwi.models.ensemble import crf_smooth, fit, fit_crf, fit_weights, load_ensemble
from gwi.predict import predict
from gwi.training import train


def layered(n=4, seed=0):
    return torch.from_numpy(velocity_batch("FlatFault_A", seed, 0, n)).float()


def test_crf_smooths_noise_but_keeps_layer_boundaries():
    truth = layered()
    g = torch.Generator().manual_seed(0)
    noisy = truth + torch.randn(truth.shape, generator=g) * 60
    sm = crf_smooth(noisy, lam=2.0, sigma=100.0, iters=8)
    assert (sm - truth).abs().mean() < 0.6 * (noisy - truth).abs().mean()
    const = torch.full((1, 70, 70), 2500.0)
    assert torch.allclose(crf_smooth(const, 4.0, 50.0), const)
    # a 1000 m/s step survives: bilateral weights stop smoothing across it
    step = torch.full((1, 70, 70), 2000.0)
    step[:, 35:] = 3000.0
    out = crf_smooth(step, 4.0, 100.0)
    assert float(out[0, 34, 10]) == pytest.approx(2000, abs=1) and float(out[0, 35, 10]) == pytest.approx(3000, abs=1)


def test_crf_is_kept_only_when_it_helps():
    truth = layered()
    noisy = truth + torch.randn(truth.shape, generator=torch.Generator().manual_seed(1)) * 80
    cfg = fit_crf(noisy, truth)
    assert cfg["enabled"] and cfg["val_mae"] < cfg["val_mae_without"]
    cfg = fit_crf(truth.clone(), truth)
    assert not cfg["enabled"] and cfg["val_mae"] == 0


def test_fitted_weights_never_lose_to_the_best_member():
    truth = layered(6)
    g = torch.Generator().manual_seed(2)
    good = truth + torch.randn(truth.shape, generator=g) * 50
    bad = truth + 400 + torch.randn(truth.shape, generator=g) * 50
    other = truth - 60 + torch.randn(truth.shape, generator=g) * 50
    preds = torch.stack([bad, good, other])
    w, how = fit_weights(preds, truth)
    assert sum(w) == pytest.approx(1) and min(w) >= 0 and w[0] < 0.1
    ens = torch.einsum("m,mnhw->nhw", torch.tensor(w), preds)
    best = min(float((p - truth).abs().mean()) for p in preds)
    assert float((ens - truth).abs().mean()) <= best + 1e-6


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ens")
    synthesize(["FlatVel_A", "CurveFault_B"], 15, f"file://{root}/s", "d", seed=6, batch_size=15, progress=False, backend="deepwave")
    runs = []
    for name in ("inversionnet", "specproj_unet"):
        train(TrainConfig(model=name, preset="tiny", dataset=f"file://{root}/s/datasets/d", run=f"file://{root}/s/runs/{name}",
                          epochs=4, batch_size=4, lr=3e-3, heartbeat_s=30), log=lambda *_: None)
        runs.append(f"file://{root}/s/runs/{name}")
    return root, runs


def test_ensemble_fit_predict_uncertainty_and_plots(two_runs, tmp_path):
    root, runs = two_runs
    rep = fit(runs, f"file://{root}/s/datasets/d", str(tmp_path / "ensemble.json"), mc_samples=6,
              plots=str(tmp_path / "plots"), log=lambda *_: None)
    assert rep["split"] == "kfold:5:0" and rep["val_samples"] == 6
    best = min(m["val_mae"]["overall"] for m in rep["members"])
    assert rep["val_mae"]["overall"] <= best + 1e-6
    assert set(rep["val_mae"]) == {"overall", "FlatVel_A", "CurveFault_B"}
    for m in rep["members"]:  # both tiny presets carry dropout: MC passes differ
        assert all(v > 0 for v in m["mc_dropout_std"].values())
    assert load_ensemble(tmp_path / "ensemble.json")["members"][0]["resolved"].endswith(".pt")
    from gwi.data import folds
    from gwi.data.shards import load_manifest

    man = load_manifest(root / "s" / "datasets" / "d")
    _, val = folds.split(man, "kfold:5:0")
    fam = folds.sample_families(man)
    expected = sorted(f"{f}-{i}.png" for f in ("FlatVel_A", "CurveFault_B") for i in val[fam[val] == f][:2])
    assert sorted(p.name for p in (tmp_path / "plots").glob("*.png")) == expected

    test = tmp_path / "test"
    test.mkdir()
    x = simulate(velocity_batch("CurveFault_B", 9, 0, 3), "deepwave").numpy()
    for i, xi in enumerate(x):
        np.save(test / f"q{i}.npy", xi)
    r = predict([], str(test), str(tmp_path / "sub.csv"), ensemble=str(tmp_path / "ensemble.json"),
                uncertainty=str(tmp_path / "unc.npy"), mc_samples=4, progress=False, log=lambda *_: None)
    assert r["files"] == 3 and len(r["models"]) == 2
    u = np.load(tmp_path / "unc.npy")
    assert u.shape == (3, 70, 70) and u.dtype == np.float16 and float(u.min()) >= 0 and float(u.mean()) > 0
    assert json.loads((tmp_path / "unc.npy.oids.json").read_text()) == ["q0", "q1", "q2"]
    with pytest.raises(ValueError, match="not both"):
        predict(runs, str(test), str(tmp_path / "x.csv"), ensemble=str(tmp_path / "ensemble.json"), log=lambda *_: None)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a gwi ensemble file"):
        load_ensemble(tmp_path / "bad.json")


def test_per_family_weights_are_used_when_the_input_names_families(two_runs, tmp_path):
    root, runs = two_runs
    rep = fit(runs, f"file://{root}/s/datasets/d", str(tmp_path / "e.json"), mc_samples=0, crf=False,
              min_family_samples=2, log=lambda *_: None)
    fw = rep["family_weights"]
    assert set(fw) == {"FlatVel_A", "CurveFault_B"} and all(abs(sum(w) - 1) < 1e-6 for w in fw.values())
    assert "val_mae_family_weights_in_sample" in rep
    logs = []
    predict([], f"file://{root}/s/datasets/d", str(tmp_path / "v.csv"), ensemble=str(tmp_path / "e.json"),
            progress=False, log=logs.append)
    assert any("using per-family ensemble weights for CurveFault_B, FlatVel_A" in m for m in logs)
    # sample 0 is FlatVel_A: its rows are the FlatVel_A-weighted mean of the members
    from gwi.data.shards import ShardedDataset
    from gwi.data.sync import pull
    from gwi.inference import predict_batch
    from gwi.predict import COLUMNS
    from gwi.runs import load_model

    ds = ShardedDataset(pull(f"file://{root}/s/datasets/d", progress=False))
    assert ds.families[0] == "FlatVel_A"
    members = [load_model(r, torch.device("cpu")) for r in runs]
    want = predict_batch(members, fw["FlatVel_A"], ds.batch([0])[0], torch.device("cpu"), "fp32")[0]
    import csv

    rows = [r for r in csv.reader(open(tmp_path / "v.csv")) if r[0].startswith("000000_y_")]
    got = np.array([[float(v) for v in r[1:]] for r in rows])
    np.testing.assert_allclose(got, want[:, COLUMNS], atol=0.006)
    # a plain test folder names no families: global weights, said so
    test = tmp_path / "t"
    test.mkdir()
    np.save(test / "a.npy", ds.batch([1])[0][0])
    logs.clear()
    predict([], str(test), str(tmp_path / "t.csv"), ensemble=str(tmp_path / "e.json"), progress=False, log=logs.append)
    assert any("using the global weights" in m for m in logs)


@pytest.mark.slow
def test_mc_dropout_spread_follows_the_dropout_rate(tmp_path):
    """MC dropout measures the spread of dropout passes, and fit() reports it per family. An earlier
    version asserted a larger spread on the harder family: it held for two seeds by chance (tiny
    InversionNet after 40 steps scores ~400 m/s on both families; over seeds 0-2 the family order of
    the spread flips and its rank correlation with the error is -0.3..0.3), so what is tested is the
    mechanism: zero without dropout, growing with the rate, the model back in eval mode after."""
    from contextlib import nullcontext

    from gwi.data.shards import ShardedDataset
    from gwi.data.sync import pull
    from gwi.models.ensemble import mc_dropout_std
    from gwi.runs import load_model

    synthesize(["FlatVel_A", "CurveFault_B"], 12, f"file://{tmp_path}/s", "d", seed=6, batch_size=12, progress=False, backend="deepwave")
    run = f"file://{tmp_path}/s/runs/inv"
    train(TrainConfig(model="inversionnet", preset="tiny", dataset=f"file://{tmp_path}/s/datasets/d", run=run,
                      epochs=2, batch_size=8, lr=3e-3, heartbeat_s=30, seed=0, split="kfold:4:0"),
          log=lambda *_: None)
    rep = fit([run], f"file://{tmp_path}/s/datasets/d", str(tmp_path / "e.json"), mc_samples=8, crf=False,
              log=lambda *_: None)
    std = rep["members"][0]["mc_dropout_std"]
    assert set(std) == {"FlatVel_A", "CurveFault_B"} and min(std.values()) > 0

    m = load_model(run, torch.device("cpu"))
    x = torch.from_numpy(ShardedDataset(pull(f"file://{tmp_path}/s/datasets/d", progress=False)).batch([0, 1, 2])[0])
    drops = [mod for mod in m.model.modules() if isinstance(mod, torch.nn.modules.dropout._DropoutNd)]
    assert drops, "tiny InversionNet has dropout layers"
    spread = {}
    for p in (0.0, 0.1, 0.3):
        for d in drops:
            d.p = p
        torch.manual_seed(0)
        spread[p] = mc_dropout_std(m, x.float(), 8, nullcontext).mean().item()
    assert spread[0.0] == 0.0 < spread[0.1] < spread[0.3], spread
    assert not m.model.training
