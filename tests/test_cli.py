"""The installed ``gwi`` console script, as a user runs it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from .conftest import write_kaggle

GWI = shutil.which("gwi", path=str(Path(sys.executable).parent)) or "gwi"


def run(*args, cwd=None, env=None):
    return subprocess.run([GWI, *args], capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})},
                          timeout=300)


def test_version_and_help():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("gwi ")
    r = run("data", "--help")
    assert r.returncode == 0 and "synth" in r.stdout and "prep" in r.stdout


def test_synth_into_the_embedded_default_then_info_pull_verify_folds(tmp_path):
    r = run("data", "synth", "--family", "FlatVel_A,Style_A", "--samples", "3", "--name", "demo", "--seed", "1",
            cwd=tmp_path, env={"GWI_HOME": str(tmp_path / ".gwi")})
    assert r.returncode == 0, r.stderr
    assert "dataset demo" in r.stdout and "FlatVel_A" in r.stdout and "Style_A" in r.stdout
    ds = tmp_path / ".gwi" / "store" / "datasets" / "demo"
    m = json.loads((ds / "manifest.json").read_text())
    assert m["num_samples"] == 6 and m["source"]["backend"] == "openfwi"  # the organisers' scheme by default
    url = f"file://{ds}"
    r = run("data", "info", url, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["build"] == m["build"]
    r = run("data", "pull", url)
    assert r.returncode == 0 and Path(r.stdout.strip(), "manifest.json").is_file()
    r = run("data", "verify", url)
    assert r.returncode == 0 and "ok: 4 shards" in r.stdout
    r = run("data", "folds", url, "--k", "3")
    assert r.returncode == 0 and "kfold:3:2" in r.stdout
    # damage one shard: verify fails with exit 1 and names it
    victim = ds / m["shards"][0]["path"]
    victim.write_bytes(victim.read_bytes()[:-1] + b"\0")
    r = run("data", "verify", url)
    assert r.returncode == 1 and m["shards"][0]["path"] in r.stderr and "sha256" in r.stderr


def test_prep_cli_and_clear_errors(tmp_path):
    write_kaggle(tmp_path / "k", {"FlatVel_A": [2]})
    r = run("data", "prep", "--src", str(tmp_path / "k"), "--out", f"file://{tmp_path}/s", "--name", "kt")
    assert r.returncode == 0, r.stderr
    r = run("data", "prep", "--src", str(tmp_path / "k"), "--out", f"file://{tmp_path}/s", "--name", "kt")
    assert r.returncode == 1 and "already exists; pass --overwrite" in r.stderr and "Traceback" not in r.stderr
    r = run("data", "prep", "--src", str(tmp_path / "nope"), "--out", f"file://{tmp_path}/s", "--name", "x")
    assert r.returncode == 1 and f"{tmp_path / 'nope'}: no such folder" in r.stderr
    r = run("data", "prep", "--out", f"file://{tmp_path}/s", "--name", "x")
    assert r.returncode == 1 and "exactly one of --src" in r.stderr
    r = run("data", "synth", "--family", "FlatVel_Z", "--samples", "1", "--name", "x", "--out", f"file://{tmp_path}/s")
    assert r.returncode == 1 and "got 'FlatVel_Z'" in r.stderr and "CurveFault_B" in r.stderr
    r = run("data", "pull", "gs://bucket/datasets/x")
    assert r.returncode == 1 and "unsupported store URL scheme 'gs://'" in r.stderr


def test_prep_cli_to_s3_and_pull_back(s3, tmp_path):
    arrays = write_kaggle(tmp_path / "k", {"CurveVel_B": [2]})
    r = run("data", "prep", "--src", str(tmp_path / "k"), "--out", s3, "--name", "kt")
    assert r.returncode == 0, r.stderr
    r = run("data", "pull", f"{s3}/datasets/kt")
    assert r.returncode == 0, r.stderr
    from gwi.data.shards import ShardedDataset

    ds = ShardedDataset(r.stdout.strip())
    np.testing.assert_allclose(ds.batch([0, 1])[1], arrays["CurveVel_B"][0][1], rtol=1e-3)
    r = run("data", "pull", "s3://no-such-bucket-here/datasets/kt")
    assert r.returncode == 1 and "bucket 'no-such-bucket-here' does not exist" in r.stderr


def _dispatched_state(tmp_path):
    """A state with a plan's jobs recorded and no scheduler pass yet (nothing launched)."""
    from gwi.adapters.base import load_profiles
    from gwi.scheduler import Scheduler
    from gwi.spec import load_spec

    plat = tmp_path / "platforms"
    plat.mkdir()
    (plat / "box.yaml").write_text("adapter: local\ncapacity: 1\noptions: {runtime: process}\n")
    spec = tmp_path / "p.yaml"
    spec.write_text(f"name: p\nstore: file://{tmp_path}/store\njobs:\n"
                    "  - {name: d, kind: synth, backend: deepwave, dataset: d, families: [FlatVel_A], samples: 1, platforms: [box]}\n")
    s = Scheduler(tmp_path / "home", profiles=load_profiles([plat]))
    s.submit(load_spec(spec, profiles=s.profiles))
    return s, {"GWI_HOME": str(tmp_path / "home"), "GWI_PLATFORMS": str(plat)}


def test_status_and_history_only_read_and_never_wait_for_the_lock(tmp_path):
    s, env = _dispatched_state(tmp_path)
    with s.lock(), s.state.tx() as st:  # a dispatcher mid-pass: the lock held, a write open
        st.event("p/d", "note", "uncommitted")
        r = run("status", "--json", env=env)
        assert r.returncode == 0, r.stderr
        assert [(j["job"], j["state"]) for j in json.loads(r.stdout)] == [("p/d", "waiting")]
        r = run("status", env=env)
        assert r.returncode == 0 and "p/d" in r.stdout and "no scheduler pass yet" in r.stdout, r.stderr
        r = run("status", "d", env=env)
        assert r.returncode == 0 and "p/d: synth waiting" in r.stdout and "no attempts yet" in r.stdout
        r = run("history", "d", env=env)
        assert r.returncode == 0 and "dispatched" in r.stdout and "uncommitted" not in r.stdout
    # nothing was reconciled: the job was not even queued
    assert s.state.job("p/d")["state"] == "waiting" and s.state.last_reconcile() is None
    s.close()


def test_reading_commands_on_a_fresh_home_create_nothing(tmp_path):
    env = {"GWI_HOME": str(tmp_path / "home")}
    r = run("status", env=env)
    assert r.returncode == 0 and "no jobs yet" in r.stdout, r.stderr
    r = run("status", "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout) == []
    r = run("history", "x", env=env)
    assert r.returncode == 1 and "no job 'x'; nothing dispatched yet" in r.stderr
    r = run("platforms", env=env)
    assert r.returncode == 0 and "local" in r.stdout and "credentials" in r.stdout, r.stderr
    assert not (tmp_path / "home").exists()
    repo = Path(__file__).resolve().parents[1]
    r = run("dispatch", "--dry-run", str(repo / "jobs" / "demo.yaml"), env=env)
    assert r.returncode == 0 and "fallback order" in r.stdout, r.stderr
    assert not (tmp_path / "home" / "state.db").exists()  # the plan's default store may be made; no state


def test_the_state_is_found_like_git_and_status_says_which(tmp_path):
    """No $GWI_HOME: the nearest .gwi/ from the current folder upward, else the user's gwi folder;
    $GWI_HOME, when set, wins. gwi init makes one; status names the state it read."""
    env = {k: v for k, v in os.environ.items() if k != "GWI_HOME"}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")

    def gwi(*args, cwd):
        return subprocess.run([GWI, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)

    deep = tmp_path / "project" / "src" / "deeper"
    deep.mkdir(parents=True)
    r = gwi("status", cwd=deep)
    assert r.returncode == 0 and f"state: {tmp_path / 'xdg' / 'gwi'} (the user's gwi folder: no .gwi/ here or above" \
        in r.stdout, r.stdout
    r = gwi("init", cwd=tmp_path / "project")
    assert r.returncode == 0 and f"created {tmp_path / 'project' / '.gwi'}" in r.stdout
    assert (tmp_path / "project" / ".gwi").stat().st_mode & 0o077 == 0  # the user's own
    r = gwi("status", cwd=deep)
    assert f"state: {tmp_path / 'project' / '.gwi'} (the nearest .gwi/ above this folder)" in r.stdout, r.stdout
    # the embedded store follows the state: data made from deep down lands in the project's .gwi
    r = gwi("data", "synth", "--family", "FlatVel_A", "--samples", "1", "--backend", "deepwave", "--name", "d",
            cwd=deep)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "project" / ".gwi" / "store" / "datasets" / "d" / "manifest.json").is_file()
    r = gwi("init", cwd=tmp_path / "project")
    assert r.returncode == 0 and "exists" in r.stdout
    env["GWI_HOME"] = str(tmp_path / "chosen")
    r = gwi("status", cwd=deep)
    assert f"state: {tmp_path / 'chosen'} ($GWI_HOME)" in r.stdout


def test_status_is_rich_on_a_terminal_plain_in_a_pipe_and_quiet_when_the_pipe_closes(tmp_path):
    s, env = _dispatched_state(tmp_path)
    s.close()
    plain = run("status", env=env).stdout
    assert "\033[" not in plain and plain.splitlines()[0].split()[:3] == ["job", "platform", "state"]
    coloured = run("status", env={**env, "GWI_COLOR": "always"}).stdout
    assert "\033[2mwaiting" in coloured and "p/d" in coloured  # waiting jobs are dim
    # the reader goes away after one line while status --watch goes on printing: no traceback
    r = subprocess.run(f"'{GWI}' status --watch --interval 0.2 | head -1", shell=True, capture_output=True, text=True,
                       timeout=60, env={**os.environ, **env})
    assert r.returncode == 0 and r.stdout.strip() and "Traceback" not in r.stderr and "Error" not in r.stderr, r.stderr


def test_json_from_every_reading_command(tmp_path):
    s, env = _dispatched_state(tmp_path)
    s.close()
    assert [j["job"] for j in json.loads(run("status", "--json", env=env).stdout)] == ["p/d"]
    h = json.loads(run("history", "d", "--json", env=env).stdout)
    assert h["job"] == "p/d" and h["attempts"] == [] and h["events"][0]["kind"] == "dispatched"
    plats = {p["name"]: p for p in json.loads(run("platforms", "--json", env=env).stdout)}
    assert plats["box"]["adapter"] == "local" and plats["box"]["usage"]["active"] == 0
    assert "LAMBDA_API_KEY" in plats["lambda"]["credentials"] and "lambda" in plats  # the package's profiles too
    models = {m["name"]: m for m in json.loads(run("models", "--json", env=env).stdout)}
    assert {"inversionnet", "vit_fwi", "egnn"} <= set(models) and models["inversionnet"]["parameters"]["tiny"] > 0


def test_shell_completion_of_commands_and_job_names(tmp_path):
    s, env = _dispatched_state(tmp_path)
    s.close()
    out = tmp_path / "completions"

    def complete(line: str) -> list[str]:
        r = run(env={**env, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
                     "_ARGCOMPLETE_STDOUT_FILENAME": str(out)})
        assert r.returncode == 0, r.stderr
        return [c.strip() for c in out.read_text().split("\v")]

    assert complete("gwi sta") == ["status"]
    assert complete("gwi history p/") == ["p/d"]  # the state's jobs
    r = run("completion", "bash")
    assert r.returncode == 0 and "complete" in r.stdout and "gwi" in r.stdout


def test_long_work_draws_a_bar_on_a_terminal_and_nothing_in_a_pipe(tmp_path):
    import pty

    args = ["data", "synth", "--family", "FlatVel_A", "--samples", "4", "--batch-size", "1", "--backend", "deepwave",
            "--device", "cpu", "--out", f"file://{tmp_path}/s"]
    piped = run(*args, "--name", "a")
    assert piped.returncode == 0 and "━" not in piped.stderr and "synth a" not in piped.stderr, piped.stderr
    leader, follower = pty.openpty()  # stderr a terminal, as in a shell
    proc = subprocess.Popen([GWI, *args, "--name", "b"], stdout=subprocess.PIPE, stderr=follower,
                            env={**os.environ, "COLUMNS": "100"})
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert proc.wait(timeout=120) == 0
    text = seen.decode(errors="replace")
    assert "synth b" in text and "━" in text and "4/4" in text and "samples" in text, text[-2000:]
