"""``gwi evaluate``: a run's model or an ensemble scored on a labelled dataset.

MAE and RMSE in m/s and SSIM, per family and overall, and the worst samples drawn (truth, prediction,
error). The numbers are those OpenFWI reports, so they compare with its tables:

* MAE: the mean absolute error over every pixel of the samples (the competition's metric);
* RMSE: the square root of the mean squared error over the same pixels (pooled, not a mean of
  per-sample RMSEs);
* SSIM: per sample, on the map scaled to [0, 1] by the velocity range (1500–4500 m/s), with an 11x11
  Gaussian window (sigma 1.5), zero padding and the constants (0.01, 0.03)^2: OpenFWI's
  ``pytorch_ssim``. torchmetrics' SSIM pads by reflection and crops the border, which gives other
  numbers on 70x70 maps; written here so the SSIM compares with OpenFWI's. The mean over samples.

Predictions go through the same path as ``gwi predict`` (:class:`gwi.predict.Members`): the members,
their weights (per family when the ensemble has them: a labelled dataset names its families), the
CRF, flip TTA.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from . import postprocess
from .data import folds
from .data.layout import VMAX, VMIN
from .data.shards import ShardedDataset
from .data.sync import pull
from .errors import GwiError
from .inference import resolve_device_precision
from .predict import Members, chosen_members
from .progress import update as report_progress
from .runs import load_model

REPORT_FORMAT = "gwi-evaluation"
METRICS = ("mae", "rmse", "ssim")


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # (1, 1, size, size)


def ssim(a: torch.Tensor, b: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM of each pair of maps in [0, 1]: (N, H, W), (N, H, W) -> (N,). OpenFWI's definition (see
    the module's docstring)."""
    a, b = a.double()[:, None], b.double()[:, None]  # (N, 1, H, W)
    w = _gaussian_window(size, sigma).to(a.device)

    def blur(t):
        return torch.nn.functional.conv2d(t, w, padding=size // 2)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def scores(pred: np.ndarray, truth: np.ndarray, fams: np.ndarray) -> dict:
    """{family: {samples, mae, rmse, ssim}} and ``overall``, from (N, 70, 70) m/s maps."""
    p, t = torch.from_numpy(pred).double(), torch.from_numpy(truth).double()
    abs_err = (p - t).abs().flatten(1).mean(1)  # (N,)
    sq_err = ((p - t) ** 2).flatten(1).mean(1)
    sim = ssim((p - VMIN) / (VMAX - VMIN), (t - VMIN) / (VMAX - VMIN))

    def group(sel) -> dict:
        return {"samples": int(sel.sum()), "mae": float(abs_err[sel].mean()),
                "rmse": math.sqrt(float(sq_err[sel].mean())), "ssim": float(sim[sel].mean())}

    out = {f: group(torch.from_numpy(fams == f)) for f in sorted(set(fams.tolist()))}
    out["overall"] = group(torch.ones(len(fams), dtype=torch.bool))
    return out


def evaluate(checkpoints: list[str], dataset: str, *, ensemble: str | None = None, split: str | None = None,
             tta: bool = True, device: str | None = None, precision: str | None = None, batch_size: int = 32,
             worst: int = 6, plot: str | None = None, post: str | None = None, log=print) -> dict:
    """The report (see the module's docstring) of ``checkpoints`` (averaged) or ``ensemble`` on
    ``split`` of ``dataset``: ``kfold:K:I`` or ``family:NAME`` (its validation part), ``all`` (every
    sample), or by default the split the (first) model validated on, so the samples are unseen.
    ``post``: :mod:`gwi.postprocess` steps; the report's ``metrics`` are then with them and
    ``metrics_raw`` without, so a step is kept only where it pays."""
    posts = postprocess.parse(post)
    checkpoints, weights, crf, family_weights = chosen_members(checkpoints, None, ensemble)
    dev, precision = resolve_device_precision(device, precision)
    models = [load_model(c, dev) for c in checkpoints]
    weights = weights or [1.0 / len(models)] * len(models)
    ds = ShardedDataset(pull(dataset, progress=False))
    if not ds.manifest.get("labelled", True):
        raise GwiError(f"dataset {dataset} has no velocity labels (a test set?); evaluate needs labelled data")
    split = split or (_ensemble_split(ensemble) if ensemble else None) or models[0].split
    if split in (None, "all"):
        idx = np.arange(len(ds))
        split = "all"
    else:
        _, idx = folds.split(ds.manifest, split)  # a bad split: ValueError naming it
    if len(idx) == 0:
        raise GwiError(f"split {split} of {dataset} has no samples to evaluate")
    fams = ds.families[idx]
    members = Members(models, weights, family_weights if set(fams.tolist()) <= set(family_weights) else {},
                      crf, dev, precision, tta)
    log(f"evaluating {len(models)} model(s) ({', '.join(m.name for m in models)}) on {len(idx)} samples "
        f"({split}) of {dataset} on {dev} in {precision}" + (" with flip TTA" if tta else ""))
    pred = np.empty((len(idx), 70, 70), np.float32)
    truth = np.empty_like(pred)
    t0 = time.time()
    for s in range(0, len(idx), batch_size):
        b = idx[s:s + batch_size]
        x, y = ds.batch(b)
        pred[s:s + len(b)] = members.velocity(x, fams[s:s + len(b)].tolist() if members.family_weights else None)
        truth[s:s + len(b)] = y[:, 0]
        report_progress(state="running", done=s + len(b), total=len(idx), unit="samples")
    raw = None
    if posts:
        raw = scores(pred, truth, fams)
        pred = postprocess.apply(pred, posts)
    err = np.abs(pred - truth).reshape(len(idx), -1).mean(1)
    order = np.argsort(-err)[:worst]
    report = {
        "format": REPORT_FORMAT, "format_version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "models": [m.source for m in models], "model_names": [m.name for m in models], "weights": weights,
        "ensemble": ensemble, "crf": bool(crf), "tta": tta, "dataset": dataset, "split": split,
        "samples": int(len(idx)), "device": str(dev), "precision": precision, "seconds": time.time() - t0,
        "metrics": scores(pred, truth, fams), **({"post": [str(p) for p in posts], "metrics_raw": raw} if posts else {}),
        "worst": [{"index": int(idx[i]), "family": str(fams[i]), "mae": float(err[i])} for i in order],
    }
    # the attempt's heartbeat carries the result, so gwi status shows an evaluate job's MAE
    report_progress(state="running", val_mae=report["metrics"]["overall"]["mae"],
                    val_mae_per_family={f: m["mae"] for f, m in report["metrics"].items() if f != "overall"})
    if plot:
        draw_worst(plot, pred[order], truth[order], report["worst"])
        report["plot"] = plot
    return report


def _ensemble_split(path: str) -> str | None:
    from .models.ensemble import load_ensemble

    return load_ensemble(path).get("split")


def draw_worst(path: str, pred: np.ndarray, truth: np.ndarray, worst: list[dict]) -> None:
    """One PNG: a row per sample (truth, prediction, error), the worst first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(worst)
    fig, axes = plt.subplots(max(n, 1), 3, figsize=(9.6, 3.0 * max(n, 1)), squeeze=False)
    for r, w in enumerate(worst):
        err = pred[r] - truth[r]
        panels = (("truth m/s", truth[r], "jet", (VMIN, VMAX)), ("prediction m/s", pred[r], "jet", (VMIN, VMAX)),
                  (f"error, MAE {w['mae']:.0f} m/s", err, "RdBu_r", (-500, 500)))
        for ax, (title, img, cmap, lim) in zip(axes[r], panels):
            im = ax.imshow(img, cmap=cmap, vmin=lim[0], vmax=lim[1])
            ax.set_title(f"{w['family']} #{w['index']}: {title}" if title.startswith("truth") else title, fontsize=8)
            ax.axis("off")
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def table(report: dict) -> str:
    """The report as a text table: a row per family, then overall."""
    raw = report.get("metrics_raw")
    names = [f for f in report["metrics"] if f != "overall"] + ["overall"]
    w = max(map(len, names))
    head = f"{'family':<{w}}  {'samples':>7}  {'MAE m/s':>8}  {'RMSE m/s':>8}  {'SSIM':>6}"
    lines = [head + (f"  {'without ' + '+'.join(report['post']):>20}" if raw else "")]
    for f in names:
        m = report["metrics"][f]
        lines.append(f"{f:<{w}}  {m['samples']:>7}  {m['mae']:>8.1f}  {m['rmse']:>8.1f}  {m['ssim']:>6.4f}"
                     + (f"  {raw[f]['mae']:>20.1f}" if raw else ""))
    return "\n".join(lines)


