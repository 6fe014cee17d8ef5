"""Issue 12 #10: the shared S3 store goes away in the middle of a two-platform plan (moto behind a TCP
proxy that drops every connection). The plan completes, no step is lost, no attempt resumed from
scratch while a checkpoint existed, and no platform's try was used up by the outage."""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest

from gwi.adapters.base import load_profiles
from gwi.runs import Run, run_url
from gwi.scheduler import Scheduler
from gwi.spec import load_spec

from .conftest import start_moto
from .faults import TcpProxy

OUTAGE_S = float(os.environ.get("GWI_TEST_OUTAGE_S", "20"))  # the "done when" says a minute

PROFILE = "adapter: local\ncapacity: 1\nstart_timeout_s: 120\noptions: {runtime: process, grace_s: 2}\n"

PLAN = """
jobs:
  - name: tr
    kind: train
    model: inversionnet
    preset: tiny
    dataset: d
    platforms: [local-a, local-b]
    heartbeat_s: 0.5
    limits: {stall_s: 60}
    config: {epochs: 20, batch_size: 4, lr: 0.003, fold: 0, folds: 4, checkpoint_every: 5, keep_checkpoints: 2}
"""


@pytest.fixture
def outage_world(tmp_path, monkeypatch):
    import boto3

    import gwi.store

    proc, moto_url = start_moto()
    port = int(moto_url.rsplit(":", 1)[1])
    proxy = TcpProxy("127.0.0.1", port)
    bucket = f"gwi-outage-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    for k, v in {"AWS_ENDPOINT_URL": proxy.url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "GWI_STORE_PATIENCE_S": str(OUTAGE_S * 4)}.items():
        monkeypatch.setenv(k, v)  # the workers inherit them: they wait out the outage
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    gwi.store._CLIENTS.clear()
    plat = tmp_path / "platforms"
    plat.mkdir()
    for name in ("local-a", "local-b"):
        (plat / f"{name}.yaml").write_text(PROFILE)
    yield f"s3://{bucket}", proxy, plat
    proxy.close()
    proc.terminate()
    proc.wait(timeout=10)
    gwi.store._CLIENTS.clear()


def test_a_store_outage_mid_plan_loses_no_step_and_burns_no_platform(outage_world, tmp_path):
    from gwi.data.synth import synthesize

    store, proxy, plat = outage_world
    synthesize(["FlatVel_A"], 16, store, "d", seed=3, batch_size=16, progress=False, backend="deepwave")
    spec = tmp_path / "out.yaml"
    spec.write_text(f"name: out\nstore: {store}\n" + PLAN)
    s = Scheduler(tmp_path / "home", profiles=load_profiles([plat]), call_timeout_s=5, store_backoff_s=2)
    run = Run(run_url(store, "out", "tr"))
    steps: list[int] = []

    def look():
        s.reconcile()
        if proxy.mode == "pass":
            step = run.latest_step()
            if step is not None:
                steps.append(step)
        time.sleep(0.3)

    try:
        s.submit(load_spec(spec, profiles=s.profiles))
        deadline = time.monotonic() + 300
        while (not steps or steps[-1] < 10) and time.monotonic() < deadline:
            look()
        assert steps and steps[-1] >= 10, [e["message"] for e in s.state.events()]
        proxy.set("drop")  # the store is gone: every connection refused or cut
        until = time.monotonic() + OUTAGE_S
        while time.monotonic() < until:
            t0 = time.monotonic()
            look()
            assert time.monotonic() - t0 < 5 + 2  # the scheduler never waits out the outage itself
        proxy.set("pass")
        while s.state.job("out/tr")["state"] not in ("succeeded", "failed") and time.monotonic() < deadline + 300:
            look()
        events = [f"{e['kind']}: {e['message']}" for e in s.state.events()]
        assert s.state.job("out/tr")["state"] == "succeeded", events
        attempts = s.state.attempts("out/tr")
        # no platform's try went to the outage: every attempt is on the first platform, and any that
        # did not succeed was ended as the store's fault
        assert {a["platform"] for a in attempts} == {"local-a"}, events
        assert all(a["state"] == "succeeded" or a["blameless"] for a in attempts), events
        # a run's step never goes backwards, and nothing resumed from scratch while a checkpoint existed
        assert steps == sorted(steps), steps
        for a in attempts:
            beat = json.loads(a["progress"] or "{}")
            if a["resumed_from_step"]:
                assert beat.get("resumed_from", a["resumed_from_step"]) >= a["resumed_from_step"], (dict(a), beat)
        assert not any("refusing to go backwards" in e for e in events), events
        metrics = json.loads(run.store.get_bytes("metrics.json"))
        assert metrics["steps"] == 60 and metrics["epochs"] == 20
    finally:
        proxy.set("pass")
        for a in s.state.active_attempts():
            if a["handle"]:
                s.adapter(a["platform"]).cancel(json.loads(a["handle"]))
        s.close()
