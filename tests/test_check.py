"""``gwi check``: credentials found where users keep them (never printed), a live call to each API
(fake Kaggle and Lambda servers on 127.0.0.1, behind the clients users run), the store written to."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .fake_kaggle import KaggleState, serve as serve_kaggle
from .fake_lambda import LambdaState, serve as serve_lambda

GWI = shutil.which("gwi", path=str(Path(sys.executable).parent)) or "gwi"


@pytest.fixture
def world(tmp_path):
    """A user's home with nothing set, gwi's home with profiles for the fake servers."""
    kst = KaggleState(tmp_path / "kaggle", "alice", "kaggle-key-xyz", {})
    ksrv, kurl = serve_kaggle(kst)
    lst = LambdaState("lambda-key-123")
    lsrv, lurl = serve_lambda(lst)
    home = tmp_path / "gwi-home"
    (home / "platforms").mkdir(parents=True)
    (home / "platforms" / "kaggle.yaml").write_text(json.dumps({
        "adapter": "kaggle", "gpus": 1, "credentials": ["KAGGLE_USERNAME", "KAGGLE_KEY"],
        "options": {"api_endpoint": kurl, "machine_shape": "NvidiaTeslaT4"}}))
    (home / "platforms" / "lambda.yaml").write_text(json.dumps({
        "adapter": "lambda", "gpus": 1, "credentials": ["LAMBDA_API_KEY"],
        "options": {"api_url": lurl, "instance_types": ["gpu_1x_a10", "gpu_8x_h100"],
                    "ssh_private_key": str(tmp_path / "id_test")}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "LAMBDA_", "AWS_"))}
    env.update(HOME=str(tmp_path / "user"), GWI_HOME=str(home), XDG_CONFIG_HOME=str(tmp_path / "user" / ".config"))
    (tmp_path / "user").mkdir()
    yield {"env": env, "user": tmp_path / "user", "tmp": tmp_path}
    kst.stop_all()
    ksrv.shutdown()
    lst.release.set()
    lsrv.shutdown()


def gwi_check(env, *args):
    return subprocess.run([GWI, "check", "--deadline", "5", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_kaggle_json_alone_is_found_and_used_and_no_secret_is_printed(world):
    r = gwi_check(world["env"])
    assert "✗ no Kaggle credentials: KAGGLE_USERNAME/KAGGLE_KEY not set and no " in r.stdout, r.stdout
    kdir = world["user"] / ".kaggle"
    kdir.mkdir()
    (kdir / "kaggle.json").write_text(json.dumps({"username": "alice", "key": "kaggle-key-xyz"}))
    (kdir / "kaggle.json").chmod(0o600)
    r = gwi_check(world["env"])
    out = r.stdout
    assert f"✓ credentials in {kdir / 'kaggle.json'} (user alice)" in out, out
    assert "✓ Kaggle API answers as alice" in out and "NvidiaTeslaT4" in out
    assert "kaggle-key-xyz" not in out + r.stderr
    # a wrong key fails the live call, with its fix; a token others can read is named with its fix
    (kdir / "kaggle.json").write_text(json.dumps({"username": "alice", "key": "wrong-key-000"}))
    out = gwi_check(world["env"]).stdout
    assert "✗ Kaggle API: " in out and "fix: check the token (kaggle.com > Settings > API)" in out, out
    assert "wrong-key-000" not in out
    (kdir / "kaggle.json").chmod(0o644)
    out = gwi_check(world["env"]).stdout
    assert f"✗ {kdir / 'kaggle.json'} can be read by other users" in out and f"fix: chmod 600 {kdir / 'kaggle.json'}" in out


def test_lambda_key_file_ssh_key_and_capacity_and_the_store(world, moto_server):
    env = dict(world["env"])
    out = gwi_check(env).stdout
    assert "✗ no Lambda API key: LAMBDA_API_KEY not set and no ~/.lambda_cloud/lambda_keys" in out, out
    (world["user"] / ".lambda_cloud").mkdir()
    (world["user"] / ".lambda_cloud" / "lambda_keys").write_text("api_key = lambda-key-123\n")
    out = gwi_check(env).stdout
    assert "✓ API key in ~/.lambda_cloud/lambda_keys" in out, out
    assert f"✗ SSH key {world['tmp'] / 'id_test'} not found" in out and "gpu_1x_a10" not in out  # no live call yet
    (world["tmp"] / "id_test").write_text("not really a key\n")
    r = gwi_check(env, "--json")
    lam = next(s for s in json.loads(r.stdout) if s["name"] == "lambda")
    whats = [f["what"] for f in lam["findings"]]
    assert lam["ok"] is False and "gpu_1x_a10 (gpu_1x_a10, $0.75/h): capacity in us-east-1" in whats, whats
    assert any(w.startswith("gpu_8x_h100: not offered by Lambda") for w in whats)
    assert "lambda-key-123" not in r.stdout
    # the store: an S3 bucket without credentials, then with them (a real round trip to moto)
    env.update(AWS_ENDPOINT_URL=moto_server, AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
               AWS_CONFIG_FILE=str(world["tmp"] / "none"), AWS_SHARED_CREDENTIALS_FILE=str(world["tmp"] / "none"))
    r = gwi_check(env, "--store", "s3://check-bucket")
    assert r.returncode == 1 and "✗ no AWS credentials for the store" in r.stdout, r.stdout
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    import boto3

    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="check-bucket")
    r = gwi_check(env, "--store", "s3://check-bucket")
    assert r.returncode == 0 and "✓ AWS credentials from env" in r.stdout and "✓ writable: put, get and delete" in r.stdout, \
        r.stdout
    assert "2 platform(s) ready: colab, local" in r.stdout  # lambda: a type it asks for is not offered
