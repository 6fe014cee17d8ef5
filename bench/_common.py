"""What every benchmark prints about the machine it ran on, and how busy that machine was.

Benchmarks are run as scripts (``python bench/NAME.py``), so they import this as ``_common``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import sys
import time
from pathlib import Path


def proc_stat() -> tuple[float, float]:
    """(busy, total) CPU seconds over all CPUs since boot."""
    f = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle, total = f[3] + f[4], sum(f[:8])  # idle + iowait; guest time is already inside user
    return (total - idle) / hz, total / hz


def cpu_busy(seconds: float = 1.0) -> float | None:
    """Share of all CPUs busy over ``seconds`` while we sleep: the load other processes bring.

    deepwave's and torch's OpenMP threads collapse (10x and worse, not 2x) when another process
    competes for the cores, so a busy machine is worth a loud line in the header.
    """
    try:
        b0, t0 = proc_stat()
        time.sleep(seconds)
        b1, t1 = proc_stat()
    except (OSError, ValueError, IndexError):
        return None
    return (b1 - b0) / max(t1 - t0, 1e-9)


def busy_text() -> str:
    busy = cpu_busy()
    if busy is None:
        return "CPU use by others unknown"
    text = f"{busy:.0%} of CPUs busy with other work"
    return text + ("  <- WARNING: timings will be unreliable" if busy > 0.15 else "")


def load_text() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def ram_text() -> str:
    with contextlib.suppress(OSError, ValueError, StopIteration):
        kb = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                  if ln.startswith("MemTotal:"))
        return f"{kb / 2**20:.1f} GiB"
    return "unknown"


def machine_lines(argv: list[str], versions: str) -> list[str]:
    """The header every benchmark prints: machine, load, date, ``versions``, command."""
    return [
        f"machine : {cpu_name()}, {os.cpu_count()} cores, {ram_text()} RAM, {platform.system()} {platform.release()}",
        f"load    : {load_text()} (1/5/15 min) at start; {busy_text()}",
        f"date    : {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"python  : {platform.python_version()}  {versions}",
        f"command : {' '.join([sys.executable, *argv])}",
    ]


@contextlib.contextmanager
def scratch_home(prefix: str):
    """A temp folder that ``GWI_HOME`` and ``GWI_CACHE`` point into for the block: nothing gwi writes
    by default (cache, pulled data, run scratch, scheduler state) lands outside it."""
    import tempfile

    saved = {k: os.environ.get(k) for k in ("GWI_HOME", "GWI_CACHE")}
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work = Path(tmp)
        os.environ["GWI_HOME"], os.environ["GWI_CACHE"] = str(work / "home"), str(work / "cache")
        try:
            yield work
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
