"""Training's curves: TensorBoard event files in the run (read back with tensorboardX's reader of the
same format), curves.png, ``gwi runs list`` and ``gwi runs compare``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gwi.config import TrainConfig
from gwi.data.synth import synthesize
from gwi.training import train


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("track")
    store = f"file://{root}/store"
    synthesize(["FlatVel_A", "CurveVel_A"], 8, store, "d", seed=3, batch_size=16, progress=False, backend="deepwave")
    for name, lr in (("a", 2e-3), ("b", 1e-4)):
        train(TrainConfig(model="inversionnet", preset="tiny", dataset=f"{store}/datasets/d", run=f"{store}/runs/{name}",
                          epochs=3, batch_size=4, lr=lr, log_every=1, heartbeat_s=30, split="kfold:4:0"),
              log=lambda *_: None)
    return {"root": root, "store": store}


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboardX.event_file_writer import event_pb2  # the protobuf the files are made of
    import struct

    out: dict[str, list] = {}
    for f in sorted(folder.glob("events.out.tfevents.*")):
        data = f.read_bytes()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            ev = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in ev.summary.value:
                out.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return out


def test_event_files_and_curves_land_in_the_run(runs):
    run = runs["root"] / "store" / "runs" / "a"
    got = scalars(run / "tensorboard")
    assert {"train/loss", "train/lr", "val/mae", "val/mae_FlatVel_A", "val/mae_CurveVel_A"} <= set(got)
    steps = [s for s, _ in got["train/loss"]]
    assert steps == sorted(steps) and len(steps) >= 9  # log_every=1: every step of 3 epochs
    assert len(got["val/mae"]) == 3 and all(400 < v < 3000 for _, v in got["val/mae"])
    png = run / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_runs_list_and_compare(runs, tmp_path):
    gwi = [sys.executable, "-m", "gwi", "runs"]
    r = subprocess.run([*gwi, "list", runs["store"]], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["run", "model", "data"]
    assert any(ln.startswith(f"{runs['store']}/runs/a ") and "inversionnet:tiny" in ln and "FlatVel_A" in ln
               for ln in lines), r.stdout
    plot = tmp_path / "both.png"
    r = subprocess.run([*gwi, "compare", f"{runs['store']}/runs/a", f"{runs['store']}/runs/b", "--plot", str(plot)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "curves of 2 runs" in r.stdout and plot.stat().st_size > 10_000, r.stderr
    r = subprocess.run([*gwi, "compare", f"{runs['store']}/runs/none"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "no metrics.json" in r.stderr and "runs/none" in r.stderr


def test_mlflow_gets_the_scalars_and_the_settings_when_its_uri_is_set(tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    store = f"file://{tmp_path}/store"
    synthesize(["FlatVel_A"], 8, store, "d", seed=4, batch_size=8, progress=False, backend="deepwave")
    # a URI MLflow refuses (its file store needs an opt-in since 3.x) costs the MLflow numbers, not the run
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    train(TrainConfig(model="inversionnet", preset="tiny", dataset=f"{store}/datasets/d", run=f"{store}/runs/refused",
                      epochs=1, batch_size=4, heartbeat_s=30, split="kfold:4:0"), log=lambda *_: None)
    assert "cannot log to MLflow" in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    train(TrainConfig(model="inversionnet", preset="tiny", dataset=f"{store}/datasets/d", run=f"{store}/runs/m",
                      epochs=2, batch_size=4, log_every=1, heartbeat_s=30, split="kfold:4:0"), log=lambda *_: None)
    client = MlflowClient(uri)
    found = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(found) == 1
    r = found[0]
    assert r.info.status == "FINISHED" and r.info.run_name == "inversionnet:tiny"
    assert r.data.params["model"] == "inversionnet" and r.data.params["epochs"] == "2"
    assert len(client.get_metric_history(r.info.run_id, "val.mae")) == 2
    assert {"train.loss", "train.lr", "val.mae_FlatVel_A"} <= set(r.data.metrics)
