"""The training recipe that won the competition, option by option: flip augmentation, EMA with a
warmed-up decay, losses, Muon, schedules, specialists on some families, fine-tuning from another run
(--init-from) and the DataLoader (workers do not change what is learned)."""

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from gwi.config import TrainConfig
from gwi.data.shards import ShardedDataset
from gwi.data.synth import synthesize
from gwi.errors import GwiError
from gwi.inference import flip_seismic, flip_velocity
from gwi.training import train
from gwi.training.data import flip_mask
from gwi.training.optim import EMA, LOSS_FNS, Schedule


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    synthesize(["FlatVel_A", "CurveVel_A"], 12, f"file://{root}", "r", seed=5, batch_size=12, progress=False, backend="deepwave")
    return f"file://{root}/datasets/r"


def cfg(dataset, run, **kw):
    base = {"model": "inversionnet", "preset": "tiny", "dataset": dataset, "run": run, "epochs": 2, "batch_size": 4,
            "lr": 2e-3, "heartbeat_s": 5, "seed": 0}
    return TrainConfig(**{**base, **kw})


def quiet(*_):
    pass


def last_checkpoint(run_dir) -> dict:
    ptr = json.loads((run_dir / "checkpoints" / "latest.json").read_text())
    return torch.load(run_dir / ptr["latest"]["path"], weights_only=True)


# -- flip augmentation -------------------------------------------------------------------------------

def test_flip_mirrors_the_map_and_reverses_receivers_and_sources(dataset):
    """The reader flips in its copy (ShardedDataset.batch(flip=...)): what it reads is flip_seismic's
    recording and flip_velocity's map; which samples flip is a pure function of (seed, step)."""
    ds = ShardedDataset(dataset.removeprefix("file://"))
    x, y = ds.batch(np.arange(len(ds)), np.float16)  # (24, 5, 1000, 70), (24, 1, 70, 70)
    idx = np.array([0, 3, 9, 11])
    flips = np.array([True, False, True, False])
    fx, fy = ds.batch(idx, np.float16, flip=flips)
    px, py = ds.batch(idx, np.float16)
    assert np.array_equal(px, x[idx]) and np.array_equal(py, y[idx])
    assert np.array_equal(fx[0, 0, :, 0], x[0, 4, :, 69]) and np.array_equal(fx[2, 2, :, 10], x[9, 2, :, 59])
    assert np.array_equal(fy[0, ..., 0], y[0, ..., 69]) and np.array_equal(fy[0, :, 5], y[0, :, 5, ::-1])  # depth kept
    assert torch.equal(torch.from_numpy(fx[flips]), flip_seismic(torch.from_numpy(px[flips])))
    assert torch.equal(torch.from_numpy(fy[flips]), flip_velocity(torch.from_numpy(py[flips])))
    assert np.array_equal(fx[~flips], px[~flips]) and np.array_equal(fy[~flips], py[~flips])
    with pytest.raises(ValueError, match=r"flip: expected one flag per sample, shape \(4,\), got shape \(3,\)"):
        ds.batch(idx, flip=flips[:3])
    # p=0.5: some flipped, some not; a pure function of (seed, step); p=0 and p=1 flip none and all
    m = flip_mask(64, 0.5, step=3, seed=1)
    assert 16 < int(m.sum()) < 48 and np.array_equal(flip_mask(64, 0.5, 3, 1), m)
    assert not np.array_equal(flip_mask(64, 0.5, 4, 1), m) and not np.array_equal(flip_mask(64, 0.5, 3, 2), m)
    assert not flip_mask(8, 0.0, 0, 0).any() and flip_mask(8, 1.0, 0, 0).all()


def test_flip_of_a_simulated_recording_is_the_recording_of_the_mirrored_map_but_for_the_middle_shot():
    """DESIGN.md §6: sources at 0, 17, 34, 52, 69 mirror to 69, 52, 35, 17, 0. Simulated on an asymmetric
    map: the four outer shots of the flipped recording are those of the mirrored map; the middle one is
    the recording of a source one cell (10 m) away, whose shifted direct wave makes it far from exact
    (~55% relative L2 on this map) — label noise on one shot in five, why the 3rd place simulated six."""
    from gwi.data.synth import velocity_batch
    from gwi.physics import simulate

    v = velocity_batch("CurveFault_A", seed=2, start=0, count=1).astype(np.float32)  # (1, 70, 70)
    with torch.no_grad():
        fl = flip_seismic(simulate(v, "deepwave"))  # (1, 5, 1000, 70)
        rec_m = simulate(np.ascontiguousarray(v[:, :, ::-1]), "deepwave")
    err = [float((fl[:, k] - rec_m[:, k]).norm() / rec_m[:, k].norm()) for k in range(5)]
    assert max(err[:2] + err[3:]) < 1e-3 and err[2] > 0.1, err


# -- EMA, losses, schedules --------------------------------------------------------------------------

def test_normalising_a_float16_batch_by_table_gives_the_formulas_numbers():
    """The table of every float16 pattern (the loop's fast path) against OpenFWI's formula in float64,
    for every one of the 65,536 values and a non-contiguous batch."""
    from gwi.data.shards import log_transform
    from gwi.inference import Normalizer

    n = Normalizer(-7.25, 8.5)
    every = torch.arange(1 << 16, dtype=torch.int32).to(torch.uint16).view(torch.float16)
    got = n.seismic(every.reshape(256, 256)).reshape(-1)
    want = (log_transform(every.double()) - n.seis_min) / (n.seis_max - n.seis_min) * 2 - 1
    finite = torch.isfinite(every)
    assert got.dtype == torch.float32 and torch.isnan(got[torch.isnan(every)]).all()
    assert torch.allclose(got[finite].double(), want[finite], rtol=1e-6, atol=1e-6)
    x = torch.randn(3, 5, 20, 7).mul(40).half()[:, :, ::2]
    assert torch.equal(n.seismic(x), n.seismic(x.float()))


def test_ema_decay_warms_up_then_holds():
    m = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(0.0)
    ema = EMA(m, 0.999)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema.update(m)  # decay min(0.999, 2/11): the average moves most of the way at first
    assert math.isclose(float(ema.state["weight"]), 1 - 2 / 11, rel_tol=1e-6)
    ema.updates = 10_000
    before = float(ema.state["weight"])
    ema.update(m)
    assert math.isclose(float(ema.state["weight"]), before + (1 - before) * 0.001, rel_tol=1e-6)


def test_losses_and_schedules():
    p, t = torch.tensor([0.0, 0.5]), torch.tensor([0.01, 0.0])
    assert math.isclose(float(LOSS_FNS["l1"](p, t)), 0.255, rel_tol=1e-6)
    # smooth L1 (beta 0.02): quadratic for the small error, L1 minus beta/2 for the large one
    assert math.isclose(float(LOSS_FNS["smooth_l1"](p, t)), (0.5 * 0.01 ** 2 / 0.02 + 0.5 - 0.01) / 2, rel_tol=1e-6)
    cos, const = Schedule(100, 10, "cosine"), Schedule(100, 10, "constant")
    assert cos(0) == const(0) == 0.1 and cos(9) == const(9) == 1.0
    assert const(99) == 1.0 and cos(99) < 0.01 and math.isclose(cos(55), 0.5, abs_tol=1e-9)


def test_recipe_options_are_validated(dataset, tmp_path):
    for kw, msg in (({"flip": 1.5}, "flip: expected a probability in [0, 1], got 1.5"),
                    ({"optimizer": "sgd"}, "optimizer: expected one of adamw, muon, got 'sgd'"),
                    ({"loss": "huber"}, "loss: expected one of l1, l1+l2, l2, smooth_l1, got 'huber'"),
                    ({"init_partial": True}, "init_partial: expected init_from to be set"),
                    ({"families": "FlatVel_A"}, "families: expected a list of family names")):
        with pytest.raises(ValueError, match=re.escape(msg)):
            cfg(dataset, f"file://{tmp_path}/x", **kw).validate()


# -- muon ----------------------------------------------------------------------------------------------

def test_muon_trains_the_matrices_and_resumes_exactly(dataset, tmp_path):
    kw = {"model": "vit_fwi", "optimizer": "muon", "checkpoint_every": 2, "epochs": 1}
    straight = train(cfg(dataset, f"file://{tmp_path}/a", **kw), log=quiet)
    ck = last_checkpoint(tmp_path / "a")
    assert len(ck["optimizer"]["optimizers"]) == 2  # Muon (2-D matrices) and AdamW (the rest)
    assert math.isfinite(straight["val_mae"])
    with pytest.raises(RuntimeError, match="injected fault at step 3"):
        train(cfg(dataset, f"file://{tmp_path}/b", fault_at_step=3, **kw), log=quiet)
    train(cfg(dataset, f"file://{tmp_path}/b", **kw), log=quiet)
    a, b = ck, last_checkpoint(tmp_path / "b")
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    with pytest.raises(GwiError, match="optimizer muon: model inversionnet has no 2-D weight matrices"):
        train(cfg(dataset, f"file://{tmp_path}/c", optimizer="muon"), log=quiet)


# -- specialists ---------------------------------------------------------------------------------------

def test_families_make_a_specialist(dataset, tmp_path):
    m = train(cfg(dataset, f"file://{tmp_path}/s", families=["CurveVel_A"], epochs=1), log=quiet)
    assert set(m["val_mae_per_family"]) == {"CurveVel_A"}
    with pytest.raises(GwiError, match="families: Nope_Z not in dataset .*; expected some of CurveVel_A, FlatVel_A"):
        train(cfg(dataset, f"file://{tmp_path}/t", families=["Nope_Z"]), log=quiet)


# -- fine-tuning ---------------------------------------------------------------------------------------

def test_init_from_fine_tunes_a_vit_run_into_a_new_run(dataset, tmp_path):
    """`gwi train --init-from RUN`: the new run starts from the source's EMA weights and records where
    they came from; the source run is left untouched."""
    src = f"file://{tmp_path}/src"
    train(cfg(dataset, src, model="vit_fwi", epochs=1), log=quiet)
    before = (tmp_path / "src" / "checkpoints" / "latest.json").read_bytes()
    source_ema = last_checkpoint(tmp_path / "src")["ema"]
    r = subprocess.run([sys.executable, "-m", "gwi", "train", "--model", "vit_fwi", "--preset", "tiny",
                        "--dataset", dataset, "--run", f"file://{tmp_path}/ft", "--init-from", src,
                        "--lr", "1e-12", "--max-steps", "1", "--ema", "0", "--flip", "0", "--heartbeat-s", "5"],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"initialised from the vit_fwi (tiny) weights from {src}" in r.stdout
    ft = last_checkpoint(tmp_path / "ft")
    assert ft["initialised_from"]["source"].startswith(src) and ft["initialised_from"]["ema"]
    for k, v in ft["state_dict"].items():  # one step at lr 1e-12 moved nothing measurably
        if v.dtype.is_floating_point and "running" not in k:
            torch.testing.assert_close(v, source_ema[k], atol=1e-6, rtol=0)
    assert (tmp_path / "src" / "checkpoints" / "latest.json").read_bytes() == before


def test_init_from_a_model_that_does_not_fit_lists_what_is_wrong(dataset, tmp_path):
    src = f"file://{tmp_path}/tiny"
    train(cfg(dataset, src, max_steps=1, epochs=1), log=quiet)
    with pytest.raises(GwiError) as e:
        train(cfg(dataset, f"file://{tmp_path}/big", preset="default", init_from=src, max_steps=1), log=quiet)
    msg = str(e.value)
    assert "init_from: the inversionnet (tiny) weights from" in msg and "do not fit inversionnet (default)" in msg
    assert "mis-shaped (checkpoint -> model)" in msg and "encoder.0.0.weight (8, 5, 7, 1) -> (32, 5, 7, 1)" in msg
    assert "--init-partial" in msg
    logs = []
    m = train(cfg(dataset, f"file://{tmp_path}/big", preset="default", init_from=src, init_partial=True,
                  max_steps=1, batch_size=2), log=logs.append)
    loaded = m["initialised_from"]
    assert 0 < loaded["tensors"] < loaded["of"]
    assert any(f"{loaded['tensors']} of {loaded['of']} tensors; " in x and "left as initialised" in x for x in logs)


# -- the DataLoader ------------------------------------------------------------------------------------

def test_worker_processes_do_not_change_what_is_learned(dataset, tmp_path):
    a = train(cfg(dataset, f"file://{tmp_path}/w0", workers=0), log=quiet)
    b = train(cfg(dataset, f"file://{tmp_path}/w2", workers=2), log=quiet)
    assert a["rank_param_sha256"] == b["rank_param_sha256"]
    assert a["loop_samples"] == b["loop_samples"] == 8 * 4 and a["loop_s"] > 0
    ck = last_checkpoint(tmp_path / "w2")
    assert ck["ema_updates"] == 8
