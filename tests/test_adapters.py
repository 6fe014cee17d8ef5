"""The adapter kit (environment, wrapper, bootstrap, log files) and the typed platform options,
checked when a profile loads with the file, line and field in the error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gwi.adapters import kit
from gwi.adapters.base import LaunchRequest, PlatformError, Profile, State, get_adapter, load_profiles, parse_profile
from gwi.adapters.kaggle import KaggleOptions
from gwi.adapters.lambda_cloud import LambdaOptions
from gwi.adapters.local import LocalAdapter, LocalOptions
from gwi.yamlfile import ConfigError

# -- typed options --------------------------------------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / "platforms" / f"{name}.yaml"
    p.parent.mkdir(exist_ok=True)
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return p


def load_error(tmp_path: Path, name: str, text: str) -> str:
    p = write(tmp_path, name, text)
    with pytest.raises(ConfigError) as e:
        parse_profile(p)
    return str(e.value).replace(str(p), f"platforms/{name}.yaml")


def test_profiles_load_typed_options_with_defaults_and_nulls(tmp_path):
    p = write(tmp_path, "k", """
        adapter: kaggle
        options:
          internet: true
          wheel_dataset: null      # optional: stays None
          competitions: waveform-inversion   # one name is a list of one
          slug_prefix: null        # null: the default
        """)
    o = parse_profile(p).options
    assert o == KaggleOptions(competitions=("waveform-inversion",))
    assert o.slug_prefix == "gwi" and o.secrets == kit.STORE_SECRETS
    lam = parse_profile(write(tmp_path, "l", """
        adapter: lambda
        options: {instance_types: [gpu_1x_a10], ssh_port: 2222, request_timeout_s: 5, env: {N: 3, FLAG: x}}
        """)).options
    assert lam == LambdaOptions(instance_types=("gpu_1x_a10",), ssh_port=2222, request_timeout_s=5.0,
                                env={"N": "3", "FLAG": "x"})
    assert isinstance(lam.request_timeout_s, float)
    assert parse_profile(write(tmp_path, "bare", "adapter: local\n")).options == LocalOptions()


def test_the_repos_profiles_load():
    profiles = load_profiles([Path(__file__).resolve().parents[1] / "platforms"])
    assert {p.adapter for p in profiles.values()} == {"local", "kaggle", "colab", "lambda"}
    assert profiles["kaggle-offline"].options.offline_store == "you/gwi-models"


@pytest.mark.parametrize("name, text, message", [
    ("local", "adapter: local\noptions:\n  runtime: dockr\n",
     "platforms/local.yaml:3: options.runtime: expected one of auto, docker, process, got 'dockr' "
     "(did you mean 'docker'?)"),
    ("local", "adapter: local\noptions:\n  grace_s: 2\n  imgae: gwi:dev\n",
     "platforms/local.yaml:4: options.imgae: unknown option (did you mean 'image'?); expected one of: runtime, "
     "image, grace_s"),
    ("local", "adapter: local\noptions:\n  grace_s: -1\n",
     "platforms/local.yaml:3: options.grace_s: expected a value >= 0, got -1"),
    ("local", "adapter: local\noptions:\n  image: ''\n",
     "platforms/local.yaml:3: options.image: expected a non-empty string, got ''"),
    ("local", "adapter: local\noptions: [runtime]\n",
     "platforms/local.yaml:2: options: expected a mapping, got a list (['runtime'])"),
    ("kaggle", "adapter: kaggle\noptions:\n  internet: 'no'\n",
     "platforms/kaggle.yaml:3: options.internet: expected true or false, got 'no'"),
    ("kaggle", "adapter: kaggle\noptions:\n  datasets: [you/a, 3]\n",
     "platforms/kaggle.yaml:3: options.datasets: expected a list of names, got ['you/a', 3]"),
    ("kaggle", "adapter: kaggle\ngpus: 1\noptions:\n  machine_shape: NvidiaTeslaT4\n  internet: false\n",
     "platforms/kaggle.yaml:4: options.offline_store: an offline kernel (internet: false) needs the dataset that "
     "mirrors the store (see `gwi kaggle package`)"),
    ("lambda", "adapter: lambda\noptions:\n  ssh_port: 70000\n",
     "platforms/lambda.yaml:3: options.ssh_port: expected a value <= 65535, got 70000"),
    ("lambda", "adapter: lambda\noptions:\n  request_timeout_s: 0\n",
     "platforms/lambda.yaml:3: options.request_timeout_s: expected a value > 0, got 0"),
    ("lambda", "adapter: lambda\noptions:\n  env: {A: [1]}\n",
     "platforms/lambda.yaml:3: options.env: expected a mapping of names to values, got {'A': [1]}"),
    ("colab", "adapter: colab\noptions:\n  install: gwi\n  mode: cli\n",
     "platforms/colab.yaml:4: options.mode: only 'notebook' is supported (no Colab launch API is reachable from "
     "gwi), got 'cli'"),
])
def test_option_errors_name_the_file_line_and_field(tmp_path, name, text, message):
    assert load_error(tmp_path, name, text) == message


def test_options_given_in_code_are_checked_by_the_adapter():
    ad = LocalAdapter(Profile(name="a", adapter="local", path="platforms/a.yaml", options={"runtime": "process"}))
    assert ad.options == LocalOptions(runtime="process")
    with pytest.raises(ConfigError, match=r"^platforms/a.yaml: options.runtime: expected one of auto, docker, "
                                          r"process, got 'vm'$"):
        get_adapter(Profile(name="a", adapter="local", path="platforms/a.yaml", options={"runtime": "vm"}))


def test_a_lambda_profile_without_instance_types_loads_but_cannot_take_jobs(tmp_path):
    prof = parse_profile(write(tmp_path, "lam", "adapter: lambda\ngpus: 1\n"))
    assert get_adapter(prof).available() == (
        f"{prof.path}: options.instance_types: expected a list of Lambda instance types (e.g. [gpu_1x_a100_sxm4]), "
        "got none")


def test_loading_profiles_imports_no_sdk():
    code = ("import sys; from gwi.adapters.base import load_profiles; load_profiles(); "
            "print([m for m in ('torch', 'kaggle', 'paramiko', 'docker', 'requests', 'nbformat') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


# -- the job's environment --------------------------------------------------------------------------


def request(tmp_path: Path, **kw) -> LaunchRequest:
    args = dict(attempt_id="s.j.1", job="s/j", kind="synth", argv=["gwi", "--version"],
                env={"GWI_ATTEMPT": "s.j.1", "GWI_HEARTBEAT": "file:///x/hb.json", "GWI_HEARTBEAT_S": "5"},
                store_url="file:///x", heartbeat_url="file:///x/hb.json", workdir=str(tmp_path / "w"))
    args.update(kw)
    return LaunchRequest(**args)


def test_job_env_scrubs_other_platforms_secrets_and_lets_gwi_settings_win(tmp_path):
    req = request(tmp_path, scrub_env=("KAGGLE_KEY",))
    env = kit.job_env(req, base={"KAGGLE_KEY": "k", "AWS_ACCESS_KEY_ID": "a", "GWI_ATTEMPT": "stale"},
                      extra={"GWI_CACHE": "/c", "GWI_HEARTBEAT_S": "99"})
    assert env == {"AWS_ACCESS_KEY_ID": "a", "GWI_CACHE": "/c", "GWI_ATTEMPT": "s.j.1",
                   "GWI_HEARTBEAT": "file:///x/hb.json", "GWI_HEARTBEAT_S": "5", "PYTHONUNBUFFERED": "1"}
    silent = kit.job_env(req, heartbeat=False)
    assert "GWI_HEARTBEAT" not in silent and "GWI_HEARTBEAT_S" not in silent and silent["GWI_ATTEMPT"] == "s.j.1"
    assert kit.lent_credentials({"AWS_REGION": "r", "HOME": "/h"}) == {"AWS_REGION": "r"}
    assert kit.unreachable_file_store("colab", "file:///x") == "colab cannot reach a file:// store; use s3://"
    assert kit.unreachable_file_store("colab", "s3://b") is None


def test_http_statuses_map_to_one_set_of_kinds():
    assert [kit.http_kind(c) for c in (401, 403, 429, 500, 503, 404)] == ["auth", "auth", "retryable", "retryable",
                                                                         "retryable", "fatal"]
    assert kit.http_kind(400, "config") == "config"


# -- the wrapper ------------------------------------------------------------------------------------


def test_the_wrapper_records_pid_log_and_exit_status(tmp_path):
    r = subprocess.run(["sh", "-c", kit.wrapper_script(), "sh", "sh", "-c", "echo out; echo oops >&2; exit 3"],
                       cwd=tmp_path, timeout=30)
    assert r.returncode == 3 and kit.read_exit_code(tmp_path) == 3 and kit.read_pid(tmp_path) > 0
    assert kit.saved_log(tmp_path) == "out\noops\n"
    assert not list(tmp_path.glob("*.tmp"))
    probe = subprocess.run(["sh", "-c", kit.WRAPPER_PROBE], cwd=tmp_path, capture_output=True, text=True)
    assert probe.stdout.strip() == "3"


def test_the_wrapper_reads_its_environment_file_and_the_probe_sees_it_alive_then_gone(tmp_path):
    files = kit.env_files({"MSG": "it's a 'quoted' $value", "N": "1"}, "lam")
    assert files["docker.env"] == "MSG\nN\n"  # names only: docker takes the values from the environment
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "run.sh").write_text(kit.wrapper_script('sh -c \'echo "$MSG"; sleep 30\'', env_file=kit.ENV_FILE))
    p = subprocess.Popen(["sh", "run.sh"], cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "log").exists() or not (tmp_path / "log").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        probe = lambda: subprocess.run(["sh", "-c", kit.WRAPPER_PROBE], cwd=tmp_path, capture_output=True,  # noqa: E731
                                       text=True).stdout.strip()
        assert probe() == "alive"
        assert kit.saved_log(tmp_path) == "it's a 'quoted' $value\n"
        assert not (tmp_path / "env").exists()  # the secrets' file is gone once sourced
    finally:
        os.killpg(p.pid, 9)
        p.wait()
    assert probe() == "gone" and kit.read_exit_code(tmp_path) is None
    with pytest.raises(PlatformError, match="lam: environment variable BAD holds a newline") as e:
        kit.env_files({"BAD": "a\nb"}, "lam")
    assert e.value.kind == "config"


def test_an_exit_status_becomes_an_end():
    assert kit.ended(0).state == State.SUCCEEDED
    st = kit.ended(2, "step 1\nValueError: bad manifest\nshutting down\n")
    assert (st.state, st.exit_code, st.message) == (State.FAILED, 2, "exit status 2: ValueError: bad manifest")
    assert kit.ended(137, "").message == "killed by SIGKILL"
    assert kit.ended(143, "last words\n").message == "killed by SIGTERM: last words"
    assert kit.ended(143, "", cancelled=True).state == State.CANCELLED


def test_logs_prefer_the_saved_copy_then_the_platform(tmp_path):
    asked = []
    fetch = lambda: asked.append(1) or "a\nb\nc\n"  # noqa: E731
    assert kit.logs(tmp_path, 2, fetch) == "b\nc\n" and asked == [1]
    assert kit.logs(tmp_path, None) == ""
    kit.save_log(tmp_path, b"saved\n")
    assert kit.logs(tmp_path, None, fetch) == "saved\n" and asked == [1]
    assert not kit.was_cancelled(tmp_path)
    kit.mark_cancelled(tmp_path)
    assert kit.was_cancelled(tmp_path)


# -- the bootstrap ----------------------------------------------------------------------------------


def fake_runtime(root: Path, secrets: dict) -> dict:
    """A runtime with a secret store module and a stand-in ``gwi`` that reports what it got."""
    (root / "mod" / "gwi").mkdir(parents=True)
    (root / "mod" / "vault.py").write_text(f"SECRETS = {secrets!r}\ndef get(name):\n    return SECRETS[name]\n")
    (root / "mod" / "gwi" / "__init__.py").write_text("")
    (root / "mod" / "gwi" / "__main__.py").write_text(
        "import json, os, sys\n"
        "print(json.dumps({'argv': sys.argv[1:], 'env': {k: os.environ.get(k) for k in "
        "('AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'GWI_ATTEMPT')}}))\n"
        "sys.exit(3)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GWI_"))}
    env["PYTHONPATH"] = str(root / "mod")
    return env


STORE = kit.SecretStore("from vault import get", "add it to the vault")


def test_the_bootstrap_reads_secrets_by_name_runs_gwi_and_exits_with_its_status(tmp_path):
    env = fake_runtime(tmp_path, {"AWS_ACCESS_KEY_ID": "AKIA-FROM-VAULT", "GWI_ATTEMPT": "from-vault"})
    cells = kit.bootstrap_cells(["gwi", "data", "synth", "--name", "it's"], {"GWI_ATTEMPT": "s.j.1"},
                                ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "GWI_ATTEMPT"], STORE,
                                requirement="gwi==0.1")
    script = kit.bootstrap_script("gwi job s.j.1", cells)
    assert "AKIA-FROM-VAULT" not in script and script.startswith('"""gwi job s.j.1: generated by gwi')
    r = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 3, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "gwi: secret AWS_SECRET_ACCESS_KEY is not set (add it to the vault)"
    assert json.loads(lines[1]) == {"argv": ["data", "synth", "--name", "it's"],
                                    "env": {"AWS_ACCESS_KEY_ID": "AKIA-FROM-VAULT", "AWS_SECRET_ACCESS_KEY": None,
                                            "GWI_ATTEMPT": "s.j.1"}}  # gwi's own settings win
    assert lines[2] == "gwi exited with status 3"


def test_the_bootstrap_installs_gwi_from_an_attached_wheel_or_says_what_is_missing(tmp_path):
    cells = kit.bootstrap_cells(["gwi", "--version"], {}, [], STORE, wheels=str(tmp_path / "input"), offline=True)
    env = {"PATH": os.environ["PATH"], "GWI_WHEELS": str(tmp_path / "input")}
    # -S -I: a runtime without gwi (no site-packages, no PYTHONPATH)
    r = subprocess.run([sys.executable, "-S", "-I", "-c", cells[0]], env=env, cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1
    assert "gwi: no gwi wheel in the attached datasets; attach the one `gwi kaggle package` made" in r.stderr


# -- deadlines and private files ------------------------------------------------------------------


def test_a_local_job_stops_itself_at_its_hour_limit_in_a_private_folder(tmp_path):
    import stat

    ad = LocalAdapter(Profile(name="here", adapter="local", path="platforms/here.yaml", options={"runtime": "process"}))
    work = tmp_path / "attempts" / "s.j.1"
    h = ad.launch(request(tmp_path, argv=["sh", "-c", "echo started; exec sleep 60"], workdir=str(work),
                          hours_limit=1 / 3600))
    deadline = time.monotonic() + 15
    while not (st := ad.query(h)).state.terminal:  # nothing but the wrapper's own deadline stops it
        assert time.monotonic() < deadline, "the job outlived its hour limit"
        time.sleep(0.1)
    assert (st.state, st.exit_code) == (State.FAILED, 124)
    assert st.message == "over its hour limit: stopped on its machine after 0.000277778 h (1 s)"
    probe = subprocess.run(["sh", "-c", kit.WRAPPER_PROBE], cwd=work, capture_output=True, text=True).stdout
    assert probe == "124\n" + st.message + "\n"
    assert stat.S_IMODE(work.stat().st_mode) == 0o700 == stat.S_IMODE(work.parent.stat().st_mode)
    assert stat.S_IMODE((work / "launching").stat().st_mode) == 0o600
    # a job that ends in time is not called over its limit
    h = ad.launch(request(tmp_path, argv=["sh", "-c", "exit 3"], workdir=str(tmp_path / "attempts" / "s.j.2"),
                          hours_limit=1.0))
    while not (st := ad.query(h)).state.terminal:
        time.sleep(0.05)
    assert (st.state, st.exit_code, st.message) == (State.FAILED, 3, "exit status 3")


def test_files_written_privately_are_owner_only_from_the_start(tmp_path):
    import stat

    p = tmp_path / "f"
    p.write_text("old")
    os.chmod(p, 0o644)
    kit.write_private(p, "secret-bearing")  # an existing file is tightened too
    assert stat.S_IMODE(p.stat().st_mode) == 0o600 and p.read_text() == "secret-bearing"
    d = kit.private_dir(tmp_path / "a" / "b")
    assert stat.S_IMODE(d.stat().st_mode) == 0o700 == stat.S_IMODE(d.parent.stat().st_mode)
    kit.save_log(d, b"log\n")
    assert stat.S_IMODE((d / "log").stat().st_mode) == 0o600


def test_the_bootstrap_stops_the_job_at_its_hour_limit(tmp_path):
    env = fake_runtime(tmp_path, {})
    (tmp_path / "mod" / "gwi" / "__main__.py").write_text("import time\nprint('working', flush=True)\ntime.sleep(60)\n")
    cells = kit.bootstrap_cells(["gwi", "train"], {}, [], STORE, hours_limit=1 / 3600)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", "\n".join(cells)], env=env, cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 124 and time.monotonic() - t0 < 20, r.stderr
    assert r.stdout.splitlines()[-2:] == ["gwi: over its hour limit (1 s): stopping the job",
                                          "gwi exited with status 124"]
