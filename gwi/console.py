"""What a person reads: rich tables, colour and bars on a terminal; plain aligned text otherwise.

Plain text is what a pipe, a file, a test or ``grep`` gets, so it stays stable and greppable; rich
is only for eyes. ``GWI_COLOR=always|never|auto`` (default auto: a terminal, and ``NO_COLOR`` unset)
decides, as ``--color`` does in git.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import threading

_NUMERIC = re.compile(r"^[-+]?[\d.,]+(e[-+]?\d+)?[A-Za-z%/]*$|^-$")

# a job's or attempt's state -> its colour
STATE_STYLE = {
    "succeeded": "green", "running": "cyan", "starting": "cyan", "pending": "cyan", "queued": "yellow",
    "waiting": "dim", "retrying": "yellow", "failed": "bold red", "lost": "red", "cancelled": "magenta",
    "dropped": "dim", "pruned": "dim",
}


def color_enabled(stream=None) -> bool:
    want = os.environ.get("GWI_COLOR", "auto").lower()
    if want in ("always", "1", "yes"):
        return True
    if want in ("never", "0", "no") or os.environ.get("NO_COLOR"):
        return False
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def duration(seconds: float | None) -> str:
    """``42s``, ``7m``, ``2.5h`` (``-`` when unknown): ages, ETAs and run times, in tables and the dashboard."""
    if seconds is None:
        return "-"
    seconds = max(0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def plain_table(rows: list[list], header: list[str]) -> str:
    """Aligned columns: numbers right-aligned, text left-aligned."""
    cells = [header] + [[str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(header))]
    num = [_is_numeric_column(rows, i) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w[i]) if num[i] else c.ljust(w[i]) for i, c in enumerate(r))  # noqa: E731
    return "\n".join([line(cells[0]), "  ".join("-" * x for x in w)] + [line(r) for r in cells[1:]])


def render(renderable) -> str:
    """A rich renderable as terminal text (colour codes included) at the terminal's width."""
    from rich.console import Console

    console = Console(force_terminal=True, width=shutil.get_terminal_size((140, 40)).columns, highlight=False)
    with console.capture() as cap:
        console.print(renderable)
    return cap.get().rstrip("\n")


def table(rows: list[list], header: list[str], styles: dict[str, dict[str, str]] | None = None,
          bars: dict[str, list[tuple[float, float] | None]] | None = None) -> str:
    """``rows`` under ``header``: plain text, or with colour a rich table where ``styles`` maps a
    column to {cell value: style} and ``bars`` a column to one (done, total) per row drawn as a bar
    beside the cell's text."""
    if not color_enabled():
        return plain_table(rows, header)
    from rich.table import Table
    from rich.text import Text

    t = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 1))
    for i, h in enumerate(header):  # numbers right-aligned, as in the plain table
        t.add_column(h, justify="right" if _is_numeric_column(rows, i) else "left",
                     no_wrap=h in ("job", "state", "platform"))
    for n, r in enumerate(rows):
        out = []
        for h, c in zip(header, r):
            text = Text(str(c), style=(styles or {}).get(h, {}).get(str(c), ""))
            bar = (bars or {}).get(h)
            if bar and bar[n] is not None and bar[n][1]:
                done, total = bar[n]
                filled = round(10 * min(done, total) / total)
                text = Text.assemble(("█" * filled, "green"), ("░" * (10 - filled), "dim"), " ", text)
            out.append(text)
        t.add_row(*out)
    return render(t)


def _is_numeric_column(rows: list[list], i: int) -> bool:
    vals = [str(r[i]) for r in rows]
    return bool(vals) and all(_NUMERIC.match(v) for v in vals) and any(v != "-" for v in vals)


class Bar:
    """Progress of long work (prep, pull, push, verify, synth, augment, predict): a rich bar on a
    terminal's stderr, nothing in a pipe or log (``enabled`` None: stderr is a terminal); it counts
    either way, so ``n`` can feed a heartbeat. ``update`` may be called from worker threads."""

    def __init__(self, total: float, desc: str, unit: str = "sample", enabled: bool | None = None,
                 data: bool = False):
        self.total, self.desc, self.unit, self.data = total, desc, unit, data
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.n = 0
        self._lock = threading.Lock()
        self._progress = self._task = None

    def __enter__(self) -> "Bar":
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TaskProgressColumn,
                                       TextColumn, TimeRemainingColumn, TransferSpeedColumn)

            counts = [DownloadColumn(), TransferSpeedColumn()] if self.data else [
                MofNCompleteColumn(), TextColumn(self.unit + "s")]
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), *counts,
                                      TimeRemainingColumn(), console=Console(stderr=True), transient=True)
            self._progress.start()
            self._task = self._progress.add_task(self.desc, total=self.total)
        return self

    def update(self, k: float = 1) -> None:
        with self._lock:
            self.n += k
        if self._progress is not None:
            self._progress.advance(self._task, k)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()


def progress(total: float, desc: str, unit: str = "sample", enabled: bool | None = None, data: bool = False) -> Bar:
    """A :class:`Bar` for ``total`` units of work (``data``: bytes, shown as sizes and a rate)."""
    return Bar(total, desc, unit, enabled, data)
