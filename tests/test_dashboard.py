"""gwi dashboard: the page as headless Chromium renders it after a real dispatch, and the app's
routes (fragments, JSON, curves, errors) through Flask's test client."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gwi.dashboard import create_app
from gwi.runs import EVALUATION, WORST, run_url
from gwi.scheduler import Scheduler
from gwi.spec import load_spec
from gwi.store import open_store
from gwi.tracking import CURVES

REPO = Path(__file__).resolve().parents[1]
GWI = [sys.executable, "-m", "gwi"]
CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.fixture
def chromium():
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the browser test: no chromium on PATH (.ci/run installs it)")
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    return CHROMIUM


def render(browser: str, url: str) -> str:
    """The DOM after the page's scripts ran, as a real browser builds it."""
    r = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        f"--user-data-dir={Path(os.environ['GWI_HOME']).parent / 'chromium'}",
                        "--virtual-time-budget=5000", "--dump-dom", url],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "<html" in r.stdout, r.stderr[-2000:]
    return r.stdout


def test_chromium_renders_the_demo_jobs_after_a_dispatch_without_follow(tmp_path, chromium):
    cwd = tmp_path / "fresh"
    cwd.mkdir()
    shutil.copytree(REPO / "jobs", cwd / "jobs")
    d = subprocess.run(GWI + ["dispatch", "jobs/demo.yaml"], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert d.returncode == 0, d.stdout[-2000:] + d.stderr[-2000:]
    server = subprocess.Popen(GWI + ["dashboard", "--port", "0", "--refresh", "1"], cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        line = server.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url, line
        dom = render(chromium, url.group(0))
        # nothing reconciles without a watcher, so the states the browser shows are the state's now
        st = subprocess.run(GWI + ["status", "--json"], cwd=cwd, capture_output=True, text=True, timeout=60)
        want = {r["job"]: r["state"] for r in json.loads(st.stdout)}
        shown = dict(re.findall(r'data-job="([^"]+)" data-state="([a-z]+)"', dom))
        assert set(shown) == {f"demo/{n}" for n in ("data", "test-data", "inversionnet", "heat-kernel", "ensemble",
                                                    "submission")}
        assert {j: "running" if s == "starting" else s for j, s in shown.items()} == want
        for name in ("inversionnet", "heat-kernel", "submission"):
            assert f">{name}</a>" in dom
        # the page's script fetched the live fragment and swapped it in: it refreshes itself
        assert re.search(r'data-refreshes="[1-9]', dom) and re.search(r'id="updated"[^>]*>updated ', dom), dom[:3000]
        assert ">local<" in dom and "plan demo" in dom
    finally:
        server.terminate()
        server.wait(timeout=30)
        subprocess.run(GWI + ["cancel", "demo/data"], cwd=cwd, capture_output=True, timeout=120)


PLAN = """
name: p
store: {store}
defaults: {{platforms: [box]}}
jobs:
  - name: data
    kind: synth
    dataset: d
    families: [FlatVel_A]
    samples: 8
  - name: fit
    kind: train
    model: inversionnet
    preset: tiny
    dataset: d
  - name: score
    kind: evaluate
    members: [fit]
    dataset: d
"""


@pytest.fixture
def client(tmp_path, monkeypatch):
    plat = tmp_path / "platforms"
    plat.mkdir()
    (plat / "box.yaml").write_text("adapter: local\ncapacity: 1\n")
    monkeypatch.setenv("GWI_PLATFORMS", str(plat))
    store = f"file://{tmp_path}/store"
    spec = tmp_path / "p.yaml"
    spec.write_text(textwrap.dedent(PLAN.format(store=store)).lstrip())
    home = tmp_path / "home"
    s = Scheduler(home)
    s.submit(load_spec(spec))
    s.close()
    app = create_app(home)
    app.testing = True
    return app.test_client(), store


def test_the_page_the_fragment_and_the_json_show_the_same_jobs(client):
    c, _ = client
    page = c.get("/").get_data(as_text=True)
    assert "<script>" in page and 'data-job="p/data" data-state="waiting"' in page
    assert 'data-job="p/fit" data-state="waiting"' in page and "No scheduler pass yet" in page
    frag = c.get("/live").get_data(as_text=True)
    assert "<script>" not in frag and "<html" not in frag and 'data-job="p/fit"' in frag
    assert [(r["job"], r["state"]) for r in c.get("/api/status").get_json()] == [
        ("p/data", "waiting"), ("p/fit", "waiting"), ("p/score", "waiting")]
    job = c.get("/job/p/fit").get_data(as_text=True)
    assert "p/fit" in job and "dispatched" in job
    assert c.get("/job/p/fit?fragment=1").get_data(as_text=True).lstrip().startswith("<p>train")
    assert c.get("/api/job/fit").get_json()["definition"]["params"]["model"] == "inversionnet"  # a bare name resolves


def test_unknown_jobs_are_404_naming_the_known_ones(client):
    c, _ = client
    r = c.get("/job/p/nope")
    assert r.status_code == 404 and "no job &#39;p/nope&#39;; known: p/data, p/fit, p/score" in r.get_data(as_text=True)
    assert c.get("/api/job/nope").status_code == 404


def test_curves_come_from_the_runs_curves_png_once_training_published_it(client):
    c, store = client
    r = c.get("/curves/p/fit.png")
    assert r.status_code == 404 and CURVES in r.get_data(as_text=True)
    png = b"\x89PNG\r\n\x1a\n" + b"x" * 32
    open_store(run_url(store, "p", "fit")).put_bytes(CURVES, png)
    r = c.get("/curves/p/fit.png")
    assert (r.status_code, r.mimetype, r.data) == (200, "image/png", png)
    assert r.headers["Cache-Control"] == "no-store"


def test_a_busy_port_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run(GWI + ["dashboard", "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and f"cannot listen on 127.0.0.1:{port}" in r.stderr and "--port 0" in r.stderr
    assert "Traceback" not in r.stderr


def test_an_evaluate_jobs_page_shows_its_report_and_worst_samples(client):
    c, store = client
    assert "<h2>evaluation</h2>" not in c.get("/job/p/score").get_data(as_text=True)  # nothing written yet
    run = open_store(run_url(store, "p", "score"))
    run.put_bytes(EVALUATION, json.dumps({"metrics": {
        "overall": {"samples": 8, "mae": 151.25, "rmse": 201.5, "ssim": 0.8123},
        "FlatVel_A": {"samples": 8, "mae": 151.25, "rmse": 201.5, "ssim": 0.8123}}}).encode())
    run.put_bytes(WORST, b"\x89PNG\r\n\x1a\nworst")
    page = c.get("/job/p/score").get_data(as_text=True)
    rows = re.findall(r'<tr class="evaluation"><td>(\w+)</td><td class="num">(\d+)</td><td class="num">([\d.]+)</td>', page)
    assert rows == [("FlatVel_A", "8", "151.2"), ("overall", "8", "151.2")] and "0.812" in page  # overall last
    assert c.get("/worst/p/score.png").data.endswith(b"worst") and 'src="../../worst/p/score.png"' in page


# -- who may read it (issue 27) -----------------------------------------------------------------------

def test_requests_for_another_host_are_refused(client):
    """A web page that rebinds its own name to 127.0.0.1 sends its own name as Host: refused."""
    c, _ = client
    for host in ("attacker.example", "attacker.example:8765", "127.0.0.1.attacker.example", "localhost.evil"):
        r = c.get("/api/status", headers={"Host": host})
        assert r.status_code == 403 and "is not this dashboard&#39;s address" in r.get_data(as_text=True), host
    for host in ("localhost", "localhost:8765", "127.0.0.1:8765", "[::1]:8765", "LOCALHOST:1"):
        assert c.get("/api/status", headers={"Host": host}).status_code == 200, host


def test_a_token_guards_a_dashboard_on_another_address(tmp_path):
    app = create_app(tmp_path / "home", host="192.0.2.7", token="s3cret")
    app.testing = True
    c = app.test_client()
    assert c.get("/api/status", headers={"Host": "192.0.2.7:8765"}).status_code == 401
    assert c.get("/api/status?token=wrong", headers={"Host": "192.0.2.7:8765"}).status_code == 401
    assert c.get("/?token=s3cret", headers={"Host": "192.0.2.7:8765"}).status_code == 200
    assert c.get("/api/status", headers={"Host": "192.0.2.7:8765"}).status_code == 200  # the cookie it set
    assert c.get("/api/status", headers={"Host": "evil.example"}).status_code == 403


def test_gwi_dashboard_on_all_addresses_prints_a_token_and_wants_it(tmp_path):
    import urllib.error
    import urllib.request

    env = {**os.environ, "GWI_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(GWI + ["dashboard", "--host", "0.0.0.0", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = ""
        while "gwi dashboard on" not in line:
            line = proc.stdout.readline()
            assert line, "the dashboard ended before printing its URL"
        m = re.search(r"http://0\.0\.0\.0:(\d+)/\?token=([\w-]+)", line)
        assert m, line
        port, token = m.groups()
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=10)
        assert e.value.code == 401
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=10) as r:
            assert r.status == 200 and json.loads(r.read()) == []
    finally:
        proc.terminate()
        proc.wait(timeout=30)
