"""Shared fixtures: a real S3 endpoint over HTTP (moto's standalone server) and small Kaggle folders."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(extra_env: dict | None = None):
    """moto's standalone server as a separate process on 127.0.0.1; returns (proc, url)."""
    port = free_port()
    env = {**os.environ, **(extra_env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("moto server exited at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto server did not start in 30 s")


@pytest.fixture(scope="session")
def moto_server():
    proc, url = start_moto()
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3(moto_server, monkeypatch):
    """A fresh bucket on the moto server, with the standard AWS variables pointing at it."""
    import boto3

    import gwi.store

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    gwi.store._CLIENTS.clear()
    bucket = f"gwi-test-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    yield f"s3://{bucket}"
    gwi.store._CLIENTS.clear()


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Keep every test's cache and default store inside its tmp dir."""
    monkeypatch.setenv("GWI_HOME", str(tmp_path / "gwi-home"))
    monkeypatch.setenv("GWI_CACHE", str(tmp_path / "gwi-cache"))
    # a dead store in a test should fail in seconds, not wait out gwi's default 5 minutes; tests of
    # the waiting set their own patience
    monkeypatch.setenv("GWI_STORE_PATIENCE_S", "5")


@pytest.fixture
def proxied(s3, monkeypatch):
    """(bucket URL, proxy): the S3 store reached only through a TcpProxy in front of moto."""
    import gwi.store

    from .faults import TcpProxy

    host, port = os.environ["AWS_ENDPOINT_URL"].rsplit("/", 1)[-1].split(":")
    with TcpProxy(host, int(port)) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        gwi.store._CLIENTS.clear()
        yield s3, proxy
    gwi.store._CLIENTS.clear()


def run_until(s, cond, timeout: float, interval: float = 0.2):
    """Run scheduler passes until ``cond()`` is true (its value is returned); on timeout, fail with
    every event so far, which says what the scheduler saw."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s.reconcile()
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s; events:\n" + "\n".join(
        f"{e['job_id']} {e['kind']} {e['message']}" for e in s.state.events()))


def make_samples(rng, n: int):
    """Seismic-like float32 (n,5,1000,70) and velocity (n,1,70,70) in 1500..4500 m/s."""
    x = (rng.standard_normal((n, 5, 1000, 70)) * rng.uniform(0.5, 8)).astype(np.float32)
    y = rng.uniform(1500, 4500, (n, 1, 70, 70)).astype(np.float32)
    return x, y


def write_kaggle(root: Path, spec: dict, seed: int = 0, velocity_3d: bool = False) -> dict:
    """Build a Kaggle-layout train folder: ``spec`` maps family -> list of file sample counts.

    Families ending in Fault use the ``seisN_1_0.npy``/``velN_1_0.npy`` style, others ``data/model``.
    Returns {family: [(x, y), ...]} with the arrays written, for comparisons.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for fam, counts in spec.items():
        d = root / "train_samples" / fam
        out[fam] = []
        for k, n in enumerate(counts, start=1):
            x, y = make_samples(rng, n)
            yw = y[:, 0] if velocity_3d else y
            if "Fault" in fam:
                d.mkdir(parents=True, exist_ok=True)
                np.save(d / f"seis{k}_1_0.npy", x)
                np.save(d / f"vel{k}_1_0.npy", yw)
            else:
                (d / "data").mkdir(parents=True, exist_ok=True)
                (d / "model").mkdir(parents=True, exist_ok=True)
                np.save(d / "data" / f"data{k}.npy", x)
                np.save(d / "model" / f"model{k}.npy", yw)
            out[fam].append((x, y))
    return out


@pytest.fixture
def kaggle_dir(tmp_path):
    root = tmp_path / "kaggle"
    arrays = write_kaggle(root, {"FlatVel_A": [3, 2], "CurveFault_B": [2]})
    return root, arrays
