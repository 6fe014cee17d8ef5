"""Every tiny model learns: on a small synthetic set its validation MAE ends well below the
predict-the-training-mean baseline (a per-pixel mean velocity map, the strongest constant guess)."""

import pytest

from gwi.config import TrainConfig
from gwi.data.synth import synthesize
from gwi.models.registry import list_models
from gwi.training import train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("learn")
    synthesize(["FlatVel_A", "CurveVel_A"], 48, f"file://{root}", "l", seed=1, batch_size=24, progress=False, backend="deepwave")
    return f"file://{root}/datasets/l"


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_tiny_model_beats_the_mean_baseline(name, dataset, tmp_path):
    # 72 train / 24 val samples, 108 steps of 8: ~10-20 s per model on 2 cores. Measured on this
    # set (2026-11-27): val/baseline 0.60-0.69 for all five models; 0.75 leaves room for BLAS noise.
    # without the EMA: over 108 steps its average lags the weights, and egnn's EMA weights scored 0.80 of
    # the baseline against 0.61 for its last weights (2026-12-02); what is tested here is the model
    m = train(TrainConfig(model=name, preset="tiny", dataset=dataset, run=f"file://{tmp_path}/run", epochs=12,
                          batch_size=8, lr=3e-3, heartbeat_s=30, split="kfold:4:0", ema=0.0), log=lambda *_: None)
    assert m["baseline_mae"] > 300  # the task is not trivial: layers vary a lot between samples
    assert m["val_mae"] < 0.75 * m["baseline_mae"], (m["val_mae"], m["baseline_mae"])
    first = m["history"][0]["val_mae"]
    assert m["val_mae"] < 0.7 * first  # it improved over training, not just started lucky
    assert set(m["val_mae_per_family"]) == {"FlatVel_A", "CurveVel_A"}
