"""``kind: run``: a team's own command as a plan job, run by ``gwi exec`` on a platform like any other."""

from __future__ import annotations

import json
from pathlib import Path

from gwi.adapters.base import load_profiles
from gwi.scheduler import Scheduler
from gwi.spec import load_spec

from .conftest import run_until

SCRIPT = """
import os, pathlib, sys
out = pathlib.Path(os.environ["GWI_RUN"].removeprefix("file://"))
out.mkdir(parents=True, exist_ok=True)
(out / "features.txt").write_text("made by a plan's own script")
print("features written for", os.environ["GWI_STORE"])
sys.exit(int(sys.argv[1]))
"""


def test_a_plans_own_command_runs_writes_to_its_run_and_fails_over(tmp_path, monkeypatch):
    script = tmp_path / "features.py"
    script.write_text(SCRIPT)
    plat = tmp_path / "platforms"
    plat.mkdir()
    for name in ("first", "second"):
        (plat / f"{name}.yaml").write_text("adapter: local\ncapacity: 1\noptions: {runtime: process, grace_s: 2}\n")
    monkeypatch.setenv("GWI_PLATFORMS", str(plat))
    store = f"file://{tmp_path}/store"
    (tmp_path / "own.yaml").write_text(f"""name: own
store: {store}
jobs:
  - {{name: ok, kind: run, argv: [python3, {script}, 0], platforms: [first], heartbeat_s: 0.5}}
  - {{name: bad, kind: run, argv: [python3, {script}, 3], platforms: [first, second], heartbeat_s: 0.5,
     limits: {{retries: 0}}}}
""")
    s = Scheduler(tmp_path / "home", profiles=load_profiles([plat]))
    try:
        spec = load_spec(tmp_path / "own.yaml", profiles=s.profiles)
        assert spec.jobs[0].argv[:2] == ["gwi", "exec"] and spec.jobs[0].argv[-3:] == ["python3", str(script), "0"]
        s.submit(spec)
        run_until(s, lambda: all(s.state.job(f"own/{j}")["state"] in ("succeeded", "failed") for j in ("ok", "bad")), 120)
        assert s.state.job("own/ok")["state"] == "succeeded", s.state.job("own/ok")["reason"]
        assert f"features written for {store}" in s.logs("own/ok")[1]
        assert Path(tmp_path, "store", "runs", "own", "ok", "features.txt").read_text() == "made by a plan's own script"
        # a failing command fails its attempt with its status, and the job moves to the next platform
        tries = s.state.attempts("own/bad")
        assert s.state.job("own/bad")["state"] == "failed" and sorted(t["platform"] for t in tries) == ["first", "second"]
        assert [t["exit_code"] for t in tries] == [3, 3]
        beat = json.loads(Path(tmp_path, "store", "runs", "own", "ok", "attempts", "1", "progress.json").read_text())
        assert beat["state"] == "succeeded" and beat["command"].startswith("exec")
    finally:
        for a in s.state.active_attempts():
            s.adapter(a["platform"]).cancel(json.loads(a["handle"]))
        s.close()
