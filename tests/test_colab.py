"""The Colab adapter: the notebook validates, holds no secret, and its code, run in a fresh
interpreter (with Colab's ``userdata`` faked), really runs the job and heartbeats; uploaded to a
fake Google Drive, followed by the scheduler from pending to its end, and cancelled by a flag."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import nbformat
import pytest

from gwi.adapters.base import LaunchRequest, load_profiles
from gwi.adapters.colab import ColabAdapter
from gwi.scheduler import Scheduler
from gwi.spec import load_spec
from gwi.store import open_store

from .fake_http import JSONHandler

ACCESS, SECRET = "AKIACOLABTESTSECRET", "colab-s3cr3t-never-in-a-notebook"


def fake_colab(root: Path, secrets: dict) -> dict:
    """An environment in which ``from google.colab import userdata`` works as in Colab."""
    pkg = root / "mod" / "google" / "colab"
    pkg.mkdir(parents=True)
    (root / "mod" / "google" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (root / "secrets.json").write_text(json.dumps(secrets))
    (pkg / "userdata.py").write_text(
        "import json, os\n"
        "def get(name):\n"
        "    s = json.load(open(os.environ['FAKE_COLAB_SECRETS']))\n"
        "    if name not in s:\n"
        "        raise KeyError(name)\n"
        "    return s[name]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # a Colab runtime has none of ours
    env.update(PYTHONPATH=str(root / "mod"), FAKE_COLAB_SECRETS=str(root / "secrets.json"))
    return env


def code_of(nb) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


def profile(plat: Path, **options) -> dict:
    (plat / "colab.yaml").write_text(json.dumps({"adapter": "colab", "gpu": "T4", "gpus": 1, "session_hours": 12, "capacity": 2,
                                                 "start_timeout_s": 120, "options": options}))
    return load_profiles([plat])


def test_the_notebook_validates_holds_no_secret_and_its_code_runs_the_job(tmp_path):
    plat = tmp_path / "platforms"
    plat.mkdir()
    ad = ColabAdapter(profile(plat, install="gwi==0.1.0")["colab"])
    store = f"file://{tmp_path}/store"
    hb = f"{store}/runs/c/data/attempts/1/progress.json"
    req = LaunchRequest(attempt_id="c.data.1", job="c/data", kind="synth",
                        argv=["gwi", "data", "synth", "--out", store, "--name", "d", "--family", "FlatVel_A",
                              "--samples", "2", "--exist-ok"],
                        env={"GWI_ATTEMPT": "c.data.1", "GWI_HEARTBEAT": hb, "GWI_HEARTBEAT_S": "0.2"},
                        store_url=store, heartbeat_url=hb, workdir=str(tmp_path / "w"))
    nb = ad.render(req)
    nbformat.validate(nb)
    assert nb.metadata["accelerator"] == "GPU" and [c.cell_type for c in nb.cells] == ["markdown"] + ["code"] * 3
    text = nbformat.writes(nb)
    assert "gwi==0.1.0" in text and "AWS_SECRET_ACCESS_KEY" in text  # the names, never the values
    env = fake_colab(tmp_path, {"AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET})
    r = subprocess.run([sys.executable, "-c", code_of(nb)], env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "gwi exited with status 0" in r.stdout
    p = json.loads(open_store(f"{store}/runs/c/data/attempts/1").get_bytes("progress.json"))
    assert (p["state"], p["attempt"]) == ("succeeded", "c.data.1") and p["beat"] >= 2
    assert json.loads(Path(tmp_path, "store/datasets/d/manifest.json").read_text())["num_samples"] == 2
    for secret in (ACCESS, SECRET):
        assert secret not in text


class Drive:
    """Google Drive's multipart upload endpoint, enough for the adapter's one call."""

    def __init__(self, token: str):
        self.token, self.files = token, {}
        self.faults: list = []  # what the next uploads get instead: an HTTP status, or "hang"
        self.requests = 0
        self.release = threading.Event()
        me = self

        class H(JSONHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                me.requests += 1
                if me.faults:
                    fault = me.faults.pop(0)
                    if fault == "hang":
                        me.release.wait(30)
                        return
                    return self._send(fault, {"error": {"code": fault, "message": f"scripted {fault}"}})
                if self.headers.get("Authorization") != f"Bearer {me.token}":
                    return self._send(401, {"error": {"code": 401, "message": "Invalid Credentials"}})
                if not self.path.startswith("/upload/drive/v3/files?uploadType=multipart"):
                    return self._send(404, {"error": {"message": "no route"}})
                boundary = self.headers["Content-Type"].split("boundary=")[1]
                parts = body.split(f"--{boundary}".encode())
                meta = json.loads(parts[1].split(b"\r\n\r\n", 1)[1])
                content = parts[2].split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
                fid = f"file{len(me.files) + 1}"
                me.files[fid] = {"meta": meta, "content": content}
                self._send(200, {"id": fid})

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"


def test_uploaded_to_drive_followed_by_heartbeat_and_cancelled_by_flag(tmp_path, monkeypatch, s3, moto_server):
    monkeypatch.setenv("GWI_COLAB_DRIVE_TOKEN", "drive-token")
    drive = Drive("drive-token")
    plat = tmp_path / "platforms"
    plat.mkdir()
    s = Scheduler(tmp_path / "home", profiles=profile(plat, drive_api=drive.url, drive_folder="F1"))
    spec = tmp_path / "c.yaml"
    spec.write_text(f"name: c\nstore: {s3}\ndefaults: {{platforms: [colab], heartbeat_s: 0.5}}\njobs:\n"
                    "  - {name: data, kind: synth, backend: deepwave, dataset: d, families: [FlatVel_A], samples: 2}\n"
                    "  - {name: long, kind: synth, backend: deepwave, dataset: big, families: [CurveVel_B], samples: 4000}\n")
    s.submit(load_spec(spec, profiles=s.profiles))
    s.reconcile()
    launched = [e["message"] for e in s.state.events() if e["kind"] == "launched"]
    assert launched[0] == "attempt 1 on colab: open https://colab.research.google.com/drive/file1 and run all"
    assert drive.files["file1"]["meta"] == {"name": "gwi-c.data.1.ipynb", "mimeType": "application/vnd.google.colaboratory",
                                            "parents": ["F1"]}
    nb = nbformat.reads(drive.files["file1"]["content"].decode(), as_version=4)
    assert s.state.attempts("c/data")[0]["state"] == "pending"  # nobody has opened it yet
    # a person opens the notebook and runs it; its credentials come from Colab's Secrets
    env = fake_colab(tmp_path, {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                                "AWS_ENDPOINT_URL": moto_server, "AWS_DEFAULT_REGION": "us-east-1"})
    run1 = subprocess.Popen([sys.executable, "-c", code_of(nb)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    nb2 = nbformat.reads(drive.files["file2"]["content"].decode(), as_version=4)
    run2 = subprocess.Popen([sys.executable, "-c", code_of(nb2)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            s.reconcile()
            if s.state.jobs()[0]["state"] == "succeeded" and s.state.attempts("c/long")[0]["state"] == "running":
                break
            time.sleep(0.5)
        a = s.state.attempts("c/data")[0]
        assert (a["state"], a["end_reason"]) == ("succeeded", "finished (by its heartbeat)")
        assert run1.wait(timeout=30) == 0
        assert s.cancel("c/long") == "c/long cancelled; attempt 1 on colab stopped"
        assert run2.wait(timeout=30) != 0  # the running gwi saw the flag at its next beat
        p = json.loads(open_store(f"{s3}/runs/c/long/attempts/1").get_bytes("progress.json"))
        assert p["state"] == "cancelled"
    finally:
        import signal

        for r in (run1, run2):  # the notebook and the gwi it started
            try:
                os.killpg(r.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        drive.srv.shutdown()
        s.close()


def test_a_file_store_is_refused_for_colab(tmp_path):
    plat = tmp_path / "platforms"
    plat.mkdir()
    ad = ColabAdapter(profile(plat)["colab"])
    assert ad.reachable_store("file:///x") == "colab: a Colab runtime cannot reach a file:// store; use s3://"
    with pytest.raises(Exception, match="only 'notebook' is supported"):
        ColabAdapter(profile(plat, mode="cli")["colab"])


def test_drive_uploads_retry_what_is_retryable_within_a_deadline_and_the_notebook_is_private(tmp_path, monkeypatch):
    import stat

    from gwi.adapters.base import PlatformError

    monkeypatch.setenv("GWI_COLAB_DRIVE_TOKEN", "drive-token")
    drive = Drive("drive-token")
    plat = tmp_path / "platforms"
    plat.mkdir()
    store = f"file://{tmp_path}/store"

    def launch(n: int, **options):
        ad = ColabAdapter(profile(plat, drive_api=drive.url, **options)["colab"])
        return ad.launch(LaunchRequest(attempt_id=f"c.d.{n}", job="c/d", kind="synth", argv=["gwi", "--version"],
                                       env={}, store_url=store, heartbeat_url=f"{store}/hb{n}.json",
                                       workdir=str(tmp_path / "attempts" / f"c.d.{n}"), hours_limit=1.5))

    try:
        drive.faults = [503, 429]  # Google's advice for both: back off and try again
        h = launch(1)
        assert h["drive_id"] == "file1" and drive.requests == 3
        work = tmp_path / "attempts" / "c.d.1"
        assert stat.S_IMODE(work.stat().st_mode) == 0o700
        assert stat.S_IMODE(Path(h["notebook"]).stat().st_mode) == 0o600
        assert "LIMIT_S = 5400  #" in Path(h["notebook"]).read_text()
        drive.faults = ["hang"] * 10
        t0 = time.monotonic()
        with pytest.raises(PlatformError, match="Google Drive not reachable") as e:
            launch(2, request_timeout_s=1, retry_deadline_s=2)
        assert e.value.kind == "retryable" and time.monotonic() - t0 < 2 + 1 + 1.5
        drive.release.set()
        drive.faults, drive.requests = [400], 0
        with pytest.raises(PlatformError, match="HTTP 400: scripted 400") as e:
            launch(3)
        assert e.value.kind == "config" and drive.requests == 1
    finally:
        drive.release.set()
        drive.srv.shutdown()
