"""Post-processing (``--post plateau``): against a column-by-column loop written here, only on maps
judged layered, and scored by ``gwi evaluate`` (the MAE with and without), in plans too."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from gwi.cli import main
from gwi.data.shards import ShardedDataset
from gwi.data.sync import pull
from gwi.inference import predict_batch
from gwi.postprocess import parse, plateau
from gwi.runs import load_model

from .test_evaluate import trained  # noqa: F401 - the module's trained tiny model, a fixture


def plateau_by_hand(v: np.ndarray, tol: float) -> np.ndarray:
    out = v.copy()
    for x in range(v.shape[1]):
        start = 0
        for z in range(1, v.shape[0] + 1):
            if z == v.shape[0] or abs(v[z, x] - v[z - 1, x]) > tol:
                out[start:z, x] = np.median(v[start:z, x])
                start = z
    return out


def layered_prediction(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(truth, a model-like prediction): three flat layers, blurred and rippled."""
    rng = np.random.default_rng(seed)
    z = np.arange(70)[:, None] * np.ones((1, 70))
    truth = np.where(z < 20, 2000.0, np.where(z < 45, 3000.0, 4000.0)).astype(np.float32)
    ripple = gaussian_filter(rng.normal(0, 8, truth.shape), 3) * 6
    return truth, (gaussian_filter(truth, 0.6) + ripple).astype(np.float32)


def test_plateau_is_the_median_of_each_column_run_on_layered_maps_only():
    truth, pred = layered_prediction(0)
    got = plateau(pred, 20.0)
    np.testing.assert_allclose(got, plateau_by_hand(pred, 20.0))
    inside = np.abs(np.arange(70)[:, None] - np.array([20, 45])).min(1) > 2  # rows away from the interfaces
    assert np.abs(got - truth)[inside].mean() < 0.7 * np.abs(pred - truth)[inside].mean()  # the ripples go
    assert np.abs(got - truth).mean() < np.abs(pred - truth).mean()
    smooth = (2500 + gaussian_filter(np.random.default_rng(1).normal(0, 300, (70, 70)), 6) * 20).astype(np.float32)
    assert plateau(smooth) is smooth  # a smooth field is left alone


@pytest.mark.parametrize("text,error", [("plateu", "unknown step 'plateu'"), ("plateau:x", "expected a tolerance"),
                                        ("plateau:0", "expected a tolerance > 0")])
def test_bad_steps_say_what_is_expected(text, error):
    with pytest.raises(ValueError, match=error):
        parse(text)


def test_evaluate_scores_the_maps_with_and_without(trained, tmp_path, capsys):  # noqa: F811
    ds_url, run = trained
    out = tmp_path / "rep.json"
    assert main(["evaluate", "--checkpoint", run, "--dataset", ds_url, "--split", "all", "--tta", "none",
                 "--post", "plateau:15", "--out", str(out)]) == 0
    assert "without plateau:15" in capsys.readouterr().out
    r = json.loads(out.read_text())
    ds = ShardedDataset(pull(ds_url, progress=False))
    x, y = ds.batch(np.arange(len(ds)))
    cpu = torch.device("cpu")
    pred = predict_batch([load_model(run, cpu)], [1.0], x, cpu, "fp32", tta=False)  # (N, 70, 70)
    snapped = np.stack([plateau_by_hand(p, 15.0) if p is not plateau(p, 15.0) else p for p in pred])
    assert r["post"] == ["plateau:15"]
    assert r["metrics_raw"]["overall"]["mae"] == pytest.approx(float(np.abs(pred - y[:, 0]).mean()), rel=1e-5)
    assert r["metrics"]["overall"]["mae"] == pytest.approx(float(np.abs(snapped - y[:, 0]).mean()), rel=1e-5)
