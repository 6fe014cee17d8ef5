import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gwi.config import TrainConfig
from gwi.data.prep import prep_test
from gwi.data.synth import synthesize, velocity_batch
from gwi.physics import simulate
from gwi.errors import DataError
from gwi.inference import flip_seismic, predict_batch
from gwi.predict import COLUMNS, HEADER, check_submission, predict
from gwi.runs import load_model
from gwi.training import train

GWI = shutil.which("gwi", path=str(Path(sys.executable).parent)) or "gwi"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny InversionNet trained a few steps, and a test folder of 6 modelled samples."""
    root = tmp_path_factory.mktemp("pred")
    synthesize(["FlatVel_A"], 10, f"file://{root}/s", "d", seed=2, batch_size=10, progress=False, backend="deepwave")
    train(TrainConfig(model="inversionnet", preset="tiny", dataset=f"file://{root}/s/datasets/d",
                      run=f"file://{root}/s/runs/r", epochs=2, batch_size=4, heartbeat_s=30), log=lambda *_: None)
    test = root / "test"
    test.mkdir()
    v = velocity_batch("FlatVel_A", 77, 0, 6)
    x = simulate(v, "deepwave").numpy()
    oids = ["f00d", "000a1", "c0ffee", "7b", "aa11", "0x9"]
    for o, xi in zip(oids, x):
        np.save(test / f"{o}.npy", xi)
    return {"run": f"file://{root}/s/runs/r", "test": test, "oids": sorted(oids), "x": dict(zip(oids, x)), "root": root,
            "v": dict(zip(oids, v))}


def read_csv(p):
    with open(p, newline="") as f:
        return list(csv.reader(f))


def test_submission_format_is_exact(trained, tmp_path):
    out = tmp_path / "sub.csv"
    r = predict([trained["run"]], str(trained["test"]), str(out), progress=False, log=lambda *_: None)
    assert r["files"] == 6 and r["rows"] == 420 and r["bad"] == []
    rows = read_csv(out)
    assert ",".join(rows[0]) == HEADER
    assert rows[0][:3] == ["oid_ypos", "x_1", "x_3"] and rows[0][-1] == "x_69" and len(rows[0]) == 36
    ids = [r[0] for r in rows[1:]]
    assert ids == [f"{o}_y_{y}" for o in trained["oids"] for y in range(70)]
    vals = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    assert vals.shape == (420, 35) and vals.min() >= 1500 and vals.max() <= 4500
    assert check_submission(out, str(trained["test"])) == ({"rows": 420, "oids": 6}, [])
    assert not list(tmp_path.glob("*.partial"))


def test_values_are_the_models_prediction_on_odd_columns(trained, tmp_path):
    out = tmp_path / "sub.csv"
    predict([trained["run"]], str(trained["test"]), str(out), progress=False, log=lambda *_: None)
    m = load_model(trained["run"], torch.device("cpu"))
    oid = trained["oids"][2]
    v = predict_batch([m], [1.0], trained["x"][oid][None], torch.device("cpu"), "fp32")[0]  # (70, 70)
    rows = [r for r in read_csv(out)[1:] if r[0].startswith(f"{oid}_y_")]
    got = np.array([[float(x) for x in r[1:]] for r in rows])
    np.testing.assert_allclose(got, v[:, COLUMNS], atol=0.006)  # written with 2 decimals


def test_bf16_agrees_with_fp32_within_tolerance(trained):
    """CPU has no fp16 kernels for these models; bf16 (8-bit mantissa) is the coarser of the two
    half formats, so its agreement bounds the GPU's fp16 case too. Stated tolerance: 30 m/s max."""
    m = load_model(trained["run"], torch.device("cpu"))
    x = np.stack([trained["x"][o] for o in trained["oids"]])
    a = predict_batch([m], [1.0], x, torch.device("cpu"), "fp32")
    b = predict_batch([m], [1.0], x, torch.device("cpu"), "bf16")
    assert a.dtype == np.float32 and b.dtype == np.float32
    assert np.abs(a - b).max() < 30 and np.abs(a - b).mean() < 5


def test_flip_tta_averages_the_mirrored_prediction(trained):
    m = load_model(trained["run"], torch.device("cpu"))
    x = np.stack([trained["x"][o] for o in trained["oids"][:2]])
    xt = torch.from_numpy(x)
    assert torch.equal(flip_seismic(flip_seismic(xt)), xt)
    assert torch.equal(flip_seismic(xt)[:, 0, :, 0], xt[:, 4, :, 69])  # source 0 <-> 4, receiver 0 <-> 69
    plain = predict_batch([m], [1.0], x, torch.device("cpu"), "fp32")
    mirrored = predict_batch([m], [1.0], x[:, ::-1, :, ::-1].copy(), torch.device("cpu"), "fp32")[:, :, ::-1]
    tta = predict_batch([m], [1.0], x, torch.device("cpu"), "fp32", tta=True)
    np.testing.assert_allclose(tta, (plain + mirrored) / 2, atol=1e-3)


def test_bad_test_file_stops_with_its_name_or_is_filled(trained, tmp_path):
    test = tmp_path / "test"
    shutil.copytree(trained["test"], test)
    np.save(test / "broken.npy", np.zeros((5, 999, 70), np.float32))
    out = tmp_path / "sub.csv"
    with pytest.raises(DataError, match=r"broken\.npy: shape \(5, 999, 70\), expected \(5, 1000, 70\)"):
        predict([trained["run"]], str(test), str(out), progress=False, log=lambda *_: None)
    assert not out.exists() and not list(tmp_path.glob("*.partial"))
    logs = []
    r = predict([trained["run"]], str(test), str(out), skip_bad=True, progress=False, log=logs.append)
    assert r["bad"] == ["broken"] and any("broken.npy" in m and "training mean" in m for m in logs)
    rows = [row for row in read_csv(out)[1:] if row[0].startswith("broken_y_")]
    mean = json.loads(Path(trained["root"], "s/datasets/d/manifest.json").read_text())["normalisation"]["velocity"]["mean"]
    assert len(rows) == 70 and all(abs(float(v) - mean) < 0.01 for v in rows[5][1:])


def test_prepared_test_dataset_gives_the_same_submission(trained, tmp_path):
    prep_test(trained["test"], f"file://{tmp_path}/s", "t", progress=False)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    predict([trained["run"]], str(trained["test"]), str(a), progress=False, log=lambda *_: None)
    predict([trained["run"]], f"file://{tmp_path}/s/datasets/t", str(b), progress=False, log=lambda *_: None)
    ra, rb = read_csv(a), read_csv(b)
    assert [r[0] for r in ra] == [r[0] for r in rb]
    va = np.array([[float(v) for v in r[1:]] for r in ra[1:]])
    vb = np.array([[float(v) for v in r[1:]] for r in rb[1:]])
    assert np.abs(va - vb).max() < 5  # the dataset holds float16 seismic


def write_rows(p, header=HEADER, rows=None):
    with open(p, "w") as f:
        f.write(header + "\n")
        for r in rows:
            f.write(r + "\n")


def good_rows(oid="abc"):
    return [f"{oid}_y_{y}," + ",".join(["3000.0"] * 35) for y in range(70)]


def test_submission_check_says_exactly_what_is_wrong(tmp_path):
    p = tmp_path / "s.csv"
    write_rows(p, rows=good_rows("abc") + good_rows("def"))
    assert check_submission(p)[1] == []
    write_rows(p, header=HEADER.replace("x_3,", ""), rows=good_rows())
    assert any("line 1: header should be" in m for m in check_submission(p)[1])
    rows = good_rows()
    del rows[10]
    write_rows(p, rows=rows)
    assert check_submission(p)[1] == ["oid abc: 69 rows, expected 70 (missing [10])"]
    rows = good_rows()
    rows[3] = rows[2]
    write_rows(p, rows=rows)
    assert "line 5: duplicate id 'abc_y_2'" in check_submission(p)[1]
    rows = good_rows()
    rows[7] = rows[7].replace("3000.0", "9000.0", 1)
    write_rows(p, rows=rows)
    assert check_submission(p)[1] == ["line 9: x_1 = 9000.0 in 'abc_y_7' is outside 1500-4500 m/s"]
    rows = good_rows()
    rows[0] = rows[0].replace("3000.0", "fast", 1)
    write_rows(p, rows=rows)
    assert check_submission(p)[1] == ["line 2: non-numeric value in 'abc_y_0'"]
    rows = good_rows()
    rows[1] = rows[1] + ",1.0"
    write_rows(p, rows=rows)
    assert check_submission(p)[1][0] == "line 3: 37 fields, expected 36"
    test = tmp_path / "test"
    test.mkdir()
    for o in ("abc", "zzz"):
        np.save(test / f"{o}.npy", np.zeros((5, 1000, 70), np.float32))
    write_rows(p, rows=good_rows("abc") + good_rows("extra"))
    assert check_submission(p, str(test))[1] == ["oid zzz: in the test folder but not in the submission",
                                                 "oid extra: in the submission but not in the test folder"]


def test_misfit_ranks_files_by_how_well_their_prediction_explains_the_recording(trained, tmp_path):
    """``--misfit`` re-simulates every prediction: one row per file, each the misfit refine would start
    from; the true map explains its own recording (misfit 0) and a barely trained model's maps do not."""
    from gwi.physics import backend
    from gwi.physics.misfit import file_misfit

    out, mis = tmp_path / "sub.csv", tmp_path / "misfit.csv"
    predict([trained["run"]], str(trained["test"]), str(out), misfit=str(mis), misfit_backend="deepwave",
            progress=False, log=lambda *_: None)
    rows = read_csv(mis)
    assert rows[0] == ["oid", "misfit"] and [r[0] for r in rows[1:]] == trained["oids"]
    got = {o: float(m) for o, m in rows[1:]}
    truth = file_misfit(backend("deepwave"), torch.from_numpy(np.stack([trained["v"][o] for o in trained["oids"]])),
                        torch.from_numpy(np.stack([trained["x"][o] for o in trained["oids"]])))
    assert float(truth.max()) < 1e-6 and min(got.values()) > 1e-3
    assert not list(tmp_path.glob("*.partial"))


def test_cli_predict_and_check(trained, tmp_path):
    out = tmp_path / "submission.csv"
    r = subprocess.run([GWI, "predict", "--checkpoint", trained["run"], "--test", str(trained["test"]), "--out", str(out),
                        "--tta", "flip"], capture_output=True, text=True, timeout=300, env=os.environ)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "6 test files, 420 rows" in r.stdout and "on cpu in fp32" in r.stderr
    r = subprocess.run([GWI, "submission", "check", str(out), "--test", str(trained["test"])], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "valid (6 test files, 420 rows)" in r.stdout
    out.write_text(out.read_text().replace("_y_69", "_y_70", 1))
    r = subprocess.run([GWI, "submission", "check", str(out)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "row 70 out of range" in r.stderr
    r = subprocess.run([GWI, "predict", "--checkpoint", str(tmp_path / "none.pt"), "--test", str(trained["test"])],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "none.pt: no such file" in r.stderr


def test_predict_shards_merge_into_the_whole_submission(trained, tmp_path):
    """``--shard i/N`` predicts an interleaved share of the files; ``gwi merge`` of the shares is the
    submission of all files, row for row; a missing share is named."""
    whole = tmp_path / "whole.csv"
    predict([trained["run"]], str(trained["test"]), str(whole), progress=False, log=lambda *_: None)
    parts = []
    for i in (1, 2, 3):
        parts.append(tmp_path / f"part{i}.csv")
        r = predict([trained["run"]], str(trained["test"]), str(parts[-1]), shard=(i, 3), progress=False,
                    log=lambda *_: None)
        assert r["files"] == 2
    shares = [{row[0].rpartition("_y_")[0] for row in read_csv(p)[1:]} for p in parts]
    assert [len(s) for s in shares] == [2, 2, 2] and set().union(*shares) == set(trained["oids"])
    merged = tmp_path / "merged.csv"
    r = subprocess.run([GWI, "merge", *map(str, parts), "--test", str(trained["test"]), "--out", str(merged)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(read_csv(merged)) == sorted(read_csv(whole))
    r = subprocess.run([GWI, "merge", *map(str, parts[:2]), "--test", str(trained["test"]), "--out", str(merged)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "2 file(s) in no part: " + ", ".join(sorted(shares[2])) in r.stderr, r.stderr
    r = subprocess.run([GWI, "predict", "--checkpoint", trained["run"], "--test", str(trained["test"]),
                        "--shard", "3/2"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "shard: expected i/N with 1 <= i <= N (e.g. 2/4), got '3/2'" in r.stderr
