"""A real OpenSSH server on 127.0.0.1 for tests: temporary host key, one authorized client key."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sshd:
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.client_key = root / "id_ed25519"
        if not self.client_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.client_key)], check=True)
        (root / "authorized_keys").write_text((root / "id_ed25519.pub").read_text())
        os.chmod(root / "authorized_keys", 0o600)
        self.port = free_port()
        self.user = getpass.getuser()
        self.proc: subprocess.Popen | None = None

    def start(self, new_host_key: bool = False) -> "Sshd":
        host = self.root / "host_ed25519"
        if new_host_key or not host.exists():
            for p in (host, host.with_suffix(".pub")):
                p.unlink(missing_ok=True)
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host)], check=True)
        cfg = self.root / "sshd_config"
        cfg.write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {host}
PidFile {self.root}/sshd.pid
AuthorizedKeysFile {self.root}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
LogLevel ERROR
""")
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation dir, when run as root
        self.proc = subprocess.Popen([SSHD, "-f", str(cfg), "-D", "-e"], stdout=subprocess.DEVNULL,
                                     stderr=open(self.root / "sshd.log", "a"))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.root / 'sshd.log').read_text()[-1000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not start in 15 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


def stop_remote_jobs(remote: Path) -> None:
    """Kill what the fake instances under ``remote`` still run: each attempt's job and its watchdog
    (a real instance takes them down when it is terminated; a fake one shares this machine)."""
    import signal

    for rd in Path(remote).glob("gwi-*"):
        for pidfile in ("pid", "watchdog.pid"):
            try:
                os.killpg(int((rd / pidfile).read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
