"""Safe paths (issue 12 #8) and secrets: no secret value in any artifact of a full fake run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gwi.errors import GwiError
from gwi.paths import UnsafePath, safe_join

# ------------------------------------------------------------------------------------------------
# safe_join


def test_safe_join_keeps_relative_names_inside(tmp_path):
    assert safe_join(tmp_path, "submission.csv") == tmp_path / "submission.csv"
    assert safe_join(tmp_path, "a/b/c.npy") == tmp_path / "a" / "b" / "c.npy"
    assert safe_join(tmp_path, "./a//b.txt") == tmp_path / "a" / "b.txt"
    assert safe_join(str(tmp_path), "x") == tmp_path / "x"  # a str root too
    assert issubclass(UnsafePath, GwiError)


@pytest.mark.parametrize("name, why", [
    ("/etc/passwd", "absolute"),
    ("//etc/passwd", "absolute"),
    ("C:evil.txt", "absolute"),
    ("c:/windows/x", "absolute"),
    ("../outside.txt", "'..'"),
    ("a/../../outside.txt", "'..'"),
    ("a/../b", "'..'"),  # even one that would stay inside: a platform has no reason to send it
    ("..", "'..'"),
    ("a\\..\\..\\b", "backslash"),
    ("..\\x", "backslash"),
    ("ok\x00.txt", "NUL"),
    ("", "non-empty"),
    (".", "folder itself"),
    ("./", "folder itself"),
])
def test_safe_join_refuses_escapes(tmp_path, name, why):
    with pytest.raises(UnsafePath) as e:
        safe_join(tmp_path / "out", name)
    msg = str(e.value)
    assert why in msg
    assert repr(name) in msg and str(tmp_path / "out") in msg  # names the offender and the root


def test_safe_join_refuses_symlinks_leading_out(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "inside").mkdir()
    (root / "escape").symlink_to(outside)  # a folder link pointing out
    (root / "inside" / "file").symlink_to(outside / "victim.txt")  # a final link pointing out
    (root / "alias").symlink_to(root / "inside")  # a link that stays inside is fine
    (root / "loop").symlink_to(root / "loop")
    with pytest.raises(UnsafePath, match="escape.*symlink.*outside"):
        safe_join(root, "escape/victim.txt")
    with pytest.raises(UnsafePath, match="symlink"):
        safe_join(root, "inside/file")
    with pytest.raises(UnsafePath, match="symlink"):
        safe_join(root, "loop/x")
    assert safe_join(root, "alias/new.txt") == root / "alias" / "new.txt"
    assert safe_join(root, "inside/new.txt") == root / "inside" / "new.txt"
    assert not (outside / "victim.txt").exists()


def test_safe_join_root_may_itself_be_a_link(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "sub").mkdir()
    assert safe_join(tmp_path / "link", "sub/f") == tmp_path / "link" / "sub" / "f"
    os.symlink(tmp_path, tmp_path / "real" / "up")
    with pytest.raises(UnsafePath):
        safe_join(tmp_path / "link", "up/f")


# ------------------------------------------------------------------------------------------------
# secrets: a full fake run on three platforms, then every artifact searched for the secret values

SECRETS = {
    "LAMBDA_API_KEY": "sk-gwi-test-SECRET123",
    "KAGGLE_KEY": "kaggle-SECRET-key-456",
    "AWS_ACCESS_KEY_ID": "AKIASECRETID789",
    "AWS_SECRET_ACCESS_KEY": "aws-SECRET-access-0ab",
    "GWI_COLAB_DRIVE_TOKEN": "ya29.SECRET-drive-token",  # no Colab job: it must not travel anywhere
}

PLAN = """defaults: {heartbeat_s: 0.5}
jobs:
  - {name: here, kind: synth, backend: deepwave, dataset: d1, families: [FlatVel_A], samples: 4, platforms: [box]}
  - {name: tr, kind: train, model: inversionnet, preset: tiny, dataset: d1, platforms: [box],
     config: {epochs: 1, batch_size: 2, fold: 0, folds: 2}}
  - {name: far, kind: synth, backend: deepwave, dataset: d2, families: [FlatVel_A], samples: 2, platforms: [lam]}
  - {name: kern, kind: synth, backend: deepwave, dataset: d3, families: [FlatVel_A], samples: 2, platforms: [kg]}
"""


@pytest.fixture
def three_platforms(tmp_path, monkeypatch, s3, moto_server):
    """A local process platform, a fake Lambda (API on 127.0.0.1, a real sshd as the instance) and a
    fake Kaggle that runs the kernels it is pushed; the store is S3 (moto)."""
    from gwi.adapters.base import load_profiles
    from gwi.scheduler import Scheduler

    from .fake_kaggle import KaggleState
    from .fake_kaggle import serve as serve_kaggle
    from .fake_lambda import LambdaState
    from .fake_lambda import serve as serve_lambda
    from .sshd import SSHD, Sshd, stop_remote_jobs

    if SSHD is None:
        pytest.skip("OpenSSH sshd is not installed")
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kcfg"))
    lam = LambdaState(SECRETS["LAMBDA_API_KEY"])
    lam_srv, lam_url = serve_lambda(lam)
    kg = KaggleState(tmp_path / "kaggle", "alice", SECRETS["KAGGLE_KEY"], {  # Kaggle's secret store
        k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")})
    kg_srv, kg_url = serve_kaggle(kg)
    sshd = Sshd(tmp_path / "sshd").start()
    plat = tmp_path / "platforms"
    plat.mkdir()
    (plat / "box.yaml").write_text("adapter: local\ncapacity: 2\nstart_timeout_s: 120\noptions: {runtime: process}\n")
    (plat / "lam.yaml").write_text(json.dumps({"adapter": "lambda", "gpus": 1, "credentials": ["LAMBDA_API_KEY"],
                                               "start_timeout_s": 120, "options": {
        "api_url": lam_url, "instance_types": ["gpu_1x_a10"], "ssh_key_name": "test",
        "ssh_private_key": str(sshd.client_key), "ssh_user": sshd.user, "ssh_port": sshd.port, "runtime": "process",
        "gwi_command": f"{sys.executable} -m gwi", "remote_dir": str(tmp_path / "remote"), "request_timeout_s": 5,
        "poweroff_command": "true",  # never the default `sudo shutdown` here
        "env": {"GWI_CACHE": str(tmp_path / "remote-cache")}}}))
    (plat / "kg.yaml").write_text(json.dumps({"adapter": "kaggle", "gpus": 1, "credentials": ["KAGGLE_USERNAME", "KAGGLE_KEY"],
                                              "start_timeout_s": 120, "options": {"api_endpoint": kg_url,
                                                                                  "wheel_dataset": "alice/gwi-wheels"}}))
    home = tmp_path / "home"
    monkeypatch.setenv("GWI_HOME", str(home))
    s = Scheduler(home, profiles=load_profiles([plat]))
    yield {"s": s, "tmp": tmp_path, "store": s3, "kaggle": kg, "lambda": lam}
    for a in s.state.active_attempts():
        try:
            s.adapter(a["platform"]).cancel(json.loads(a["handle"]))
        except Exception:  # noqa: BLE001 - cleanup only
            pass
    kg.stop_all()
    s.close()
    stop_remote_jobs(tmp_path / "remote")  # the fake instance's job and watchdog
    sshd.stop()
    lam_srv.shutdown()
    kg_srv.shutdown()


def _files_holding(root, needles: dict[str, bytes], skip=()) -> list[str]:
    found = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            if os.path.islink(p) or any(p.startswith(str(s)) for s in skip):
                continue
            try:
                data = open(p, "rb").read()
            except OSError:
                continue
            found += [f"{p}: {var}" for var, value in needles.items() if value in data]
    return found


def test_no_secret_value_in_any_artifact_of_a_full_run(three_platforms):
    from gwi.spec import load_spec
    from gwi.store import open_store

    from .conftest import run_until

    w = three_platforms
    s, tmp = w["s"], w["tmp"]
    p = tmp / "sec.yaml"
    p.write_text(f"name: sec\nstore: {w['store']}\n" + PLAN)
    s.submit(load_spec(p, profiles=s.profiles))
    run_until(s, lambda: all(j["state"] in ("succeeded", "failed") for j in s.state.jobs()), 300)
    states = {j["name"]: j["state"] for j in s.state.jobs()}
    assert states == dict.fromkeys(("here", "tr", "far", "kern"), "succeeded"), [
        (a["platform"], a["end_reason"]) for j in s.state.jobs() for a in s.state.attempts(j["id"])]

    needles = {k: v.encode() for k, v in SECRETS.items()}
    # what the user reads: status, history and logs, as the CLI prints them
    gwi = [sys.executable, "-m", "gwi"]
    printed = "".join(subprocess.run(gwi + args, capture_output=True, text=True, timeout=60).stdout +
                      subprocess.run(gwi + args, capture_output=True, text=True, timeout=60).stderr
                      for args in (["status", "--json"], ["history", "sec/tr"], ["logs", "sec/far"],
                                   ["logs", "sec/kern"], ["logs", "sec/tr"]))
    leaks = [f"gwi output: {k}" for k, v in SECRETS.items() if v in printed]
    # every file here: GWI_HOME (state.db and its WAL, attempt folders, logs, rendered kernels), the
    # cache, the kernels as pushed and run; only Kaggle's own secret store may hold them
    remote = tmp / "remote"
    leaks += _files_holding(tmp, needles, skip=[tmp / "kaggle" / "secrets.json", tmp / "sshd", remote])
    # every object in the store
    store = open_store(w["store"])
    keys = store.list("")
    assert any(k.endswith("manifest.json") for k in keys) and any("checkpoints/" in k for k in keys)
    leaks += [f"{w['store']}/{k}: {var}" for k in keys for var, v in needles.items() if v in store.get_bytes(k)]
    # what was sent to Kaggle (the kernel source and metadata)
    pushed = json.dumps(w["kaggle"].pushes).encode()
    leaks += [f"kaggle push: {var}" for var, v in needles.items() if v in pushed]
    assert not leaks, "secret values found in:\n" + "\n".join(leaks)
    # the instance needed the store's credentials while the job ran, not after: a stopped (not
    # terminated) instance, or a disk image of it, must not keep them
    left = _files_holding(remote, needles)
    assert not left, "secret values left on the instance after the job:\n" + "\n".join(left)
