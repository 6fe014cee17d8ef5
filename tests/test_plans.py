"""The plan's job specs (jobs/*.yaml) validate and dry-run against an S3 endpoint holding their bucket."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from gwi.cli import main

JOBS = Path(__file__).resolve().parents[1] / "jobs"


@pytest.fixture
def bucket(moto_server, monkeypatch):
    import gwi.store

    for k, v in {"AWS_ENDPOINT_URL": moto_server, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    for k in ("KAGGLE_USERNAME", "KAGGLE_KEY", "LAMBDA_API_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    gwi.store._CLIENTS.clear()
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    try:
        s3.create_bucket(Bucket="my-gwi-bucket")
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    yield
    gwi.store._CLIENTS.clear()


@pytest.mark.parametrize("name", ["day2", "day5-ensemble", "day7-submit", "demo"])
def test_every_plan_dry_runs(name, bucket, capsys):
    assert main(["dispatch", str(JOBS / f"{name}.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"plan for {name.split('-')[0]} ")


def test_day2_plan_says_where_each_job_goes_and_why(bucket, capsys, monkeypatch):
    assert main(["dispatch", str(JOBS / "day2.yaml"), "--dry-run"]) == 0
    rows = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines() if ln.split() and ln.split()[0] in
            ("specproj-unet", "heat-kernel", "se3-transformer", "egnn")}
    # no Kaggle or Lambda credentials here: the free Colab notebook goes first, the others say why not
    assert "  colab  " in rows["specproj-unet"] and "kaggle (skip: credentials not set: KAGGLE_USERNAME, KAGGLE_KEY)" \
        in rows["specproj-unet"]
    assert "lambda (skip: credentials not set: LAMBDA_API_KEY)" in rows["egnn"]
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", "k")
    assert main(["dispatch", str(JOBS / "day2.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("specproj-unet"))
    assert "  kaggle  " in line and "30.0 h quota left" in line and "colab > local" in line
