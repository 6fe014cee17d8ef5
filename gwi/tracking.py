"""Training's numbers beyond ``metrics.json``: TensorBoard event files in the run, MLflow when
``MLFLOW_TRACKING_URI`` is set, and ``curves.png``; and reading runs back (``gwi runs``).

Event files are written locally (tensorboardX: the format without TensorBoard's server) and copied
into the run's ``tensorboard/`` folder with every checkpoint, so ``tensorboard --logdir`` on a
synced store (or ``s3://``, which TensorBoard reads) shows every attempt of a run on one chart: a
resumed process purges the steps after its checkpoint, as a restarted one should.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .errors import StoreError
from .runs import LATEST, METRICS, Run

TB_DIR = "tensorboard"
CURVES = "curves.png"
CURVES_EVERY_S = 30.0  # while training: curves.png redrawn with a checkpoint at most this often


class Tracker:
    """One training process's scalars, for rank 0 (others do not make one)."""

    def __init__(self, run: Run, name: str, params: dict, first_step: int):
        from tensorboardX import SummaryWriter

        self.run = run
        self.local = Path(tempfile.mkdtemp(prefix="gwi-tb-"))
        self.tb = SummaryWriter(str(self.local), purge_step=first_step or None, flush_secs=3600)
        self.mlflow = _mlflow(name, params)
        self.drawn = -math.inf

    def log(self, step: int, values: dict) -> None:
        values = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and v == v}
        for k, v in values.items():
            self.tb.add_scalar(k, v, step)
        if self.mlflow is not None:
            self._to_mlflow("log_metrics", {k.replace("/", "."): v for k, v in values.items()}, step=step)

    def _to_mlflow(self, call: str, *args, **kw) -> None:
        """A tracker that fails (a server down, a bad URI) costs its numbers, never the training: the
        event files in the run have them all."""
        try:
            getattr(self.mlflow, call)(*args, **kw)
        except Exception as e:  # noqa: BLE001 - whatever MLflow raises, training goes on
            print(f"gwi: MLflow {call} failed, no more logging to MLflow in this process: {e}", file=sys.stderr)
            self.mlflow = None

    def publish(self, history: list[dict], final: bool = False) -> None:
        """The event files and curves so far into the run, with each checkpoint: what a dead attempt
        leaves, and what ``gwi dashboard`` draws while the run goes on."""
        self.tb.flush()
        for f in self.local.rglob("*"):
            if f.is_file():
                self.run.store.put_file(f, f"{TB_DIR}/{f.relative_to(self.local)}")
        # drawing takes a fraction of a second: not at every one of a short run's frequent checkpoints
        if history and (final or time.monotonic() - self.drawn >= CURVES_EVERY_S):
            self.drawn = time.monotonic()
            with tempfile.TemporaryDirectory() as d:
                plot_curves({self.run.url.rsplit("/", 1)[-1]: history}, Path(d) / CURVES)
                self.run.store.put_file(Path(d) / CURVES, CURVES)

    def close(self, history: list[dict]) -> None:
        self.tb.close()
        self.publish(history, final=True)
        self.end("FINISHED")

    def end(self, status: str = "FAILED") -> None:
        """Drop the local event folder and end the MLflow run; called again after close, it does
        nothing. A failed or stopped process keeps in the run what its last checkpoint published:
        where the next attempt resumes, purging the steps after it."""
        if self.local is None:
            return
        self.tb.close()
        shutil.rmtree(self.local, ignore_errors=True)
        self.local = None
        if self.mlflow is not None:
            self._to_mlflow("end_run", status=status)


def _mlflow(name: str, params: dict):
    """The mlflow module with a run started, when ``MLFLOW_TRACKING_URI`` asks for it."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    try:
        import mlflow
    except ImportError:
        print("gwi: MLFLOW_TRACKING_URI is set but mlflow is not installed (pip install mlflow-skinny); "
              "not logging to MLflow", file=sys.stderr)
        return None
    try:
        mlflow.start_run(run_name=name)
        mlflow.log_params({k: str(v)[:250] for k, v in params.items()})
    except Exception as e:  # noqa: BLE001 - as in Tracker._to_mlflow: training goes on without it
        print(f"gwi: cannot log to MLflow at {os.environ['MLFLOW_TRACKING_URI']}: {e}; training goes on without it",
              file=sys.stderr)
        with contextlib.suppress(Exception):
            mlflow.end_run(status="FAILED")
        return None
    return mlflow


# ------------------------------------------------------------------------------------------------
# reading runs back


def plot_curves(runs: dict[str, list[dict]], out: Path) -> None:
    """Training loss and validation MAE (overall, and per family when one run is drawn) against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_mae) = plt.subplots(1, 2, figsize=(11, 4))
    for name, hist in runs.items():
        steps = [h["step"] for h in hist]
        ax_loss.plot(steps, [h.get("train_loss") for h in hist], marker=".", label=name)
        ax_mae.plot(steps, [h.get("val_mae") for h in hist], marker=".", label=name if len(runs) > 1 else "all")
        if len(runs) == 1:
            fams = sorted({f for h in hist for f in h.get("val_mae_per_family", {})})
            for f in fams:
                ax_mae.plot(steps, [h.get("val_mae_per_family", {}).get(f) for h in hist], lw=0.8, alpha=0.7, label=f)
    ax_loss.set(xlabel="step", ylabel="training loss", yscale="log", title="loss")
    ax_mae.set(xlabel="step", ylabel="validation MAE (m/s)", title="validation MAE")
    for ax in (ax_loss, ax_mae):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def run_metrics(url: str) -> dict | None:
    """A run's ``metrics.json`` (a finished run), or None."""
    try:
        return json.loads(Run(url, patience=0).store.get_bytes(METRICS))
    except (StoreError, ValueError):
        return None


def find_runs(store_url: str) -> list[str]:
    """The URLs of the runs in a store (folders under ``runs/`` holding a metrics.json or checkpoints)."""
    from .store import open_store

    store = open_store(store_url, patience=0)
    found = set()
    for key in store.list("runs"):
        head, sep, _ = key.rpartition(f"/{METRICS}")
        if not sep:
            head, sep, _ = key.rpartition(f"/{LATEST}")
        if sep and head:
            found.add(f"{store.url.rstrip('/')}/{head}")
    return sorted(found)


def summary_row(url: str, m: dict | None) -> list[str]:
    """One line of ``gwi runs``: run, model, data, steps, val MAE, best per family, time."""
    if m is None:
        return [url, "-", "-", "-", "-", f"unfinished (no {METRICS})", "-"]
    fams = m.get("val_mae_per_family") or {}
    best = "  ".join(f"{f} {v:.0f}" for f, v in sorted(fams.items()))
    mae = m.get("val_mae")
    secs = m.get("wall_s")
    return [url, f"{m.get('model', '-')}:{m.get('preset', '-')}", data_label(m),
            str(m.get("steps", "-")), f"{mae:.1f}" if isinstance(mae, (int, float)) else "-", best or "-",
            f"{secs / 60:.1f} min" if isinstance(secs, (int, float)) else "-"]


def data_label(m: dict) -> str:
    """The run's data: a dataset's name, or a mix (``kaggle-train + synth-aug x0.3``)."""
    mix = m.get("datasets") or []
    if len(mix) > 1:
        return " + ".join(p["name"] + (f" x{p['weight']:g}" if p["weight"] != 1 else "") for p in mix)
    return str(m.get("dataset", "-")).rsplit("/", 1)[-1]


RUN_COLUMNS = ["run", "model", "data", "steps", "val MAE m/s", "per family", "time"]
