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


LEAKY = """
import os, sys
print("key is", os.environ["AWS_SECRET_ACCESS_KEY"], "and", os.environ["WANDB_API_KEY"], flush=True)
print("lambda:", os.environ.get("LAMBDA_API_KEY", "not given"), flush=True)  # another platform's: scrubbed
sys.exit("failed with " + os.environ["AWS_SECRET_ACCESS_KEY"])
"""


def test_secrets_a_job_prints_are_masked_everywhere_gwi_records_or_shows_them(tmp_path, monkeypatch):
    """Issue 27: a job that echoes the secrets gwi handed it had them copied into state.db (events,
    end reasons), the console, gwi status, history, logs and the dashboard."""
    import sqlite3
    import subprocess
    import sys

    from gwi.dashboard import create_app

    secrets = {"AWS_SECRET_ACCESS_KEY": "aws-SECRET-value-0123456789", "LAMBDA_API_KEY": "sk-lambda-SECRET-42",
               "WANDB_API_KEY": "wandb-SECRET-abcdef"}  # a local job inherits this shell's variables
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    script = tmp_path / "leaky.py"
    script.write_text(LEAKY)
    home = tmp_path / "home"
    monkeypatch.setenv("GWI_HOME", str(home))
    plat = home / "platforms"  # the user's own profiles: trusted
    plat.mkdir(parents=True)
    (plat / "box.yaml").write_text("adapter: local\ncapacity: 1\noptions: {runtime: process, grace_s: 2}\n")
    (plat / "lam.yaml").write_text("adapter: local\ncredentials: [LAMBDA_API_KEY]\n")  # another platform's key
    (tmp_path / "leak.yaml").write_text(f"""name: leak
store: file://{tmp_path}/store
jobs:
  - {{name: echo, kind: run, argv: [python3, {script}], platforms: [box], heartbeat_s: 0.5, limits: {{retries: 0}}}}
""")
    s = Scheduler(home, profiles=load_profiles([plat]))
    try:
        s.submit(load_spec(tmp_path / "leak.yaml", profiles=s.profiles))
        run_until(s, lambda: s.state.job("leak/echo")["state"] in ("succeeded", "failed"), 120)
        assert s.state.job("leak/echo")["state"] == "failed"
        shown = s.logs("leak/echo")[1]
        assert "key is *** and ***" in shown and "lambda: not given" in shown
    finally:
        s.close()
    gwi = [sys.executable, "-m", "gwi"]
    printed = "".join(subprocess.run(gwi + args, capture_output=True, text=True, timeout=60).stdout
                      for args in (["status"], ["status", "--json"], ["status", "leak/echo", "--json"],
                                   ["history", "leak/echo", "--json"], ["logs", "leak/echo"]))
    assert "***" in printed
    app = create_app(home)
    app.testing = True
    c = app.test_client()
    printed += "".join(c.get(u).get_data(as_text=True) for u in ("/", "/live", "/api/status", "/job/leak/echo",
                                                                  "/api/job/leak/echo"))
    db = sqlite3.connect(home / "state.db")
    recorded = "\n".join(str(v) for table in ("jobs", "attempts", "events")
                         for row in db.execute(f"SELECT * FROM {table}") for v in row)
    db.close()
    assert "failed with ***" in recorded
    for name, value in secrets.items():
        assert value not in printed, f"{name} shown"
        assert value not in recorded, f"{name} recorded in state.db"
