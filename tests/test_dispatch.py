"""End to end with the real local adapter (process runtime): real `gwi` processes, killed, stalled,
and a scheduler killed mid-plan."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gwi.adapters.base import load_profiles
from gwi.data.synth import synthesize
from gwi.runs import Run, run_url
from gwi.scheduler import Scheduler
from gwi.spec import load_spec
from gwi.store import open_store

from .conftest import run_until

PROFILE = """adapter: local
capacity: {cap}
start_timeout_s: 120
options: {{runtime: process, grace_s: 2}}
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store with a small labelled dataset, and two local platform profiles."""
    root = tmp_path_factory.mktemp("dispatch")
    store = f"file://{root}/store"
    synthesize(["FlatVel_A"], 16, store, "d", seed=3, batch_size=16, progress=False, backend="deepwave")
    plat = root / "platforms"
    plat.mkdir()
    (plat / "local-a.yaml").write_text(PROFILE.format(cap=2))
    (plat / "local-b.yaml").write_text(PROFILE.format(cap=2))
    return root, store, plat


@pytest.fixture
def sched(world, tmp_path, monkeypatch):
    root, store, plat = world
    monkeypatch.setenv("GWI_PLATFORMS", str(plat))
    s = Scheduler(tmp_path / "home", profiles=load_profiles([plat]))
    yield s
    for a in s.state.active_attempts():
        s.adapter(a["platform"]).cancel(json.loads(a["handle"]))  # never leave a process behind
    s.close()


def write_spec(tmp_path, store, body, name="e2e"):
    p = tmp_path / f"{name}.yaml"
    p.write_text(f"name: {name}\nstore: {store}\n" + body)
    return p


TRAIN = """
jobs:
  - name: tr
    kind: train
    model: inversionnet
    preset: tiny
    dataset: d
    platforms: [local-a, local-b]
    heartbeat_s: 0.5
    limits: {{stall_s: {stall}}}
    config: {{epochs: 30, batch_size: 4, lr: 0.003, fold: 0, folds: 4, checkpoint_every: 5, keep_checkpoints: 2}}
"""


def progress(s, attempt_id):
    a = s.state.attempt(attempt_id)
    return json.loads(a["progress"]) if a and a["progress"] else {}


def latest_step(store):
    return Run(run_url(store, "e2e", "tr")).latest_step()  # None: not there yet


def attempt_counts(s):
    return {j["id"]: len(s.state.attempts(j["id"])) for j in s.state.jobs() if s.state.attempts(j["id"])}


def test_killed_training_moves_to_the_next_platform_and_resumes(sched, world, tmp_path):
    root, store, _ = world
    s = sched
    s.submit(load_spec(write_spec(tmp_path, store, TRAIN.format(stall=30)), profiles=s.profiles))
    run_until(s, lambda: (latest_step(store) or 0) >= 10 and progress(s, "e2e.tr.1").get("step", 0) >= 12, 120)
    os.kill(progress(s, "e2e.tr.1")["pid"], signal.SIGKILL)  # the training process dies mid-run
    run_until(s, lambda: s.state.jobs()[0]["state"] == "succeeded", 180)
    a1, a2 = s.state.attempts("e2e/tr")
    assert (a1["platform"], a1["state"], a1["exit_code"]) == ("local-a", "failed", 137)
    assert a1["end_reason"].startswith("killed by SIGKILL")
    assert (a2["platform"], a2["state"]) == ("local-b", "succeeded")
    # it continued from the last checkpoint, not from scratch: the step count goes on
    assert 10 <= a2["resumed_from_step"] < 90  # checkpoints every 5 steps and at each epoch's end (3 steps)
    metrics = json.loads(open_store(run_url(store, "e2e", "tr")).get_bytes("metrics.json"))
    assert metrics["resumed_from"] == f"checkpoints/step-{a2['resumed_from_step']}.pt"
    assert metrics["steps"] == 90 and metrics["epochs"] == 30
    assert "resumed from checkpoints/step-" in Path(s.home, "attempts", "e2e.tr.2", "log").read_text()
    kinds = [e["kind"] for e in s.state.events("e2e/tr")]
    assert kinds.count("launched") == 2 and "failed" in kinds and kinds[-1] == "succeeded"


def test_stalled_attempt_is_declared_lost_stopped_and_moved(sched, world, tmp_path):
    root, store, _ = world
    s = sched
    # its own spec name, so its own run: the store is shared with the other tests of this module
    s.submit(load_spec(write_spec(tmp_path, store, TRAIN.format(stall=5), name="stall"), profiles=s.profiles))
    run_until(s, lambda: progress(s, "stall.tr.1").get("step", 0) >= 3, 120)
    pid = progress(s, "stall.tr.1")["pid"]
    os.kill(pid, signal.SIGSTOP)  # alive but silent: no heartbeat
    run_until(s, lambda: len(s.state.attempts("stall/tr")) == 2, 60)
    a1 = s.state.attempts("stall/tr")[0]
    assert a1["state"] == "lost" and a1["end_reason"].startswith("heartbeat stalled: none for ")
    time.sleep(0.5)
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z"
    run_until(s, lambda: s.state.jobs()[0]["state"] == "succeeded", 180)
    assert s.state.attempts("stall/tr")[1]["platform"] == "local-b"


def test_killed_scheduler_restarts_and_completes_without_double_launch(world, tmp_path, monkeypatch):
    root, store, plat = world
    monkeypatch.setenv("GWI_PLATFORMS", str(plat))
    home = tmp_path / "home"
    monkeypatch.setenv("GWI_HOME", str(home))
    spec = write_spec(tmp_path, store, name="restart", body="""
defaults: {platforms: [local-a, local-b], heartbeat_s: 0.5, limits: {stall_s: 20}}
jobs:
  - {name: d2, kind: synth, backend: deepwave, dataset: d2, families: [FlatVel_A], samples: 4}
  - {name: tr, kind: train, model: inversionnet, preset: tiny, dataset: d,
     config: {epochs: 10, batch_size: 4, fold: 0, folds: 4}}
  - {name: ens, kind: ensemble, members: [tr], dataset: d, config: {mc_samples: 2}}
""")
    gwi = [sys.executable, "-m", "gwi"]
    out = subprocess.run(gwi + ["dispatch", str(spec)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    s = Scheduler(home)
    assert set(attempt_counts(s)) == {"restart/d2", "restart/tr"}
    watch = subprocess.Popen(gwi + ["watch", "--interval", "0.2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not progress(s, "restart.tr.1").get("step"):
        time.sleep(0.2)
    watch.kill()  # the scheduler dies mid-plan; its jobs keep running
    watch.wait()
    # two watchers at once, restarted: the lock keeps them from launching anything twice
    watchers = [subprocess.Popen(gwi + ["watch", "--interval", "0.1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True) for _ in range(2)]
    for w in watchers:
        w.wait(timeout=240)
    assert [w.returncode for w in watchers] == [0, 0], watchers[0].stdout.read()
    assert attempt_counts(s) == {"restart/d2": 1, "restart/tr": 1, "restart/ens": 1}, [f"{e['job_id']} {e['message']}" for e in s.state.events()]
    assert {j["name"]: j["state"] for j in s.state.jobs()} == {"d2": "succeeded", "tr": "succeeded", "ens": "succeeded"}
    assert sorted(p.name for p in (home / "attempts").iterdir()) == ["restart.d2.1", "restart.ens.1", "restart.tr.1"]
    launched = [e for e in s.state.events() if e["kind"] == "launched"]
    assert len(launched) == 3
    ens = json.loads(open_store(run_url(store, "restart", "ens")).get_bytes("ensemble.json"))
    assert ens["format"] == "gwi-ensemble"
    st = subprocess.run(gwi + ["status", "--json"], capture_output=True, text=True, timeout=60)
    assert [r["state"] for r in json.loads(st.stdout)] == ["succeeded"] * 3
    s.close()


@pytest.mark.slow
def test_the_demo_plan_completes_with_status_readable_throughout(tmp_path):
    """The README's main command: jobs/demo.yaml on the embedded store, followed to the end."""
    import shutil

    from gwi.predict import check_submission

    repo = Path(__file__).resolve().parents[1]
    cwd = tmp_path / "fresh"
    cwd.mkdir()
    shutil.copytree(repo / "jobs", cwd / "jobs")
    gwi = [sys.executable, "-m", "gwi"]
    proc = subprocess.Popen(gwi + ["dispatch", "jobs/demo.yaml", "--follow", "--interval", "1"], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = set()
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        st = subprocess.run(gwi + ["status", "--json"], cwd=cwd, capture_output=True, text=True, timeout=60)
        assert st.returncode == 0, st.stderr
        for r in json.loads(st.stdout or "[]"):
            if r["state"] == "running" and r["epochs"]:
                seen.add((r["job"], r["platform"]))
        time.sleep(2)
    out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out[-3000:]
    assert ("demo/inversionnet", "local") in seen or ("demo/heat-kernel", "local") in seen
    home = Path(os.environ["GWI_HOME"])
    sub = home / "store/runs/demo/submission"
    summary, problems = check_submission(str(sub / "submission.csv"))
    assert problems == [] and summary["oids"] == 12 and summary["rows"] == 840
    assert len(list((sub / "plots").glob("*.png"))) >= 3
    ens = json.loads((home / "store/runs/demo/ensemble/ensemble.json").read_text())
    assert ens["val_mae"]["overall"] <= min(m["val_mae"]["overall"] for m in ens["members"]) + 1e-6
    assert "outputs:" in out and "submission.csv" in out
    from gwi.dashboard import create_app  # the dashboard draws each training job's curves from its run

    curves = create_app(home).test_client().get("/curves/demo/inversionnet.png")
    assert curves.status_code == 200 and curves.data[:8] == b"\x89PNG\r\n\x1a\n"


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""  # gone already (the wrapper's short-lived helpers, like mv)


def test_a_lost_wrapper_is_stopped_with_what_it_started(tmp_path):
    """The wrapper dies (SIGKILL) but its child lives on, re-parented: query says lost, and cancel
    finds the child by its attempt id and stops it."""
    from gwi.adapters.base import LaunchRequest, State
    from gwi.adapters.local import LocalAdapter, _attempt_processes

    plat = tmp_path / "p"
    plat.mkdir()
    (plat / "box.yaml").write_text(PROFILE.format(cap=1))
    ad = LocalAdapter(load_profiles([plat])["box"])
    req = LaunchRequest(attempt_id="w.x.1", job="w/x", kind="synth", argv=["sleep", "600"], env={"GWI_ATTEMPT": "w.x.1"},
                        store_url=f"file://{tmp_path}", heartbeat_url=f"file://{tmp_path}/hb.json",
                        workdir=str(tmp_path / "w.x.1"), scrub_env=("LAMBDA_API_KEY",))
    os.environ["LAMBDA_API_KEY"] = "must-not-leak"
    try:
        h = ad.launch(req)
    finally:
        del os.environ["LAMBDA_API_KEY"]
    deadline = time.monotonic() + 10
    child = []
    while not child and time.monotonic() < deadline:  # the wrapper first, then the job it starts
        child = [p for p in _attempt_processes("w.x.1") if p != h["pid"] and _cmdline(p).startswith(b"sleep")]
        time.sleep(0.05)
    assert child and b"LAMBDA_API_KEY" not in Path(f"/proc/{child[0]}/environ").read_bytes()
    os.kill(h["pid"], signal.SIGKILL)
    time.sleep(0.3)
    st = ad.query(h)
    assert st.state == State.LOST and "gone without an exit status" in st.message
    ad.cancel(h)
    time.sleep(0.3)
    assert _attempt_processes("w.x.1") == []


def test_a_hung_platform_api_does_not_freeze_supervision_of_the_others(tmp_path, monkeypatch):
    """Issue 12 #1: the fake Lambda API stops answering while a local job on the same plan is killed,
    judged, moved to its fallback platform and finished; every pass returns within the deadline."""
    from .fake_lambda import LambdaState, serve

    monkeypatch.setenv("LAMBDA_API_KEY", "k")
    st = LambdaState("k")
    st.boot_polls = 10**6  # it stays booting: pending, heartbeat-less, judged by its platform's answers
    srv, url = serve(st)
    plat = tmp_path / "platforms"
    plat.mkdir()
    key = tmp_path / "id_test"
    key.write_text("not used: the instance never boots")
    opts = {"api_url": url, "instance_types": ["gpu_1x_a10"], "ssh_private_key": str(key), "allow_local_store": True,
            "request_timeout_s": 120}
    (plat / "lam.yaml").write_text(json.dumps({"adapter": "lambda", "credentials": ["LAMBDA_API_KEY"],
                                               "start_timeout_s": 600, "options": opts}))
    for name in ("local-a", "local-b"):
        (plat / f"{name}.yaml").write_text(PROFILE.format(cap=1))
    s = Scheduler(tmp_path / "home", profiles=load_profiles([plat]), call_timeout_s=2)
    spec = write_spec(tmp_path, f"file://{tmp_path}/store", name="hang", body="""
defaults: {heartbeat_s: 0.5, limits: {stall_s: 30}}
jobs:
  - {name: cloud, kind: synth, backend: deepwave, dataset: c, families: [FlatVel_A], samples: 2, platforms: [lam]}
  - {name: work, kind: synth, backend: deepwave, dataset: w, families: [FlatVel_A], samples: 2, platforms: [local-a, local-b]}
""")
    try:
        s.submit(load_spec(spec, profiles=s.profiles))
        s.reconcile()
        assert {a["platform"] for a in s.state.active_attempts()} == {"lam", "local-a"}
        st.faults = ["hang"] * 1000  # from now on every request is accepted and never answered
        os.killpg(json.loads(s.state.attempt("hang.work.1")["handle"])["pid"], signal.SIGKILL)
        slowest, deadline = 0.0, time.monotonic() + 180
        while s.state.job("hang/work")["state"] != "succeeded" and time.monotonic() < deadline:
            t0 = time.monotonic()
            s.reconcile()
            slowest = max(slowest, time.monotonic() - t0)
            time.sleep(0.2)
        assert s.state.job("hang/work")["state"] == "succeeded", [e["message"] for e in s.state.events()]
        assert [(a["platform"], a["state"]) for a in s.state.attempts("hang/work")] == [("local-a", "lost"),
                                                                                  ("local-b", "succeeded")]
        assert slowest < 2 + 2  # one call timeout (the hung query), plus the pass's own work
        cloud = s.state.attempt("hang.cloud.1")
        assert cloud["state"] == "pending" and "lam API" in cloud["last_error"]  # left alone: a transient error
    finally:
        st.release.set()
        srv.shutdown()
        for a in s.state.active_attempts():
            if a["platform"] != "lam" and a["handle"]:
                s.adapter(a["platform"]).cancel(json.loads(a["handle"]))
        s.close()
