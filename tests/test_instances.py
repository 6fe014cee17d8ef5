"""`gwi instances`: the machines gwi launched on each platform, which attempt owns each, and
stopping the orphans: a fake Lambda API on 127.0.0.1 and real processes of this machine."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from gwi.adapters.base import LaunchRequest, load_profiles
from gwi.scheduler import Scheduler, open_view
from gwi.scheduler.instances import command, list_instances, stop_orphans, sweep
from gwi.spec import load_spec

from .fake_lambda import LambdaState, serve
from .faults import live_group

KEY = "instances-test-key"


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A fake Lambda account and two profiles: lam (Lambda) and here (local processes)."""
    monkeypatch.setenv("LAMBDA_API_KEY", KEY)
    st = LambdaState(KEY)
    st.boot_polls = 10 ** 6  # instances stay booting: no SSH is needed to own or orphan one
    srv, url = serve(st)
    key = tmp_path / "id_test"
    key.write_text("not used: nothing here connects over SSH\n")
    plat = tmp_path / "platforms"
    plat.mkdir()
    (plat / "lam.yaml").write_text(json.dumps({
        "adapter": "lambda", "gpus": 1, "usd_per_hour": 0.75, "credentials": ["LAMBDA_API_KEY"],
        "options": {"api_url": url, "instance_types": ["gpu_1x_a10"], "ssh_private_key": str(key),
                    "allow_local_store": True, "request_timeout_s": 2, "retry_deadline_s": 0}}))
    (plat / "here.yaml").write_text("adapter: local\noptions: {runtime: process, grace_s: 2}\n")
    yield {"st": st, "profiles": load_profiles([plat]), "tmp": tmp_path, "store": f"file://{tmp_path}/store"}
    st.release.set()
    srv.shutdown()


def submit(w, home: Path) -> Scheduler:
    s = Scheduler(home, profiles=w["profiles"])
    spec = w["tmp"] / "p.yaml"
    spec.write_text(f"name: p\nstore: {w['store']}\njobs:\n"
                    "  - {name: data, kind: synth, backend: deepwave, dataset: d, families: [FlatVel_A], samples: 2, platforms: [lam]}\n")
    s.submit(load_spec(spec, profiles=s.profiles))
    s.reconcile()  # launched: the attempt is pending, its instance booting
    return s


def test_an_instance_whose_attempt_ended_is_an_orphan_and_is_terminated(world, tmp_path):
    st, home = world["st"], tmp_path / "home"
    s = submit(world, home)
    (iid, inst), = st.instances.items()
    listing = list_instances(open_view(home, world["profiles"]))
    (row,) = listing.instances
    assert (row["platform"], row["id"], row["name"], row["owner"], row["live"], row["orphan"]) == (
        "lam", iid, "gwi-p.data.1", "p.data.1", True, False)
    assert row["usd_per_hour"] == 0.75 and listing.errors == []
    # the attempt is cancelled, but terminating its instance fails (the API answers 500): state says
    # ended, the cloud still bills
    st.faults = [500]
    assert "stopping attempt 1 on lam failed" in s.cancel("p/data")
    s.close()
    assert inst["status"] == "booting"
    v = open_view(home, world["profiles"])
    listing = list_instances(v)
    (row,) = listing.orphans
    assert (row["owner"], row["owner_state"], row["known"]) == ("p.data.1", "cancelled", True)
    out = []
    assert command(v, stop=True, log=out.append) == 0
    assert inst["status"] == "terminated"
    assert "ORPHAN: attempt p.data.1 is cancelled" in out[0] and out[1] == "lam: gwi-p.data.1: stopped"
    assert list_instances(v).instances == []


def test_the_hourly_sweep_stops_what_ended_attempts_left_and_nothing_this_state_never_knew(world, tmp_path):
    st, home = world["st"], tmp_path / "home"
    s = submit(world, home)
    st.faults = [500]  # the cancel's terminate fails: this state's attempt ended, its instance bills on
    s.cancel("p/data")
    (mine,) = st.instances.values()
    st.instances["theirs"] = {"id": "theirs", "name": "gwi-q.other.1", "status": "active", "_polls": 0,
                              "instance_type": {"name": "gpu_1x_a10"}, "region": {"name": "us-east-1"}}
    out = []
    assert sweep(s, log=out.append) == 1
    assert (mine["status"], st.instances["theirs"]["status"]) == ("terminated", "active")
    assert out == ["lam: gwi-p.data.1 (attempt p.data.1 cancelled): stopped"]
    s.close()


def test_a_fresh_state_sees_every_gwi_instance_as_an_orphan(world, tmp_path):
    st = world["st"]
    submit(world, tmp_path / "home").close()
    st.instances["other"] = {"id": "other", "name": "someone-elses", "status": "active", "_polls": 0,
                             "instance_type": {"name": "gpu_1x_a10"}, "region": {"name": "us-east-1"}}
    v = open_view(tmp_path / "fresh-home", world["profiles"])  # GWI_HOME reset: nothing recorded here
    listing = list_instances(v)
    (row,) = listing.instances  # not the instance without gwi's name
    assert (row["name"], row["orphan"], row["known"]) == ("gwi-p.data.1", True, False)
    (done,) = stop_orphans(v, listing)
    assert done[1] is None
    assert [i["status"] for i in st.instances.values()] == ["terminated", "active"]


def test_a_listing_that_fails_says_so_and_stops_nothing(world, tmp_path):
    world["st"].faults = ["hang"]  # the API accepts and never answers: within its timeout, an error
    out = []
    t0 = time.monotonic()
    assert command(open_view(tmp_path / "home", world["profiles"]), stop=True, log=out.append) == 1
    assert time.monotonic() - t0 < 10
    assert out[0].startswith("no machines launched by gwi are running\n"
                             "lam: not listed: lam: GET /instances at http://127.0.0.1:")
    assert out[0].endswith(": no answer (ReadTimeout)")


def test_a_local_job_nobody_tracks_is_an_orphan_and_only_this_homes_jobs_are_listed(world, tmp_path):
    home = tmp_path / "home"
    ad = Scheduler(home, profiles=world["profiles"]).adapter("here")
    mine, theirs = [], []
    for root, into in ((home, mine), (tmp_path / "other-home", theirs)):
        req = LaunchRequest(attempt_id="q.sleep.1", job="q/sleep", kind="synth", argv=["sleep", "60"],
                            env={"GWI_ATTEMPT": "q.sleep.1"}, store_url=world["store"],
                            heartbeat_url=world["store"] + "/hb.json", workdir=str(root / "attempts" / "q.sleep.1"))
        into.append(ad.launch(req))
    try:
        deadline = time.monotonic() + 10
        v = open_view(home, world["profiles"])
        while not [i for i in list_instances(v, ["here"]).instances]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        (row,) = list_instances(v, ["here"]).instances  # the other home's job is not ours to list
        assert (row["id"], row["attempt_id"], row["orphan"]) == (f"pgid:{mine[0]['pid']}", "q.sleep.1", True)
        assert stop_orphans(v, list_instances(v, ["here"]))[0][1] is None
        deadline = time.monotonic() + 10
        while live_group(mine[0]["pid"]):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert live_group(theirs[0]["pid"])
    finally:
        for h in mine + theirs:
            try:
                os.killpg(h["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
