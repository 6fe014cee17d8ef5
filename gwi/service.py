"""``gwi watch --install``: the scheduler as a service of the user, so supervision survives logout
and reboot (a week of jobs must not depend on an open terminal).

- Linux with systemd: a user unit ``~/.config/systemd/user/gwi-watch.service`` running this
  Python's ``-m gwi watch --forever`` with ``GWI_HOME`` set, restarted whenever it stops; what to
  run next is printed (``systemctl --user enable --now``, and ``loginctl enable-linger`` so it runs
  while nobody is logged in);
- macOS: a launchd agent ``~/Library/LaunchAgents/org.gwi.watch.plist`` (``KeepAlive``, ``RunAtLoad``);
- elsewhere: the ``@reboot`` line to add with ``crontab -e``.

The unit holds no secret: the platforms' credentials (LAMBDA_API_KEY, KAGGLE_KEY, AWS_...) go in
``$GWI_HOME/watch.env`` (owner-only), which the unit reads if it exists.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path
from xml.sax.saxutils import escape

UNIT = "gwi-watch.service"
PLIST = "org.gwi.watch.plist"
ENV_FILE = "watch.env"
# settings that decide which profiles and store a watcher sees: carried into the unit when set
CARRIED = ("GWI_PLATFORMS", "GWI_CACHE", "GWI_STORE_PATIENCE_S")


def detect() -> str:
    """The service manager here: systemd, launchd or cron."""
    if sys.platform == "darwin":
        return "launchd"
    if sys.platform.startswith("linux") and (Path("/run/systemd/system").is_dir() or shutil.which("systemctl")):
        return "systemd"
    return "cron"


def command() -> list[str]:
    """The watcher: this Python's gwi, never stopping when the queue is empty."""
    return [sys.executable, "-m", "gwi", "watch", "--forever"]


def _environment(home: Path) -> dict[str, str]:
    env = {"GWI_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.update({k: os.environ[k] for k in CARRIED if os.environ.get(k)})
    return env


def systemd_unit(home: Path, workdir: Path) -> str:
    env = "".join(f"Environment={shlex.quote(f'{k}={v}')}\n" for k, v in _environment(home).items())
    return (f"[Unit]\nDescription=gwi watch: supervises the jobs of {home}\n"
            "After=network-online.target\nWants=network-online.target\n\n"
            f"[Service]\nType=simple\nWorkingDirectory={workdir}\n{env}"
            f"EnvironmentFile=-{home / ENV_FILE}\n"
            f"ExecStart={shlex.join(command())}\n"
            "Restart=always\nRestartSec=30\n\n"
            "[Install]\nWantedBy=default.target\n")


def launchd_plist(home: Path, workdir: Path) -> str:
    args = "".join(f"    <string>{escape(a)}</string>\n" for a in command())
    env = "".join(f"    <key>{escape(k)}</key><string>{escape(v)}</string>\n" for k, v in _environment(home).items())
    log = escape(str(home / "watch.log"))
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n'
            '<plist version="1.0">\n<dict>\n  <key>Label</key><string>org.gwi.watch</string>\n'
            f"  <key>ProgramArguments</key>\n  <array>\n{args}  </array>\n"
            f"  <key>EnvironmentVariables</key>\n  <dict>\n{env}  </dict>\n"
            f"  <key>WorkingDirectory</key><string>{escape(str(workdir))}</string>\n"
            "  <key>RunAtLoad</key><true/>\n  <key>KeepAlive</key><true/>\n"
            f"  <key>StandardOutPath</key><string>{log}</string>\n"
            f"  <key>StandardErrorPath</key><string>{log}</string>\n</dict>\n</plist>\n")


def cron_line(home: Path, workdir: Path) -> str:
    env = " ".join(shlex.quote(f"{k}={v}") for k, v in _environment(home).items())
    creds = home / ENV_FILE
    return (f"@reboot cd {shlex.quote(str(workdir))} && {{ [ -f {shlex.quote(str(creds))} ] && set -a && "
            f". {shlex.quote(str(creds))}; set +a; }}; {env} {shlex.join(command())} "
            f">> {shlex.quote(str(home / 'watch.log'))} 2>&1")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def install(home: str | Path, *, system: str | None = None, dry_run: bool = False) -> str:
    """Write the service for ``home``'s watcher (``dry_run``: only say what would be written) and
    return what to print: the file, and the commands that start it."""
    home = Path(home).resolve()
    system = system or detect()
    workdir = Path.cwd()
    user_home = Path(os.environ.get("HOME") or Path.home())
    creds = (f"credentials for the platforms: put them in {home / ENV_FILE} (chmod 600); "
             "the service reads it at each start")
    if system == "systemd":
        path = user_home / ".config" / "systemd" / "user" / UNIT
        text = systemd_unit(home, workdir)
        then = ["systemctl --user daemon-reload", f"systemctl --user enable --now {UNIT}",
                f"loginctl enable-linger {shlex.quote(os.environ.get('USER') or user_home.name)}"
                "   # keeps it running after you log out"]
    elif system == "launchd":
        path = user_home / "Library" / "LaunchAgents" / PLIST
        text = launchd_plist(home, workdir)
        then = [f"launchctl load -w {shlex.quote(str(path))}"]
    elif system == "cron":
        line = cron_line(home, workdir)
        return f"add this line with `crontab -e` (starts gwi watch at boot):\n\n{line}\n\n{creds}"
    else:
        raise ValueError(f"service manager: expected systemd, launchd or cron, got {system!r}")
    if dry_run:
        return f"would write {path}:\n\n{text}\nthen run:\n" + "\n".join(f"  {c}" for c in then) + f"\n\n{creds}"
    _write(path, text)
    return f"wrote {path}\n\nnow run:\n" + "\n".join(f"  {c}" for c in then) + f"\n\n{creds}"
