"""The plan's job specs (jobs/*.yaml) validate and dry-run against an S3 endpoint holding their bucket."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
import yaml

from gwi.cli import main

JOBS = Path(__file__).resolve().parents[1] / "jobs"


@pytest.fixture
def bucket(moto_server, monkeypatch, tmp_path):
    import gwi.store

    for k, v in {"AWS_ENDPOINT_URL": moto_server, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    for k in ("KAGGLE_USERNAME", "KAGGLE_KEY", "LAMBDA_API_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    # nor the files Kaggle's and Lambda's tools keep keys in
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle"))
    monkeypatch.setenv("HOME", str(tmp_path))
    gwi.store._CLIENTS.clear()
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    try:
        s3.create_bucket(Bucket="my-gwi-bucket")
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    yield
    gwi.store._CLIENTS.clear()


@pytest.mark.parametrize("name", sorted(p.stem for p in JOBS.glob("*.yaml")))
def test_every_plan_dry_runs(name, bucket, capsys, monkeypatch, tmp_path):
    # a team with its Kaggle and Lambda accounts set up (day 7 runs on Kaggle only, day 2's EGNN asks
    # for an A100, which only Lambda has)
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", "k")
    monkeypatch.setenv("LAMBDA_API_KEY", "l")
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_ed25519").write_text("a key\n")
    assert main(["dispatch", str(JOBS / f"{name}.yaml"), "--dry-run"]) == 0, capsys.readouterr().out[-3000:]
    out = capsys.readouterr().out
    plan_name = yaml.safe_load((JOBS / f"{name}.yaml").read_text())["name"]
    assert out.startswith(f"plan for {plan_name} ")


def test_day2_plan_says_where_each_job_goes_and_why(bucket, capsys, monkeypatch):
    # no Lambda key: the EGNN, which asks for an A100, has nowhere to run (a problem: exit 1)
    assert main(["dispatch", str(JOBS / "day2.yaml"), "--dry-run"]) == 1
    rows = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines() if ln.split() and ln.split()[0] in
            ("specproj-unet", "heat-kernel", "se3-transformer", "egnn")}
    # no Kaggle or Lambda credentials here: the free Colab notebook goes first, the others say why not
    assert "  colab  " in rows["specproj-unet"] and "kaggle (skip: credentials not set: KAGGLE_USERNAME, KAGGLE_KEY " \
        "(nor in " in rows["specproj-unet"]
    assert "lambda (skip: credentials not set: LAMBDA_API_KEY (nor api_key in ~/.lambda_cloud/lambda_keys))" in rows["egnn"]
    assert "kaggle (skip: needs GPU type A100, has 2x T4)" in rows["egnn"] and "  NONE  " in rows["egnn"]
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", "k")
    assert main(["dispatch", str(JOBS / "day2.yaml"), "--dry-run"]) == 1
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("specproj-unet"))
    assert "  kaggle  " in line and "30.0 h quota left" in line and "colab > local" in line


def test_dry_run_shows_the_timeline_against_the_deadline(tmp_path, capsys):
    """Three budgeted trainings on the one local slot, 4 h before the deadline: the dry run says what
    meeting it takes (the least important dropped, the next one's budget cut) and when each job runs."""
    import datetime as dt
    import time

    deadline = dt.datetime.fromtimestamp(time.time() + 4 * 3600, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    plan = tmp_path / "tight.yaml"
    plan.write_text(f"""name: tight
store: file://{tmp_path}/store
deadline: {deadline}
defaults: {{platforms: [local], dataset: d, preset: tiny}}
jobs:
  - {{name: main, kind: train, model: inversionnet, priority: 9, config: {{time_budget: 3h}}}}
  - {{name: extra, kind: train, model: inversionnet, priority: 1, config: {{time_budget: 2h}}}}
  - {{name: bonus, kind: train, model: inversionnet, config: {{time_budget: 2h}}}}
""")
    assert main(["dispatch", str(plan), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"deadline {deadline} (in 4.0 h): holds with the changes below" in out, out
    assert "budget cut: extra 2.11 -> 0.84 h" in out
    assert "drop bonus: dropped to meet the deadline (priority 0, the lowest left)" in out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("local "))
    assert "main 0.0-3.2" in line and "extra 3.2-4.0" in line


def test_a_dry_run_without_any_credentials_shows_the_plan_then_the_problems(tmp_path, monkeypatch):
    """No AWS, Kaggle or Lambda credentials at all (and no AWS config): every job and its command is
    printed first, then what will be skipped and the problems; the exit status says there are some."""
    import subprocess
    import sys

    env = {k: v for k, v in __import__("os").environ.items()
           if not k.startswith(("AWS_", "KAGGLE_", "LAMBDA_"))}
    env.update(HOME=str(tmp_path), GWI_HOME=str(tmp_path / "home"), AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true")
    r = subprocess.run([sys.executable, "-m", "gwi", "dispatch", "--dry-run", str(JOBS / "day2.yaml")],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout
    jobs = [j["name"] for j in yaml.safe_load((JOBS / "day2.yaml").read_text())["jobs"]]
    for name in jobs:
        assert f"\n  {name}: gwi train --model " in out
    problems = out.index("problem(s):")
    assert out.index("platforms that will be skipped:") < problems and all(out.index(j) < problems for j in jobs)
    assert "  - store: cannot reach s3://my-gwi-bucket:" in out[problems:] and "no AWS credentials" in out[problems:]
    assert "  - kaggle: credentials not set: KAGGLE_USERNAME, KAGGLE_KEY" in out
