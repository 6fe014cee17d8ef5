"""The Lambda adapter against a fake Lambda API (HTTP on 127.0.0.1) whose instances boot to
127.0.0.1, where a real OpenSSH sshd runs the job as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from gwi.adapters.base import LaunchRequest, PlatformError, load_profiles
from gwi.adapters.lambda_cloud import LambdaAdapter
from gwi.scheduler import Scheduler
from gwi.spec import load_spec

from .conftest import run_until
from .fake_lambda import LambdaState, serve
from .faults import live_group
from .sshd import SSHD, Sshd, stop_remote_jobs

if SSHD is None and os.environ.get("CI") == "true":
    raise RuntimeError("CI must run the Lambda/SSH tests: OpenSSH sshd is not installed (.ci/run installs it)")
pytestmark = pytest.mark.skipif(SSHD is None, reason="OpenSSH sshd is not installed (apt-get install openssh-server)")

KEY = "secret-lambda-key-123"


@pytest.fixture
def cloud(tmp_path, monkeypatch):
    """The fake API, a real sshd, and platform profiles: lam (Lambda) and fallback (local process)."""
    monkeypatch.setenv("LAMBDA_API_KEY", KEY)
    st = LambdaState(KEY)
    srv, url = serve(st)
    sshd = Sshd(tmp_path / "sshd").start()
    plat = tmp_path / "platforms"
    plat.mkdir()
    remote = tmp_path / "remote"
    opts = {"api_url": url, "instance_types": ["gpu_1x_a10"], "ssh_key_name": "test", "ssh_private_key": str(sshd.client_key),
            "ssh_user": sshd.user, "ssh_port": sshd.port, "runtime": "process", "gwi_command": f"{sys.executable} -m gwi",
            "remote_dir": str(remote), "allow_local_store": True, "env": {"GWI_CACHE": str(tmp_path / "remote-cache")},
            "request_timeout_s": 5, "poweroff_command": "true"}  # never the default `sudo shutdown` here
    (plat / "lam.yaml").write_text(json.dumps({"adapter": "lambda", "gpus": 1, "usd_per_hour": 0.75, "capacity": 2,
                                               "credentials": ["LAMBDA_API_KEY"], "start_timeout_s": 60, "options": opts}))
    (plat / "fallback.yaml").write_text("adapter: local\ncapacity: 2\nstart_timeout_s: 60\noptions: {runtime: process}\n")
    s = Scheduler(tmp_path / "home", profiles=load_profiles([plat]))
    store = f"file://{tmp_path}/store"
    yield {"st": st, "sshd": sshd, "s": s, "store": store, "tmp": tmp_path, "remote": remote, "plat": plat}
    st.release.set()  # end any scripted hang
    stop_remote_jobs(remote)  # never leave a job, or its watchdog, behind
    for a in s.state.db.execute("SELECT * FROM attempts WHERE state IN ('pending','running')").fetchall():
        if a["handle"]:
            try:
                s.adapter(a["platform"]).cancel(json.loads(a["handle"]))
            except Exception:  # noqa: BLE001
                pass
    s.close()
    sshd.stop()
    srv.shutdown()


def spec(c, body: str, name="lc"):
    p = c["tmp"] / f"{name}.yaml"
    p.write_text(f"name: {name}\nstore: {c['store']}\n" + body)
    return load_spec(p, profiles=c["s"].profiles)


SYNTH = "jobs:\n  - {name: data, kind: synth, backend: deepwave, dataset: d, families: [FlatVel_A], samples: 2, platforms: [lam, fallback]}\n"
LONG = ("jobs:\n  - {name: long, kind: synth, backend: deepwave, dataset: big, families: [CurveVel_B], samples: 4000, batch_size: 1,"
        " platforms: [lam, fallback], heartbeat_s: 0.5, limits: {stall_s: 4}}\n").replace(" batch_size: 1,", "")


def test_job_runs_on_an_instance_over_ssh_and_the_instance_is_terminated(cloud):
    c, s, st = cloud, cloud["s"], cloud["st"]
    s.submit(spec(c, SYNTH))
    run_until(s, lambda: s.state.jobs()[0]["state"] in ("succeeded", "failed"), 120)
    a = s.state.attempts("lc/data")[0]
    assert (a["platform"], a["state"]) == ("lam", "succeeded"), a["end_reason"]
    assert st.running() == [] and len(st.instances) == 1  # one instance, terminated at the end
    inst = next(iter(st.instances.values()))
    assert inst["name"] == "gwi-lc.data.1" and inst["ssh_key_names"] == ["test"]
    work = Path(s.home, "attempts", "lc.data.1")
    assert "dataset d at" in (work / "log").read_text()  # the log came back before termination
    assert f"[127.0.0.1]:{c['sshd'].port}" in (work / "known_hosts").read_text()  # host key recorded
    rdir = c["remote"] / "gwi-lc.data.1"
    assert not (rdir / "env").exists()  # the wrapper deleted the values once it had read them
    assert stat.S_IMODE((rdir / "docker.env").stat().st_mode) == 0o600
    assert "GWI_HEARTBEAT\n" in (rdir / "docker.env").read_text()  # names only
    assert not any(KEY in f.read_text(errors="replace") for f in rdir.rglob("*") if f.is_file())
    assert json.loads(Path(c["store"][7:], "datasets/d/manifest.json").read_text())["num_samples"] == 2
    assert ("GET", "/api/v1/instance-types") in st.requests


def test_capacity_errors_try_the_next_region_then_fall_back(cloud):
    c, s, st = cloud, cloud["s"], cloud["st"]
    st.types["gpu_1x_a10"]["regions"] = ["us-east-1", "us-west-1"]
    st.capacity_refusals = {("gpu_1x_a10", "us-east-1")}  # listed with capacity, but the launch says no
    s.submit(spec(c, SYNTH))
    run_until(s, lambda: s.state.jobs()[0]["state"] == "succeeded", 120)
    assert [i["region"]["name"] for i in st.instances.values()] == ["us-west-1"]
    # no capacity anywhere: the launch fails as 'capacity' and the job moves to the next platform
    st.capacity_refusals = {("gpu_1x_a10", "us-east-1"), ("gpu_1x_a10", "us-west-1")}
    s.submit(spec(c, SYNTH.replace("name: data,", "name: data2,").replace("dataset: d,", "dataset: d2,"), name="lc2"))
    run_until(s, lambda: s.state.jobs("lc2")[0]["state"] == "succeeded", 120)
    a1, a2 = s.state.attempts("lc2/data2")
    assert a1["end_reason"].startswith("launch failed (capacity): lam: no capacity: gpu_1x_a10 in us-east-1: ")
    assert a2["platform"] == "fallback"
    assert st.running() == []


def test_rate_limits_are_retried_with_backoff(cloud):
    c, st = cloud, cloud["st"]
    st.rate_limit_next = 2
    ad = LambdaAdapter(c["s"].profiles["lam"])
    slept = []
    ad.api.sleep = slept.append
    assert "gpu_1x_a10" in ad.api.instance_types()
    assert len(slept) == 2 and 0.5 <= slept[0] <= 1.5 and 1.0 <= slept[1] <= 3.0  # jittered, doubling
    st.rate_limit_next = 1000
    ad.api.deadline_s = 0.5
    with pytest.raises(PlatformError, match="HTTP 429") as e:
        ad.api.instance_types()
    assert e.value.kind == "retryable"
    os.environ["LAMBDA_API_KEY"] = "wrong"
    st.rate_limit_next = 0
    with pytest.raises(PlatformError, match="API key was invalid") as e:
        LambdaAdapter(c["s"].profiles["lam"]).api.instances()
    assert e.value.kind == "auth"


def test_ssh_dropped_and_machine_gone_is_lost_terminated_and_moved(cloud):
    c, s, st = cloud, cloud["s"], cloud["st"]
    s.submit(spec(c, LONG))
    run_until(s, lambda: s.state.attempts("lc/long") and s.state.attempts("lc/long")[0]["state"] == "running", 120)
    c["sshd"].stop()  # the connection drops ...
    rdir = c["remote"] / "gwi-lc.long.1"
    os.killpg(int((rdir / "pid").read_text()), signal.SIGKILL)  # ... and the machine's work with it
    run_until(s, lambda: len(s.state.attempts("lc/long")) == 2, 60)
    a1 = s.state.attempts("lc/long")[0]
    assert a1["state"] == "lost" and a1["end_reason"].startswith("heartbeat stalled")
    assert "SSH" in a1["last_error"]
    assert st.running() == []  # terminated through the API, though SSH was gone
    assert s.state.attempts("lc/long")[1]["platform"] == "fallback"
    s.cancel("lc/long")


def test_changed_host_key_is_refused_with_a_clear_error(cloud):
    c, s, st = cloud, cloud["s"], cloud["st"]
    s.submit(spec(c, LONG))
    run_until(s, lambda: s.state.attempts("lc/long") and s.state.attempts("lc/long")[0]["state"] == "running", 120)
    c["sshd"].stop()
    c["sshd"].start(new_host_key=True)  # same address, another machine (or a man in the middle)
    run_until(s, lambda: s.state.attempts("lc/long")[0]["state"] != "running", 60)
    a1 = s.state.attempts("lc/long")[0]
    assert a1["state"] == "lost"
    assert f"host key of 127.0.0.1:{c['sshd'].port} changed since first contact (recorded SHA256:" in a1["end_reason"]
    assert "refusing to connect" in a1["end_reason"]
    assert st.running() == []
    s.cancel("lc/long")


def test_cancel_leaves_no_instance_running(cloud):
    c, s, st = cloud, cloud["s"], cloud["st"]
    s.submit(spec(c, LONG))
    run_until(s, lambda: s.state.attempts("lc/long") and s.state.attempts("lc/long")[0]["state"] == "running", 120)
    pid = int((c["remote"] / "gwi-lc.long.1" / "pid").read_text())
    assert s.cancel("lc/long") == "lc/long cancelled; attempt 1 on lam stopped"
    assert st.running() == []
    deadline = time.monotonic() + 10
    while live_group(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert live_group(pid) == []  # the job on the instance was stopped too


def test_a_lost_launch_answer_is_adopted_not_repeated(cloud, tmp_path):
    c, st = cloud, cloud["st"]
    ad = LambdaAdapter(c["s"].profiles["lam"])
    req = LaunchRequest(attempt_id="x.y.1", job="x/y", kind="synth", argv=["gwi", "--version"], env={},
                        store_url=c["store"], heartbeat_url=c["store"] + "/hb.json", workdir=str(tmp_path / "w1"))
    h1 = ad.launch(req)
    (tmp_path / "w1" / "handle.json").unlink()  # the scheduler died before it recorded the answer
    h2 = LambdaAdapter(c["s"].profiles["lam"]).launch(req)
    assert h1["instance_id"] == h2["instance_id"] and len(st.instances) == 1
    # two answers lost (a launch that timed out, then another): one is kept, the other terminated
    import copy

    dup = copy.deepcopy(st.instances[h1["instance_id"]])
    dup["id"] = "dup"
    st.instances["dup"] = dup
    (tmp_path / "w1" / "handle.json").unlink()
    h3 = LambdaAdapter(c["s"].profiles["lam"]).launch(req)
    assert h3["instance_id"] == h1["instance_id"] and st.instances["dup"]["status"] == "terminated"
    # a fresh state reusing the attempt id (GWI_HOME reset) does not adopt the old instance
    req.workdir = str(tmp_path / "w2")
    h4 = LambdaAdapter(c["s"].profiles["lam"]).launch(req)
    assert h4["instance_id"] not in (h1["instance_id"], "dup")
    ad.cancel(h1)
    ad.cancel(h4)
    assert st.running() == []


def test_multi_gpu_training_runs_under_torchrun(cloud):
    ad = LambdaAdapter(cloud["s"].profiles["lam"])
    req = LaunchRequest(attempt_id="a.b.1", job="a/b", kind="train", argv=["gwi", "train", "--model", "egnn"], env={},
                        store_url=cloud["store"], heartbeat_url=cloud["store"] + "/hb.json", workdir="unused")
    assert ad.command(req, 8) == (f"torchrun --standalone --nproc-per-node=8 --no-python -- {sys.executable} -m gwi "
                                  "train --model egnn")
    assert ad.command(req, 1) == f"{sys.executable} -m gwi train --model egnn"
    ad.options = replace(ad.options, runtime="docker", image="ghcr.io/team/gwi:1")
    assert ad.command(req, 4) == ("docker run --rm --name gwi-a.b.1 --gpus all --network host --shm-size 16g --env-file docker.env "
                                  "--entrypoint torchrun ghcr.io/team/gwi:1 --standalone --nproc-per-node=4 --no-python "
                                  "-- gwi train --model egnn")
    assert ad.command(replace(req, kind="predict"), 4).endswith("ghcr.io/team/gwi:1 train --model egnn")


# -- deadlines: every call answers in time; the instance stops itself --------------------------------


def adapter_with(c, **options) -> LambdaAdapter:
    prof = c["s"].profiles["lam"]
    return LambdaAdapter(replace(prof, options=replace(prof.options, **options)))


def test_a_hanging_or_failing_api_answers_within_its_deadline(cloud):
    st = cloud["st"]
    ad = adapter_with(cloud, request_timeout_s=1.0, retry_deadline_s=2.0)
    st.faults = ["hang"] * 20  # accepts, reads the request, never answers
    t0 = time.monotonic()
    with pytest.raises(PlatformError, match="no answer") as e:
        ad.api.instances()
    took = time.monotonic() - t0
    assert e.value.kind == "retryable" and took < 2.0 + 1.0 + 1.0, took  # the deadline and one try at most
    st.release.set()
    # 5xx, a reset connection and throttling are retried, with jittered, doubling pauses
    st.faults = [500, "reset", 503, 429]
    slept = []
    ad.api.sleep = slept.append
    ad.api.deadline_s = 60
    assert ad.api.instances() == []
    assert len(slept) == 4 and 0.5 <= slept[0] <= 1.5 and 4.0 <= slept[3] <= 12.0
    # what is not retryable is not retried: one request, one error
    before = len(st.requests)
    with pytest.raises(PlatformError, match="not found") as e:
        ad.api.instance("no-such-id")
    assert e.value.kind == "fatal" and len(st.requests) == before + 1
    # a launch (not idempotent) is tried once: its transient error goes to the caller, which looks first
    st.faults = [503]
    with pytest.raises(PlatformError, match="HTTP 503") as e:
        ad.api.launch("us-east-1", "gpu_1x_a10", "test", "gwi-x.y.1")
    assert e.value.kind == "retryable" and slept[4:] == [] and st.instances == {}


def test_the_instance_stops_itself_at_its_deadline_with_nobody_watching(cloud, tmp_path):
    """The job gets 3 s; a watchdog started with it calls the (fake) cloud's terminate 1 s later:
    no scheduler, no adapter call between start and end."""
    c, st = cloud, cloud["st"]
    url = c["s"].profiles["lam"].options.api_url
    poweroff = tmp_path / "poweroff.py"
    poweroff.write_text(  # what `sudo shutdown -h now` does for a real instance: here, terminate by API
        "import json, os, urllib.request as u\n"
        f"u.urlopen(u.Request({url + '/instance-operations/terminate'!r}, method='POST',\n"
        "    data=json.dumps({'instance_ids': [os.environ['GWI_INSTANCE_ID']]}).encode(),\n"
        f"    headers={{'Authorization': 'Bearer {KEY}', 'Content-Type': 'application/json'}}), timeout=10)\n")
    ad = adapter_with(c, gwi_command="sleep", watchdog_grace_s=1.0,
                      poweroff_command=f"{sys.executable} {poweroff}")
    req = LaunchRequest(attempt_id="dl.job.1", job="dl/job", kind="synth", argv=["gwi", "600"], env={},
                        store_url=c["store"], heartbeat_url=c["store"] + "/hb.json", workdir=str(tmp_path / "w"),
                        hours_limit=3 / 3600)
    h = ad.launch(req)
    deadline = time.monotonic() + 30
    while not (tmp_path / "w" / "started").exists():  # boot, then the first query starts job and watchdog
        assert time.monotonic() < deadline
        ad.query(h)
    started = time.monotonic()
    rdir = c["remote"] / "gwi-dl.job.1"
    inst = st.instances[h["instance_id"]]
    while inst["status"] != "terminated":  # nothing of gwi runs now
        assert time.monotonic() - started < 20, "the watchdog did not stop the instance"
        time.sleep(0.2)
    assert 3.0 <= time.monotonic() - started
    assert (rdir / "exit_code").read_text().strip() == "124"  # the job was stopped at its own deadline first
    assert (rdir / "over_limit").read_text().startswith("over its hour limit: stopped on its machine after")
    assert (rdir / "watchdog.fired").read_text().startswith("deadline reached at")
    # gwi, back later, reads what happened
    end = ad.query(h)
    assert end.state.value == "lost" and "its deadline (0.000833333 h) had passed" in end.message
