"""`gwi watch --install`: the service that keeps a watcher running through logout and reboot.
Written into a temporary HOME; nothing here calls systemctl or launchctl."""

from __future__ import annotations

import plistlib
import sys

import pytest

from gwi import service


@pytest.fixture
def user_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("USER", "alice")
    monkeypatch.setenv("GWI_PLATFORMS", "/team/platforms")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "user"


def test_a_systemd_user_unit_runs_the_watcher_forever_for_this_home(user_home, tmp_path):
    home = tmp_path / "gwi home"
    out = service.install(home, system="systemd")
    unit = user_home / ".config/systemd/user/gwi-watch.service"
    text = unit.read_text()
    assert f"ExecStart={sys.executable} -m gwi watch --forever\n" in text
    assert "Restart=always\n" in text and "WantedBy=default.target\n" in text
    assert f"Environment='GWI_HOME={home}'\n" in text  # quoted: the path has a space
    assert "Environment=GWI_PLATFORMS=/team/platforms\n" in text
    assert f"EnvironmentFile=-{home}/watch.env\n" in text and f"WorkingDirectory={tmp_path}\n" in text
    assert out.startswith(f"wrote {unit}\n")
    assert "systemctl --user enable --now gwi-watch.service" in out and "loginctl enable-linger alice" in out
    # a dry run writes nothing and says what it would
    unit.unlink()
    assert service.install(home, system="systemd", dry_run=True).startswith(f"would write {unit}:\n\n[Unit]")
    assert not unit.exists()


def test_launchd_and_cron_for_other_machines(user_home, tmp_path):
    home = tmp_path / "h"
    out = service.install(home, system="launchd")
    plist = user_home / "Library/LaunchAgents/org.gwi.watch.plist"
    data = plistlib.loads(plist.read_bytes())
    assert data["ProgramArguments"] == [sys.executable, "-m", "gwi", "watch", "--forever"]
    assert data["EnvironmentVariables"]["GWI_HOME"] == str(home) and data["KeepAlive"] is True
    assert f"launchctl load -w {plist}" in out
    line = service.install(home, system="cron").split("\n\n")[1]
    assert line.startswith(f"@reboot cd {tmp_path} && ") and line.endswith(f">> {home}/watch.log 2>&1")
    assert f"GWI_HOME={home}" in line and "-m gwi watch --forever" in line
    with pytest.raises(ValueError, match="expected systemd, launchd or cron, got 'upstart'"):
        service.install(home, system="upstart")
    assert service.detect() in ("systemd", "launchd", "cron")


def test_the_unit_names_where_secrets_go_but_holds_none(user_home, tmp_path, monkeypatch):
    monkeypatch.setenv("LAMBDA_API_KEY", "lambda-secret-value")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-value")
    out = service.install(tmp_path / "h", system="systemd")
    text = (user_home / ".config/systemd/user/gwi-watch.service").read_text()
    for secret in ("lambda-secret-value", "aws-secret-value"):
        assert secret not in text and secret not in out
    assert f"put them in {tmp_path / 'h' / 'watch.env'} (chmod 600)" in out
