"""``gwi evaluate``: the metrics against a hand computation (numpy and scipy, not the code under
test), the report and plot, the bad inputs."""

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from gwi.cli import main
from gwi.config import TrainConfig
from gwi.data.shards import ShardedDataset
from gwi.data.synth import synthesize
from gwi.data.sync import pull
from gwi.evaluate import evaluate, ssim
from gwi.inference import predict_batch
from gwi.runs import load_model
from gwi.training import train


def ssim_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    """OpenFWI's SSIM written out: an 11x11 Gaussian (sigma 1.5) window, zero padding, mean over pixels."""
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5 ** 2))
    g /= g.sum()
    w = np.outer(g, g)

    def blur(t):
        return ndimage.correlate(t, w, mode="constant", cval=0.0)

    mu_a, mu_b = blur(a), blur(b)
    va, vb, cov = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return float((((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (va + vb + c2))).mean())


def test_ssim_is_openfwis():
    rng = np.random.default_rng(0)
    a = rng.random((3, 70, 70))
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1)
    got = ssim(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(got, [ssim_by_hand(a[i], b[i]) for i in range(3)], rtol=1e-10)
    assert ssim(torch.from_numpy(a), torch.from_numpy(a)).tolist() == pytest.approx([1.0] * 3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ev")
    synthesize(["FlatVel_A", "CurveFault_A"], 8, f"file://{root}/s", "d", seed=5, batch_size=8, progress=False, backend="deepwave")
    ds, run = f"file://{root}/s/datasets/d", f"file://{root}/s/runs/r"
    train(TrainConfig(model="inversionnet", preset="tiny", dataset=ds, run=run, epochs=1, batch_size=4,
                      split="kfold:4:1", heartbeat_s=30), log=lambda *_: None)
    return ds, run


def test_evaluate_matches_a_hand_computation(trained, tmp_path, capsys):
    ds_url, run = trained
    out, plot = tmp_path / "rep.json", tmp_path / "worst.png"
    assert main(["evaluate", "--checkpoint", run, "--dataset", ds_url, "--split", "all", "--tta", "none",
                 "--out", str(out), "--plot", str(plot), "--worst", "3"]) == 0
    text = capsys.readouterr().out
    assert "FlatVel_A" in text and "CurveFault_A" in text and "overall" in text and "SSIM" in text
    rep = json.loads(out.read_text())
    assert plot.stat().st_size > 1000 and rep["plot"] == str(plot)

    # by hand: the run's model predicts every sample; metrics from numpy and scipy
    ds = ShardedDataset(pull(ds_url, progress=False))
    m = load_model(run, torch.device("cpu"))
    x, y = ds.batch(np.arange(len(ds)))
    pred, truth = predict_batch([m], [1.0], x, torch.device("cpu"), "fp32").astype(np.float64), y[:, 0].astype(np.float64)
    assert rep["samples"] == len(ds) == 16 and rep["split"] == "all"
    for fam in ("FlatVel_A", "CurveFault_A", "overall"):
        sel = np.ones(len(ds), bool) if fam == "overall" else ds.families == fam
        e = pred[sel] - truth[sel]
        got = rep["metrics"][fam]
        assert got["samples"] == sel.sum()
        assert got["mae"] == pytest.approx(np.abs(e).mean(), rel=1e-5)
        assert got["rmse"] == pytest.approx(np.sqrt((e ** 2).mean()), rel=1e-5)
        want_ssim = np.mean([ssim_by_hand((p - 1500) / 3000, (t - 1500) / 3000) for p, t in zip(pred[sel], truth[sel])])
        assert got["ssim"] == pytest.approx(want_ssim, rel=1e-5)
    per_sample = np.abs(pred - truth).reshape(len(ds), -1).mean(1)
    assert [w["index"] for w in rep["worst"]] == list(np.argsort(-per_sample)[:3])


def test_evaluate_defaults_to_the_runs_validation_fold_and_prints_json(trained, capsys, tmp_path, monkeypatch):
    ds_url, run = trained
    # as a plan's job: its heartbeat carries the MAE, which gwi status shows
    monkeypatch.setenv("GWI_HEARTBEAT", f"file://{tmp_path}/attempt/progress.json")
    assert main(["evaluate", "--checkpoint", run, "--dataset", ds_url, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    beat = json.loads((tmp_path / "attempt" / "progress.json").read_text())
    assert beat["state"] == "succeeded" and beat["val_mae"] == rep["metrics"]["overall"]["mae"]
    assert rep["split"] == "kfold:4:1" and rep["samples"] == 4 and rep["tta"] is True
    r2 = evaluate([run], ds_url, split="kfold:4:1", tta=True, log=lambda *_: None)
    assert r2["metrics"] == rep["metrics"]


def test_evaluate_bad_inputs(trained, tmp_path, capsys):
    ds_url, run = trained
    assert main(["evaluate", "--dataset", ds_url]) == 1
    assert "give --checkpoint (one or more) or --ensemble FILE" in capsys.readouterr().err
    with pytest.raises(ValueError, match="split: expected 'kfold:K:FOLD'"):
        evaluate([run], ds_url, split="kfold:x", log=lambda *_: None)
    with pytest.raises(ValueError, match="fold: expected an integer in 0..3, got 9"):
        evaluate([run], ds_url, split="kfold:4:9", log=lambda *_: None)
