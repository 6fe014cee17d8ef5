"""A plan's refine over shards: four shard jobs on two local platforms (real ``gwi refine``
processes), one killed after its first file; it moves to the other platform, resumes from the rows it
saved in the store, and the merge job joins the parts over the start into a complete submission."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from gwi.adapters.base import load_profiles
from gwi.data.shards import ShardedDataset
from gwi.data.synth import synthesize
from gwi.predict import HEADER, check_submission, read_submission, rows_csv
from gwi.runs import Run, run_url
from gwi.scheduler import Scheduler
from gwi.spec import load_spec

from .conftest import run_until

pytestmark = pytest.mark.slow

PROFILE = "adapter: local\ncapacity: 1\nstart_timeout_s: 120\noptions: {runtime: process, grace_s: 2}\n"

PLAN = """name: fix
store: {store}
jobs:
  - name: refine
    kind: refine
    init: {init}
    test: t
    shards: 4
    backend: deepwave
    platforms: [local-a, local-b]
    heartbeat_s: 0.5
    limits: {{stall_s: 60}}
    config: {{iterations: 8, bands: [10, 0], batch_size: 1}}
"""


def test_refine_over_four_shards_survives_a_kill_and_merges(tmp_path, monkeypatch):
    root = tmp_path / "store"
    store = f"file://{root}"
    synthesize(["FlatVel_A", "CurveVel_A"], 4, store, "t", seed=21, batch_size=8, progress=False, backend="deepwave")
    ds = ShardedDataset(root / "datasets" / "t")
    oids = [f"{i:06d}" for i in range(len(ds))]
    truth = np.stack([np.asarray(ds[i][1], np.float32).reshape(70, 70) for i in range(len(ds))])
    start = np.stack([gaussian_filter(v, 3.0) * 1.03 for v in truth]).clip(1500, 4500)
    init = tmp_path / "start.csv"
    init.write_text(HEADER + "\n" + rows_csv(oids, start))

    plat = tmp_path / "platforms"
    plat.mkdir()
    for name in ("local-a", "local-b"):
        (plat / f"{name}.yaml").write_text(PROFILE)
    monkeypatch.setenv("GWI_PLATFORMS", str(plat))
    # two refine processes share the 2 CI cores: one thread each, or deepwave's OpenMP collapses
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    (tmp_path / "fix.yaml").write_text(PLAN.format(store=store, init=f"file://{init}"))
    s = Scheduler(tmp_path / "home", profiles=load_profiles([plat]))
    try:
        spec = load_spec(tmp_path / "fix.yaml", profiles=s.profiles)
        assert [j.name for j in spec.jobs] == ["refine-s1", "refine-s2", "refine-s3", "refine-s4", "refine"]
        s.submit(spec)

        def first_file_saved():
            for a in s.state.active_attempts():
                p = json.loads(a["progress"]) if a["progress"] else {}
                if p.get("done") == 1 and p.get("pid"):
                    return a
            return None

        victim = run_until(s, first_file_saved, 180)
        os.kill(json.loads(victim["progress"])["pid"], signal.SIGKILL)  # the refine process dies mid-shard
        run_until(s, lambda: s.state.job("fix/refine")["state"] in ("succeeded", "failed"), 300)
        assert s.state.job("fix/refine")["state"] == "succeeded", s.state.job("fix/refine")["reason"]
        killed = s.state.job(victim["job_id"])
        tries = s.state.attempts(victim["job_id"])
    finally:
        for a in s.state.active_attempts():
            s.adapter(a["platform"]).cancel(json.loads(a["handle"]))
        s.close()

    # the killed shard went on elsewhere from the file it had saved, not from scratch
    assert killed["state"] == "succeeded" and len(tries) == 2
    assert (tries[0]["state"], tries[0]["exit_code"]) == ("failed", 137)
    assert tries[1]["platform"] != tries[0]["platform"]
    log = Path(s.home, "attempts", tries[1]["id"], "log").read_text()
    assert "resuming: 1 of 2 files already refined" in log, log[-2000:]
    # the merge: every file once, each refined (moved from its start), work files gone from the store
    out = Path(Run(run_url(store, "fix", "refine")).submission_url[len("file://"):])
    summary, problems = check_submission(out)
    assert problems == [] and summary["oids"] == len(oids)
    refined = read_submission(out, oids)
    assert all(np.abs(refined[o] - read_submission(init, [o])[o]).max() > 1.0 for o in oids)
    for i in range(1, 5):
        part = Path(Run(run_url(store, "fix", f"refine-s{i}")).submission_url[len("file://"):])
        assert part.is_file() and not part.with_name(part.name + ".partial").exists()
        assert part.with_name(part.name + ".misfit.csv").read_text().count("\n") == 1 + 2
