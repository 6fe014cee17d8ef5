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


# -- what several commands draw ---------------------------------------------------------------------

def print_problems(headline: str, problems: list) -> int:
    """A failure and each of its problems on stderr; the exit status for it."""
    print(headline, file=sys.stderr)
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    return 1


def clock(t: float | None) -> str:
    """An event's time of day (``-`` when it has none)."""
    import time

    return "-" if t is None else time.strftime("%H:%M:%S", time.localtime(t))


def dataset_summary(m: dict, where: str) -> str:
    """A dataset's manifest as a person reads it: size, shapes, float16 error, a row per family."""
    rows = []
    for fam, d in m["families"].items():
        norm = m["normalisation"]["seismic"]["per_family"].get(fam, {})
        rows.append([fam, d["samples"], f"{norm.get('min', float('nan')):.3f}", f"{norm.get('max', float('nan')):.3f}",
                     f"{d['velocity_mean']:.0f}" if "velocity_mean" in d else "-"])
    size = sum(s.get("bytes", 0) for s in m["shards"])
    err = m.get("float16_error", {}).get("x", {})
    out = [f"dataset {m['name']} at {where}",
           f"  {m['num_samples']} samples, {len(m['shards'])} shards, {size / 1e6:,.1f} MB, seismic "
           f"{tuple(m['seismic_shape'])} float16 (round-trip max abs {err.get('max_abs', 0):.3g}, max rel "
           f"{err.get('max_rel', 0):.3g})",
           ""]
    out.append(table(rows, ["family", "samples", "log-min", "log-max", "mean v m/s"]))
    dec = m.get("time_decimation")
    if dec:
        out.append(f"\n  time decimated ×{dec['factor']}: {100 * dec['energy_above_new_nyquist_fraction']:.2f}% of the "
                   f"energy was above the new Nyquist ({dec['nyquist_hz']:.0f} Hz), "
                   f"{100 * dec['energy_removed_by_filter_fraction']:.2f}% removed by the anti-alias filter")
    return "\n".join(out)


def status_table(recs: list[dict]) -> str:
    """The jobs of ``gwi status`` (records from ``View.status_records``), an epoch bar beside each."""
    rows = []
    for r in recs:
        ep = f"{r['epoch']}/{r['epochs']}" if r["epochs"] else "-"
        mae = f"{r['val_mae']:.1f}" if isinstance(r["val_mae"], (int, float)) else "-"
        beat = duration(r["heartbeat_age_s"])
        rows.append([r["job"], r["platform"] or "-", r["shown_state"], r["attempt"] or "-", ep, mae,
                     duration(r["eta_s"]), beat if beat == "-" else beat + " ago", f"${r['cost_usd']:.2f}",
                     (r["reason"] or "")[:70]])
    bars = [(r["epoch"], r["epochs"]) if r["epochs"] else None for r in recs]
    return table(rows, ["job", "platform", "state", "try", "epoch", "val MAE m/s", "ETA", "beat", "cost", "note"],
                 styles={"state": STATE_STYLE}, bars={"epoch": bars})


def platform_table(v, credentials: bool = False) -> str:
    """The platforms of a scheduler ``View``: slots in use, quota used, price, spent (and credentials)."""
    rows = []
    for name, p in sorted(v.profiles.items()):
        u = v.usage(name)
        quota = f"{u['hours_week']:.1f}/{p.quota_hours_per_week:g} h" if p.quota_hours_per_week is not None \
            else f"{u['hours_week']:.1f} h"
        row = [name, p.adapter, p.gpu or "-", f"{u['active']}/{p.capacity}", quota, f"${p.usd_per_hour:g}/h",
               f"${u['cost_usd']:.2f}"]
        if credentials:
            missing = p.missing_credentials()
            row.append("missing " + ", ".join(missing) if missing else "set" if p.credentials else "-")
        rows.append(row)
    head = ["platform", "adapter", "gpu", "running", "used (7 days)", "price", "spent"]
    return table(rows, head + (["credentials"] if credentials else []))
