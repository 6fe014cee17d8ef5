"""``gwi data pseudo`` (issue 26): predicted maps of the test set, re-simulated into a labelled dataset.

Four test files, two of whose predictions are unusable (a value beyond 4500 m/s, a NaN): the dataset
holds the other two, with the backend's own recordings of them; ``--flip`` adds each mirrored;
``--shard`` parts merged equal the whole; a malformed CSV is one error naming the file and line; and
``gwi train`` mixes the result with another dataset. The forward model is deepwave (openfwi took
~30 s a map on this 2-core CPU under load, deepwave ~2 s)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gwi import physics
from gwi.cli import main
from gwi.data import folds
from gwi.data.pseudo import FAMILY, pseudo, sample_oids
from gwi.data.shards import DatasetWriter, ShardedDataset, load_manifest
from gwi.data.sync import pull
from gwi.errors import DataError
from gwi.inference import flip_seismic, flip_velocity
from gwi.predict import HEADER, read_submission, rows_csv
from gwi.runs import Run
from gwi.store import open_store

from .conftest import make_samples

OIDS = ["aa01", "bb02", "cc03", "dd04"]
KEPT = ["aa01", "cc03"]


def csv_text(oids: list[str], maps: np.ndarray) -> str:
    return HEADER + "\n" + rows_csv(oids, maps)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A test folder of four files and a submission for them: two good maps (one 0.5 m/s over 4500, within
    the tolerance), one with x_5 = 4700 m/s on line 82 (bb02, row 10), one with a NaN on line 212 (dd04)."""
    root = tmp_path_factory.mktemp("pseudo")
    test = root / "test"
    test.mkdir()
    for o in OIDS:
        np.save(test / f"{o}.npy", np.zeros((5, 1000, 70), np.float16))
    z, x = np.mgrid[0:70, 0:70].astype(np.float32)
    maps = np.stack([1800 + 25 * z + 4 * x, 2000 + 20 * z, 1700 + 30 * z - 2 * x, 3000 + 0 * z])  # (4, 70, 70)
    maps[2, 60:, 30:40] = 4500.5
    maps[1, 10, 5], maps[3, 0, 1] = 4700, np.nan
    csv = root / "sub.csv"
    csv.write_text(csv_text(OIDS, maps))
    # what read_submission makes of the good maps: the maps the dataset must hold (clipped)
    good = root / "good.csv"
    good.write_text(csv_text(KEPT, maps[[0, 2]].clip(1500, 4500)))
    read = read_submission(good)
    want = np.stack([read[o] for o in KEPT]).clip(1500, 4500)  # (2, 70, 70)
    store = f"file://{root}/store"
    run = Run(f"{store}/runs/day/predict")  # a predict run's folder: its submission.csv
    open_store(run.url).put_file(csv, run.submission_url.rsplit("/", 1)[1])
    return {"root": root, "test": str(test), "csv": str(csv), "store": store, "run": run.url, "maps": want}


@pytest.fixture(scope="module")
def plain(inputs):
    """`gwi data pseudo` from the CSV, without flip; its dataset and what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["data", "pseudo", "--predictions", inputs["csv"], "--test", inputs["test"], "--backend",
                   "deepwave", "--device", "cpu", "--out", inputs["store"], "--name", "plain"])
    assert rc == 0
    return ShardedDataset(pull(f"{inputs['store']}/datasets/plain", progress=False)), out.getvalue()


@pytest.fixture(scope="module")
def flipped(inputs):
    """The same from the predict run's folder, with --flip."""
    pseudo(inputs["run"], inputs["test"], inputs["store"], "flipped", backend="deepwave", device="cpu", flip=True,
           progress=False)
    return f"{inputs['store']}/datasets/flipped"


def test_good_maps_are_the_backends_own_recordings_and_bad_ones_are_listed_not_written(inputs, plain):
    ds, printed = plain
    m = ds.manifest
    assert m["num_samples"] == 2 and list(m["families"]) == [FAMILY] and m["families"][FAMILY]["samples"] == 2
    assert m["families"][FAMILY]["velocity_max"] == 4500  # cc03's 4500.5 m/s, within the tolerance, clipped
    src = m["source"]
    assert (src["kind"], src["predictions"], src["test"], src["backend"], src["flip"], src["shard"]) == (
        "pseudo", inputs["csv"], inputs["test"], "deepwave", False, None)
    assert src["oids"] == KEPT and src["test_files"] == 4 and len(src["predictions_sha256"]) == 64
    assert src["skipped"] == {
        "bb02": "line 82: x_5 = 4700 m/s, expected a finite velocity in 1500-4500 m/s (tolerance 1)",
        "dd04": "line 212: x_1 = nan m/s, expected a finite velocity in 1500-4500 m/s (tolerance 1)"}
    assert "skipped 2 map(s), not written" in printed and "  bb02: line 82: x_5 = 4700 m/s" in printed
    assert "  dd04: line 212: x_1 = nan" in printed
    assert sample_oids(m) == [("aa01", False), ("cc03", False)]
    x, y = ds.batch([0, 1])
    # the maps are read_submission's (even columns from their neighbours), clipped; stored as float16
    np.testing.assert_allclose(y[:, 0], inputs["maps"], atol=2.0)
    with torch.no_grad():
        want = physics.backend("deepwave", device="cpu")(torch.from_numpy(inputs["maps"])).numpy()  # (2, 5, 1000, 70)
    assert np.abs(x - want).max() <= 1e-3 * np.abs(want).max()


def test_flip_adds_each_map_mirrored_after_it(inputs, plain, flipped):
    ds = ShardedDataset(pull(flipped, progress=False))
    assert ds.manifest["num_samples"] == 4 and ds.manifest["source"]["flip"] is True
    assert ds.manifest["source"]["predictions"] == inputs["run"]
    assert ds.manifest["source"]["predictions_csv"] == inputs["run"] + "/submission.csv"
    assert sample_oids(ds.manifest) == [("aa01", False), ("aa01", True), ("cc03", False), ("cc03", True)]
    x, y = ds.batch(range(4))
    px, py = plain[0].batch([0, 1])
    np.testing.assert_array_equal(x[0::2], px)  # the same simulation as without --flip
    np.testing.assert_array_equal(y[0::2], py)
    np.testing.assert_array_equal(x[1::2], flip_seismic(torch.from_numpy(px)).numpy())
    np.testing.assert_array_equal(y[1::2], flip_velocity(torch.from_numpy(py)).numpy())


def test_shards_merged_by_gwi_data_merge_equal_the_whole(inputs, flipped):
    for i in (1, 2):
        m = pseudo(inputs["run"], inputs["test"], inputs["store"], "parts", backend="deepwave", device="cpu",
                   flip=True, shard=(i, 2), progress=False)
        assert m["num_samples"] == 2 and m["source"]["shard"] == [i, 2]
    again = pseudo(inputs["run"], inputs["test"], inputs["store"], "parts", backend="deepwave", device="cpu",
                   flip=True, shard=(1, 2), exist_ok=True, progress=False)
    assert again["source"]["shard"] == [1, 2]  # a rerun finds its part made: no work
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["data", "merge", "--out", inputs["store"], "--name", "parts", "--parts", "2"]) == 0
    whole = ShardedDataset(pull(flipped, progress=False))
    parts = ShardedDataset(pull(f"{inputs['store']}/datasets/parts", progress=False))
    src = parts.manifest["source"]
    assert src["parts"] == 2 and "shard" not in src and src["skipped"] == whole.manifest["source"]["skipped"]
    at = {k: i for i, k in enumerate(sample_oids(whole.manifest))}
    keys = sample_oids(parts.manifest)
    assert sorted(keys) == sorted(at)
    for j, k in enumerate(keys):
        np.testing.assert_array_equal(parts[j][0], whole[at[k]][0])
        np.testing.assert_array_equal(parts[j][1], whole[at[k]][1])


def _edit(lines: list[str], how: str) -> list[str]:
    if how == "value":
        oid, _, rest = lines[4].split(",", 2)
        lines[4] = f"{oid},abc,{rest}"
    elif how == "fields":
        lines[6] = lines[6].rsplit(",", 1)[0]
    elif how == "row":
        del lines[8]
    elif how == "header":
        lines[0] = lines[0].rsplit(",", 1)[0]
    elif how == "twice":
        lines[9] = "aa01_y_0," + lines[9].split(",", 1)[1]
    elif how == "id":
        lines[4] = lines[4].replace("aa01_y_3", "aa01-y-3")
    elif how == "foreign":
        lines = [ln.replace("dd04_", "zz99_") for ln in lines]
    return lines


@pytest.mark.parametrize("how,error", [
    ("value", "line 5: x_1 of aa01_y_3: expected a number, got 'abc'"),
    ("fields", "line 7: expected 36 fields (oid_ypos, x_1 .. x_69), got 35"),
    ("row", "line 2: test file aa01 has 69 of 70 rows, expected all (missing aa01_y_7)"),
    ("header", "line 1: expected the header 'oid_ypos,x_1,x_3,...,x_69', got 'oid_ypos,x_1,"),
    ("twice", "line 10: id 'aa01_y_0' appears twice (test file aa01 from line 2)"),
    ("id", "line 5: expected an id <oid>_y_<row> with row 0..69, got 'aa01-y-3'"),
    ("foreign", "line 212: test file 'zz99' is not in "),
], ids=lambda v: v if " " not in v else "")
def test_a_malformed_csv_is_one_error_naming_file_and_line_and_writes_nothing(inputs, tmp_path, how, error):
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(_edit(Path(inputs["csv"]).read_text().splitlines(), how)) + "\n")
    with pytest.raises(DataError, match="^" + re.escape(f"{bad}, {error}")):
        pseudo(str(bad), inputs["test"], f"file://{tmp_path}/s", "bad", backend="deepwave", progress=False)
    assert not (tmp_path / "s" / "datasets" / "bad").exists()


def test_a_test_file_without_a_map_and_labelled_test_data_are_refused(inputs, plain, tmp_path):
    test = tmp_path / "test"
    shutil.copytree(inputs["test"], test)
    np.save(test / "ee05.npy", np.zeros((5, 1000, 70), np.float16))
    with pytest.raises(DataError, match=re.escape(f"{inputs['csv']}: no rows for 1 of the 5 test files of {test} "
                                                  "(ee05); expected a map of every file")):
        pseudo(inputs["csv"], str(test), f"file://{tmp_path}/s", "bad", backend="deepwave", progress=False)
    with pytest.raises(DataError, match="a labelled dataset; expected the test data"):
        pseudo(inputs["csv"], f"{inputs['store']}/datasets/plain", f"file://{tmp_path}/s", "bad", progress=False)


def test_gwi_train_mixes_the_pseudo_dataset_with_another(inputs, flipped, tmp_path):
    m = load_manifest(open_store(flipped))
    train, val = folds.kfold(m, 2, 0)
    assert sorted(train.tolist() + val.tolist()) == [0, 1, 2, 3]  # family "pseudo" splits like any other
    store = f"file://{tmp_path}/s"
    x, y = make_samples(np.random.default_rng(0), 10)
    with DatasetWriter(store, "a", source={"kind": "test"}) as w:
        w.add("FlatVel_A", x, y, src="test")
        w.finish()
    run = f"{store}/runs/mixed"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["train", "--model", "inversionnet", "--preset", "tiny", "--dataset", f"{store}/datasets/a",
                   "--dataset", f"{flipped}:0.5", "--run", run, "--max-steps", "2", "--batch-size", "2", "--ema", "0",
                   "--split", "kfold:2:0", "--device", "cpu"])
    assert rc == 0
    assert "mixing a x1 (5 of 5 samples per epoch), flipped x0.5 (1 of 2 samples per epoch)" in out.getvalue()
    metrics = json.loads(open_store(run).get_bytes("metrics.json"))
    assert metrics["steps"] == 2
    assert [(d["name"], d["weight"]) for d in metrics["datasets"]] == [("a", 1.0), ("flipped", 0.5)]
