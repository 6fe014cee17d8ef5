"""The Kaggle adapter through the official kaggle package against a fake Kaggle API on 127.0.0.1
that runs the pushed kernel; the store is S3 (moto), its credentials only in the secret store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from gwi.adapters.base import LaunchRequest, PlatformError, load_profiles
from gwi.adapters.kaggle import KaggleAdapter, _slug
from gwi.scheduler import Scheduler
from gwi.spec import load_spec
from gwi.store import open_store

from .conftest import run_until
from .fake_kaggle import KaggleState, serve

ACCESS, SECRET = "AKIAKAGGLETESTSECRET1", "s3cr3t-value-never-in-a-file"


@pytest.fixture
def kg(tmp_path, monkeypatch, s3, moto_server):
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", "kaggle-key-xyz")
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kcfg"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)  # moto takes any; distinctive values to search for
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    st = KaggleState(tmp_path / "kaggle", "alice", "kaggle-key-xyz", {
        "AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ENDPOINT_URL": moto_server,
        "AWS_DEFAULT_REGION": "us-east-1"})
    srv, url = serve(st)
    plat = tmp_path / "platforms"
    plat.mkdir()
    (plat / "kaggle.yaml").write_text(json.dumps({
        "adapter": "kaggle", "gpus": 1, "quota_hours_per_week": 30, "session_hours": 12, "capacity": 2,
        "credentials": ["KAGGLE_USERNAME", "KAGGLE_KEY"], "start_timeout_s": 120,
        "options": {"api_endpoint": url, "machine_shape": "NvidiaTeslaT4", "wheel_dataset": "alice/gwi-wheels",
                    "competitions": ["waveform-inversion"]}}))
    s = Scheduler(tmp_path / "home", profiles=load_profiles([plat]))
    yield {"st": st, "s": s, "store": s3, "tmp": tmp_path, "plat": plat}
    st.stop_all()
    s.close()
    srv.shutdown()


def submit(kg, body, name="kg"):
    p = kg["tmp"] / f"{name}.yaml"
    p.write_text(f"name: {name}\nstore: {kg['store']}\ndefaults: {{platforms: [kaggle], heartbeat_s: 1}}\njobs:\n" + body)
    kg["s"].submit(load_spec(p, profiles=kg["s"].profiles))


def test_a_job_runs_as_a_kaggle_kernel_with_secrets_from_the_secret_store(kg):
    s, st = kg["s"], kg["st"]
    submit(kg, "  - {name: data, kind: synth, backend: deepwave, dataset: d, families: [FlatVel_A], samples: 2}\n")
    run_until(s, lambda: s.state.jobs()[0]["state"] in ("succeeded", "failed"), 180)
    a = s.state.attempts("kg/data")[0]
    assert (a["state"], a["platform"]) == ("succeeded", "kaggle"), (a["end_reason"], s.logs("kg/data")[1][-3000:])
    assert a["hours_limit"] == 12  # the session cap
    push = st.pushes[0]
    assert push["slug"] == "alice/gwi-kg-data-1" and push["language"] == "python" and push["kernelType"] == "script"
    assert (push["isPrivate"], push["enableGpu"], push["enableInternet"]) == (True, True, True)
    assert push["machineShape"] == "NvidiaTeslaT4"
    assert push["datasetDataSources"] == ["alice/gwi-wheels"] and push["competitionDataSources"] == ["waveform-inversion"]
    # the kernel wrote to S3 with credentials it could only have had from the secret store, and beat
    assert json.loads(open_store(kg["store"] + "/datasets/d").get_bytes("manifest.json"))["num_samples"] == 2
    hb = json.loads(open_store(kg["store"] + "/runs/kg/data/attempts/1").get_bytes("progress.json"))
    assert hb["state"] == "succeeded" and hb["attempt"] == "kg.data.1"
    assert "dataset d at" in s.logs("kg/data")[1]
    # no secret in anything pushed or rendered
    work = Path(s.home, "attempts", "kg.data.1", "kernel")
    meta = json.loads((work / "kernel-metadata.json").read_text())
    assert meta["id"] == "alice/gwi-kg-data-1" and meta["code_file"] == "gwi_job.py" and meta["is_private"] is True
    pushed = json.dumps(push) + "".join(p.read_text() for p in work.iterdir())
    for secret in (SECRET, ACCESS, "kaggle-key-xyz"):
        assert secret not in pushed


def test_failed_and_cancelled_kernels(kg):
    s, st = kg["s"], kg["st"]
    submit(kg, "  - {name: bad, kind: synth, backend: deepwave, dataset: x, families: [FlatVel_A], samples: 2}\n"
               "  - {name: long, kind: synth, backend: deepwave, dataset: big, families: [CurveVel_B], samples: 4000}\n")
    open_store(kg["store"] + "/datasets/x").put_bytes("manifest.json", b"{not json")  # makes 'bad' fail in the kernel
    run_until(s, lambda: s.state.jobs()[0]["state"] == "failed" and s.state.attempts("kg/long")
              and s.state.attempts("kg/long")[0]["state"] == "running", 180)
    a = s.state.attempts("kg/bad")[0]
    assert a["state"] == "failed" and "script exited with 1" in a["end_reason"]
    assert "manifest" in s.logs("kg/bad")[1]
    assert s.cancel("kg/long") == "kg/long cancelled; attempt 1 on kaggle stopped"
    assert st.status("alice/gwi-kg-long-1")[0] == "CANCEL_ACKNOWLEDGED"


def test_pushed_before_the_answer_was_recorded_is_adopted(kg, tmp_path):
    st = kg["st"]
    ad = KaggleAdapter(kg["s"].profiles["kaggle"])
    req = LaunchRequest(attempt_id="a.b.1", job="a/b", kind="synth", argv=["gwi", "--version"], env={},
                        store_url=kg["store"], heartbeat_url=kg["store"] + "/runs/a/b/attempts/1/progress.json",
                        workdir=str(tmp_path / "w1"))
    ad.launch(req)
    (tmp_path / "w1" / "handle.json").unlink()  # the scheduler died before it recorded the answer
    h = KaggleAdapter(kg["s"].profiles["kaggle"]).launch(req)
    assert len(st.pushes) == 1 and h["kernel"] == "alice/gwi-a-b-1"
    with pytest.raises(Exception, match="no session id for alice/gwi-a-b-1"):  # adopted: cannot be cancelled by API
        KaggleAdapter(kg["s"].profiles["kaggle"]).cancel(h)


def test_an_offline_kernel_reads_a_mirror_and_writes_to_kaggle_working(kg, tmp_path, monkeypatch):
    prof = load_profiles([kg["plat"]])["kaggle"]
    from dataclasses import replace

    off = replace(prof, options=replace(prof.options, internet=False, offline_store="alice/gwi-store-mirror"))
    ad = KaggleAdapter(off)
    store = kg["store"]
    req = LaunchRequest(attempt_id="day7.submit.1", job="day7/submit", kind="predict",
                        argv=["gwi", "predict", "--ensemble", f"{store}/runs/day5/ens/ensemble.json", "--test",
                              "/kaggle/input/waveform-inversion/test", "--out", f"{store}/runs/day7/submit/submission.csv"],
                        env={"GWI_ATTEMPT": "day7.submit.1", "GWI_HEARTBEAT": f"{store}/runs/day7/submit/attempts/1/progress.json",
                             "GWI_HEARTBEAT_S": "20"},
                        store_url=store, heartbeat_url=f"{store}/runs/day7/submit/attempts/1/progress.json",
                        workdir=str(tmp_path / "w"))
    meta = ad.render(req, tmp_path / "k")
    assert meta["enable_internet"] is False
    assert meta["dataset_sources"] == ["alice/gwi-wheels", "alice/gwi-store-mirror"]
    script = (tmp_path / "k" / "gwi_job.py").read_text()
    env = json.loads(script.split("ENV = ", 1)[1].split("\n", 1)[0])
    assert "GWI_HEARTBEAT" not in env and env["GWI_OFFLINE"] == "1"
    mapping = json.loads(env["GWI_STORE_MAP"])
    monkeypatch.setenv("GWI_STORE_MAP", env["GWI_STORE_MAP"])
    assert str(open_store(f"{store}/runs/day5/ens")) .endswith("/kaggle/input/gwi-store-mirror/runs/day5/ens')")
    assert str(open_store(f"{store}/runs/day7/submit")).endswith("/kaggle/working')")
    assert mapping[f"{store}/runs/day7/submit"] == "/kaggle/working"


def test_slugs_fit_kaggle_limits():
    assert _slug("gwi-day2.specproj-unet.1") == "gwi-day2-specproj-unet-1"
    long = _slug("gwi-" + "x" * 80 + ".1")
    assert len(long) == 50 and long != _slug("gwi-" + "x" * 80 + ".2")


def test_package_mirrors_runs_and_an_offline_predict_reads_the_mirror(tmp_path, monkeypatch):
    """`gwi kaggle package` then, as in an offline kernel, predict with store URLs mapped onto it."""
    from gwi.cli import main
    from gwi.config import TrainConfig
    from gwi.data.synth import synthesize
    from gwi.models.ensemble import fit
    from gwi.predict import check_submission
    from gwi.training import train

    store = f"file://{tmp_path}/store"
    synthesize(["FlatVel_A"], 8, store, "d", seed=2, batch_size=8, progress=False, backend="deepwave")
    run = f"{store}/runs/day3/inv"
    train(TrainConfig(model="inversionnet", preset="tiny", dataset=f"{store}/datasets/d", run=run, epochs=1, batch_size=4,
                      heartbeat_s=30, split="kfold:4:0"), log=lambda *_: None)
    fit([run], f"{store}/datasets/d", str(tmp_path / "ensemble.json"), mc_samples=0, crf=False, log=lambda *_: None)
    open_store(f"{store}/runs/day5/ens").put_file(tmp_path / "ensemble.json", "ensemble.json")
    wheel = tmp_path / "gwi-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # building a real wheel is pip's business; the folder is ours
    out = tmp_path / "ds"
    assert main(["kaggle", "package", "--out", str(out), "--id", "alice/gwi-models", "--wheel", str(wheel),
                 "--ensemble", f"{store}/runs/day5/ens/ensemble.json"]) == 0
    meta = json.loads((out / "dataset-metadata.json").read_text())
    assert meta["id"] == "alice/gwi-models" and meta["licenses"] == [{"name": "CC0-1.0"}]
    assert (out / "wheels" / wheel.name).exists() and (out / "runs/day5/ens/ensemble.json").exists()
    ptr = json.loads((out / "runs/day3/inv/checkpoints/latest.json").read_text())
    assert (out / "runs/day3/inv" / ptr["latest"]["path"]).exists() and ptr["history"] == []
    # the store is gone (no internet); its URLs now read the mirror, and outputs land in "working"
    work = tmp_path / "working"
    monkeypatch.setenv("GWI_STORE_MAP", json.dumps({store: str(out), f"{store}/runs/day7/submit": str(work)}))
    import shutil

    shutil.move(tmp_path / "store", tmp_path / "store-away")
    test = tmp_path / "test"
    test.mkdir()
    import numpy as np

    np.save(test / "a1.npy", np.zeros((5, 1000, 70), np.float32))
    assert main(["predict", "--ensemble", f"{store}/runs/day5/ens/ensemble.json", "--test", str(test),
                 "--out", f"{store}/runs/day7/submit/submission.csv"]) == 0
    summary, problems = check_submission(str(work / "submission.csv"))
    assert problems == [] and summary["oids"] == 1
    with pytest.raises(ValueError, match="dataset id: expected OWNER/SLUG"):
        from gwi.adapters.kaggle import package

        package(out, "no-slash", wheel=str(wheel))


# -- deadlines, the kernels gwi launched, private files -----------------------------------------------


def adapter_with(kg, **options) -> KaggleAdapter:
    from dataclasses import replace

    prof = kg["s"].profiles["kaggle"]
    return KaggleAdapter(replace(prof, options=replace(prof.options, **options)))


def push_sleeper(ad: KaggleAdapter, folder: Path, slug: str, title: str) -> None:
    """A kernel that runs for a minute, pushed with the official client."""
    folder.mkdir(parents=True)
    (folder / "gwi_job.py").write_text("import time\ntime.sleep(60)\n")
    (folder / "kernel-metadata.json").write_text(json.dumps({
        "id": f"alice/{slug}", "title": title, "code_file": "gwi_job.py", "language": "python",
        "kernel_type": "script", "is_private": True, "enable_gpu": False, "enable_internet": True,
        "dataset_sources": [], "competition_sources": [], "kernel_sources": [], "model_sources": []}))
    ad.api.kernels_push(str(folder))


def test_a_hanging_or_failing_kaggle_api_answers_within_its_deadline(kg, tmp_path):
    st = kg["st"]
    ad = adapter_with(kg, request_timeout_s=1.0, retry_deadline_s=2.0)
    push_sleeper(ad, tmp_path / "k", "gwi-t-1", "gwi t.1")
    handle = {"kernel": "alice/gwi-t-1", "workdir": str(tmp_path / "w")}
    st.faults = ["hang"] * 10  # accepted, never answered: the package alone would wait forever
    t0 = time.monotonic()
    with pytest.raises(PlatformError, match="Kaggle API not reachable") as e:
        ad.query(handle)
    assert e.value.kind == "retryable" and time.monotonic() - t0 < 2.0 + 1.0 + 1.5
    st.release.set()
    st.faults = [503, "reset"]  # a 5xx and a dropped connection: retried, then the answer
    ad = adapter_with(kg, request_timeout_s=5.0, retry_deadline_s=20.0)
    assert ad.query(handle).state.value == "running" and st.faults == []
    st.faults = [401]  # not retryable: one try
    with pytest.raises(PlatformError) as e:
        ad.query(handle)
    assert e.value.kind == "auth"


def test_running_gwi_kernels_are_listed_and_orphans_cancelled(kg, tmp_path):
    from gwi.scheduler import open_view
    from gwi.scheduler.instances import list_instances, stop_orphans

    st = kg["st"]
    ad = KaggleAdapter(kg["s"].profiles["kaggle"])
    push_sleeper(ad, tmp_path / "a", "gwi-z-job-1", "gwi z.job.1")
    push_sleeper(ad, tmp_path / "b", "notebook-of-mine", "notebook of mine")  # not gwi's
    v = open_view(tmp_path / "fresh-home", kg["s"].profiles)
    listing = list_instances(v, ["kaggle"])
    (row,) = listing.instances
    assert (row["id"], row["attempt_id"], row["state"], row["orphan"]) == ("alice/gwi-z-job-1", "z.job.1", "running", True)
    assert stop_orphans(v, listing) == [(row, None)]
    assert st.status("alice/gwi-z-job-1")[0] == "CANCEL_ACKNOWLEDGED"
    assert st.status("alice/notebook-of-mine")[0] == "RUNNING"
    assert list_instances(v, ["kaggle"]).instances == []


def test_the_rendered_kernel_is_private_and_stops_itself_at_its_hour_limit(kg, tmp_path):
    import stat

    ad = KaggleAdapter(kg["s"].profiles["kaggle"])
    req = LaunchRequest(attempt_id="a.b.1", job="a/b", kind="synth", argv=["gwi", "--version"], env={},
                        store_url=kg["store"], heartbeat_url=kg["store"] + "/hb.json", workdir=str(tmp_path / "w"),
                        hours_limit=2.0)
    ad.render(req, tmp_path / "w" / "kernel")
    assert stat.S_IMODE((tmp_path / "w" / "kernel").stat().st_mode) == 0o700
    for f in ("kernel-metadata.json", "gwi_job.py"):
        assert stat.S_IMODE((tmp_path / "w" / "kernel" / f).stat().st_mode) == 0o600
    assert "LIMIT_S = 7200  #" in (tmp_path / "w" / "kernel" / "gwi_job.py").read_text()
