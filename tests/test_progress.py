"""Heartbeats of any gwi command, store-URL outputs, and idempotent synth."""

from __future__ import annotations

import json

import pytest

from gwi import progress
from gwi.cli import main
from gwi.data.synth import synthesize
from gwi.store import open_store, staged_input, staged_output


def read(url):
    head, _, key = url.rpartition("/")
    return json.loads(open_store(head).get_bytes(key))


def test_a_launched_command_beats_from_the_start_and_records_how_it_ended(tmp_path, monkeypatch, capsys):
    url = f"file://{tmp_path}/s/runs/x/attempts/1/progress.json"
    monkeypatch.setenv("GWI_HEARTBEAT", url)
    monkeypatch.setenv("GWI_ATTEMPT", "spec.x.1")
    monkeypatch.setenv("GWI_HEARTBEAT_S", "0.05")
    synthesize(["FlatVel_A"], 2, f"file://{tmp_path}/s", "d", progress=False, backend="deepwave")
    assert main(["data", "info", f"file://{tmp_path}/s/datasets/d"]) == 0
    p = read(url)
    assert (p["state"], p["attempt"], p["command"]) == ("succeeded", "spec.x.1", "data info")
    assert p["beat"] >= 2 and p["pid"] > 0 and p["final"] is True and p["progress_age_s"] >= 0
    assert main(["data", "info", f"file://{tmp_path}/s/datasets/nope"]) == 1
    p = read(url)
    assert p["state"] == "failed" and "no such object" in p["error"]
    assert "gwi: error:" in capsys.readouterr().err


def test_heartbeat_thread_keeps_beating_and_survives_a_failing_store(tmp_path):
    class Flaky:
        def __init__(self):
            self.n, self.data = 0, None

        def put_bytes(self, key, data):
            self.n += 1
            if self.n == 2:
                raise OSError("network blip")
            self.data = data

    store = Flaky()
    hb = progress.Heartbeat([(store, "progress.json")], 0.02, {"state": "running"})
    hb.start()
    import time

    time.sleep(0.2)
    hb.finish("succeeded", step=5)
    assert hb.errors == 1 and store.n >= 4
    assert json.loads(store.data)["state"] == "succeeded" and json.loads(store.data)["step"] == 5


def test_reported_counts_are_progress_and_time_a_step(tmp_path, monkeypatch):
    """synth and predict report counts through progress.update: each is an advance; the beat says how
    long ago the last one was and, after a few, how long one takes."""
    import time

    url = f"file://{tmp_path}/attempts/1/progress.json"
    monkeypatch.setenv("GWI_HEARTBEAT", url)
    monkeypatch.setenv("GWI_HEARTBEAT_S", "30")  # no periodic beat: this test writes them
    hb = progress.start_process_heartbeat("data synth")
    try:
        progress.phase("pulled")
        for n in range(1, 6):
            time.sleep(0.05)
            progress.update(state="running", done=n, total=5)
        time.sleep(0.2)
        hb.beat()
        p = read(url)
        assert (p["progress_seq"], p["done"], p["phase"]) == (6, 5, "pulled")
        assert 0.04 <= p["step_time_s"] < 0.2 and 0.2 <= p["progress_age_s"] < 2
    finally:
        progress.end_process_heartbeat("succeeded")
    p = read(url)
    assert p["final"] is True and p["state"] == "succeeded" and p["progress_seq"] == 6
    assert hb.beat() is False and read(url) == p  # nothing after the final beat


def test_staged_output_uploads_the_file_and_its_sidecars_only_on_success(tmp_path):
    url = f"file://{tmp_path}/s/runs/p/submission.csv"
    with staged_output(url) as local:
        open(local, "w").write("a,b\n")
        open(local + ".oids.json", "w").write("[]")
    assert open_store(f"file://{tmp_path}/s/runs/p").list() == ["submission.csv", "submission.csv.oids.json"]
    with pytest.raises(RuntimeError):
        with staged_output(f"file://{tmp_path}/s/runs/q/out.csv") as local:
            open(local, "w").write("partial")
            raise RuntimeError("prediction failed")
    assert not (tmp_path / "s/runs/q").exists()
    with staged_output(str(tmp_path / "plain.csv")) as local:  # a plain path is used as it is
        assert local == str(tmp_path / "plain.csv")
    with staged_input(url) as local:
        assert open(local).read() == "a,b\n"


def test_synth_exist_ok_reuses_the_same_dataset_and_refuses_a_different_one(tmp_path):
    out = f"file://{tmp_path}/s"
    m = synthesize(["FlatVel_A"], 2, out, "d", seed=1, progress=False, backend="deepwave")
    again = synthesize(["FlatVel_A"], 2, out, "d", seed=1, progress=False, exist_ok=True, backend="deepwave")
    assert again["build"] == m["build"]
    with pytest.raises(ValueError, match=r"dataset d exists in .* with other settings \(seed: 1 there, 2 asked\); "
                                         r"use --overwrite or another --name"):
        synthesize(["FlatVel_A"], 2, out, "d", seed=2, progress=False, exist_ok=True, backend="deepwave")
