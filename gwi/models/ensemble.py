"""The ensemble: member weights fitted on a validation fold, optional CRF smoothing, and
Monte-Carlo-dropout uncertainty.

* Weights minimise validation MAE (m/s) over the probability simplex (softmax parameters, Adam on the
  L1 loss, which is convex in the weights). The fitted weights are kept only if they beat both equal
  weights and the best single member on that fold; otherwise the better of those is used. So the
  ensemble's validation MAE is never worse than its best member's.
* CRF: a dense-free, 4-neighbour Gaussian CRF solved by mean field. Pairwise weights are bilateral,
  ``exp(-(u_i - u_j)² / 2σ²)`` on the prediction ``u``, so smoothing stays inside layers and stops at
  their boundaries. Strength λ and σ are grid-searched on validation; the CRF is kept only if it lowers
  validation MAE.
* MC dropout: dropout layers in train mode (BatchNorm stays in eval), N passes, per-pixel std.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .. import __version__

# ------------------------------------------------------------------------------------------------
# CRF


def crf_smooth(u: torch.Tensor, lam: float, sigma: float, iters: int = 5) -> torch.Tensor:
    """Mean-field of a bilateral 4-neighbour Gaussian CRF on maps ``u`` (B, 70, 70) in m/s."""
    if lam <= 0:
        return u
    x = u.unsqueeze(1)  # (B, 1, 70, 70)
    pad = F.pad(x, (1, 1, 1, 1), mode="replicate")
    shifts = [(0, 1), (2, 1), (1, 0), (1, 2)]  # up, down, left, right neighbours of the unary
    nb_u = [pad[:, :, a:a + 70, b:b + 70] for a, b in shifts]
    w = [torch.exp(-((x - n) ** 2) / (2 * sigma**2)) for n in nb_u]  # fixed by the unary: stable edges
    wsum = sum(w)
    v = x
    for _ in range(iters):
        pv = F.pad(v, (1, 1, 1, 1), mode="replicate")
        nb = sum(wi * pv[:, :, a:a + 70, b:b + 70] for wi, (a, b) in zip(w, shifts))
        v = (x + lam * nb) / (1 + lam * wsum)
    return v[:, 0]


def fit_crf(pred: torch.Tensor, truth: torch.Tensor, grid_lam=(0.25, 0.5, 1, 2, 4),
            grid_sigma=(25, 50, 100, 200)) -> dict:
    """Grid-search (λ, σ) on validation; returns the best and whether it beats no CRF."""
    base = float((pred - truth).abs().mean())
    best = {"enabled": False, "lambda": 0.0, "sigma": 0.0, "val_mae": base, "val_mae_without": base}
    for lam in grid_lam:
        for sig in grid_sigma:
            mae = float((crf_smooth(pred, lam, sig) - truth).abs().mean())
            if mae < best["val_mae"] - 1e-6:
                best.update(enabled=True, **{"lambda": float(lam), "sigma": float(sig), "val_mae": mae})
    return best


# ------------------------------------------------------------------------------------------------
# weights


def fit_weights(preds: torch.Tensor, truth: torch.Tensor, steps: int = 300, lr: float = 0.05) -> tuple[list[float], str]:
    """preds (M, N, 70, 70), truth (N, 70, 70) → (weights on the simplex, how they were chosen)."""
    m = preds.shape[0]
    if m == 1:
        return [1.0], "single member"

    def mae(w):
        return float((torch.einsum("m,mnhw->nhw", w, preds) - truth).abs().mean())

    logits = torch.zeros(m, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=lr)
    for _ in range(steps):
        w = torch.softmax(logits, 0)
        loss = (torch.einsum("m,mnhw->nhw", w, preds) - truth).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    fitted = torch.softmax(logits.detach(), 0)
    equal = torch.full((m,), 1.0 / m)
    singles = [(mae(torch.eye(m)[i]), i) for i in range(m)]
    best_single = min(singles)
    cands = [(mae(fitted), "fitted", fitted), (mae(equal), "equal", equal),
             (best_single[0], f"best single member ({best_single[1]})", torch.eye(m)[best_single[1]])]
    score, how, w = min(cands, key=lambda c: c[0])
    return [float(x) for x in w], how


# ------------------------------------------------------------------------------------------------
# MC dropout


def enable_mc_dropout(model: torch.nn.Module) -> int:
    """Dropout layers to train mode (everything else stays in eval); returns how many."""
    n = 0
    for mod in model.modules():
        if isinstance(mod, (torch.nn.Dropout, torch.nn.Dropout2d, torch.nn.Dropout1d, torch.nn.Dropout3d)):
            mod.train()
            n += 1
    return n


@torch.no_grad()
def mc_dropout_std(loaded, x: torch.Tensor, n: int, precision_ctx) -> torch.Tensor:
    """Per-pixel std (m/s) over ``n`` stochastic passes of one member: (B, 70, 70)."""
    model = loaded.model
    if enable_mc_dropout(model) == 0:
        model.eval()
        return torch.zeros(x.shape[0], 70, 70, device=x.device)
    outs = []
    xn = loaded.norm.seismic(x)
    for _ in range(n):
        with precision_ctx():
            outs.append(loaded.norm.denorm_velocity(model(xn).float())[:, 0])
    model.eval()
    return torch.stack(outs).std(0)


# ------------------------------------------------------------------------------------------------
# fitting


def fit(members: list[str], dataset: str, out: str, *, split: str | None = None, crf: bool = True,
        mc_samples: int = 8, device: str | None = None, batch_size: int = 16, plots: str | None = None,
        min_family_samples: int = 8, log=print) -> dict:
    """Fit weights (and CRF) on ``split`` of ``dataset``; write ``ensemble.json`` to ``out``."""
    from ..data import folds
    from ..data.shards import ShardedDataset
    from ..data.sync import pull
    from ..inference import resolve_device_precision
    from ..runs import load_model

    if not members:
        raise ValueError("members: expected at least one checkpoint")
    dev, _ = resolve_device_precision(device, "fp32")
    loaded = [load_model(c, dev) for c in members]
    # default: the fold the first member validated on, so the weights are fitted on unseen samples
    split = split or loaded[0].split or "kfold:5:0"
    ds = ShardedDataset(pull(dataset, progress=False))
    _, val_idx = folds.split(ds.manifest, split)
    if len(val_idx) == 0:
        raise ValueError(f"split {split} has no validation samples in {dataset}")
    log(f"fitting an ensemble of {len(loaded)} on {len(val_idx)} validation samples ({split}) of {dataset}")
    fams = ds.families[val_idx]
    preds, stds, truth = predict_fold(loaded, ds, val_idx, dev, batch_size, mc_samples)

    weights, how = fit_weights(preds, truth)
    ens = mix(weights, preds)
    # per-family weights where the fold has enough samples of a family; prediction uses them only
    # when the input names its families (the Kaggle test set does not: global weights there)
    family_weights = fit_family_weights(preds, truth, fams, min_family_samples) if len(loaded) > 1 else {}
    crf_cfg = fit_crf(ens, truth) if crf else {"enabled": False}
    final = crf_smooth(ens, crf_cfg["lambda"], crf_cfg["sigma"]) if crf_cfg.get("enabled") else ens

    report = {
        "format": "gwi-ensemble", "format_version": 1, "gwi_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dataset": dataset, "split": split, "val_samples": int(len(val_idx)),
        "members": [{"checkpoint": c, "resolved": m.source, "model": m.name, "weight": w,
                     "val_mae": per_family_mae(preds[k], truth, fams),
                     "mc_dropout_std": ({f: float(stds[k][fams == f].mean()) for f in sorted(set(fams.tolist()))}
                                        if mc_samples > 1 else None)}
                    for k, (c, m, w) in enumerate(zip(members, loaded, weights))],
        "weights_chosen_as": how,
        "family_weights": family_weights,
        "family_weights_min_samples": min_family_samples,
        "crf": crf_cfg,
        "mc_samples": mc_samples,
        "val_mae": per_family_mae(final, truth, fams),
        "val_mae_without_crf": per_family_mae(ens, truth, fams),
    }
    if family_weights:
        # fitted and scored on the same fold: optimistic, shown for comparison only
        report["val_mae_family_weights_in_sample"] = per_family_mae(
            mix_per_family(family_weights, preds, fams, ens), truth, fams)
    write_json(out, report)
    if plots:
        ens_std = mix(weights, stds) if mc_samples > 1 else None
        write_plots(plots, final.numpy(), truth.numpy(), fams, None if ens_std is None else ens_std.numpy(),
                    ids=[int(i) for i in val_idx])
    best = min(m["val_mae"]["overall"] for m in report["members"])
    log(f"ensemble val MAE {report['val_mae']['overall']:.1f} m/s (best member {best:.1f}); weights {how}: "
        f"{', '.join(f'{w:.3f}' for w in weights)}; CRF {'kept' if crf_cfg.get('enabled') else 'off'}")
    return report


def predict_fold(loaded, ds, idx: np.ndarray, device, batch_size: int, mc_samples: int):
    """Each member's fp32 prediction (M, N, 70, 70) m/s on samples ``idx`` of ``ds``, its MC-dropout
    std (zeros unless ``mc_samples`` > 1), and the truth (N, 70, 70)."""
    from contextlib import nullcontext

    from ..inference import predict_batch

    preds = torch.zeros(len(loaded), len(idx), 70, 70)
    stds = torch.zeros(len(loaded), len(idx), 70, 70)
    truth = torch.zeros(len(idx), 70, 70)
    for s in range(0, len(idx), batch_size):
        b = idx[s:s + batch_size]
        x, y = ds.batch(b)
        truth[s:s + len(b)] = torch.from_numpy(y[:, 0])
        for k, m in enumerate(loaded):
            preds[k, s:s + len(b)] = torch.from_numpy(predict_batch([m], [1.0], x, device, "fp32"))
            if mc_samples > 1:
                stds[k, s:s + len(b)] = mc_dropout_std(m, torch.from_numpy(x).to(device), mc_samples, nullcontext).cpu()
    return preds, stds, truth


def mix(weights: list[float], preds: torch.Tensor) -> torch.Tensor:
    """The weighted sum over members of ``preds`` (M, N, 70, 70)."""
    return torch.einsum("m,mnhw->nhw", torch.tensor(weights), preds)


def fit_family_weights(preds: torch.Tensor, truth: torch.Tensor, fams: np.ndarray, min_samples: int) -> dict:
    """Weights per family that has at least ``min_samples`` samples in the fold."""
    out = {}
    for f in sorted(set(fams.tolist())):
        sel = torch.from_numpy(np.flatnonzero(fams == f))
        if len(sel) >= min_samples:
            out[f] = fit_weights(preds[:, sel], truth[sel])[0]
    return out


def mix_per_family(family_weights: dict, preds: torch.Tensor, fams: np.ndarray, default: torch.Tensor) -> torch.Tensor:
    """``default`` with each family that has weights replaced by its own weighted sum."""
    out = default.clone()
    for f, w in family_weights.items():
        sel = torch.from_numpy(np.flatnonzero(fams == f))
        out[sel] = mix(w, preds[:, sel])
    return out


def per_family_mae(p: torch.Tensor, truth: torch.Tensor, fams: np.ndarray) -> dict:
    """MAE (m/s) of ``p`` per family and ``overall``."""
    err = (p - truth).abs().flatten(1).mean(1).numpy()
    out = {f: float(err[fams == f].mean()) for f in sorted(set(fams.tolist()))}
    out["overall"] = float(err.mean())
    return out


def write_json(out: str, obj: dict) -> None:
    """``obj`` as JSON at ``out``, written whole or not at all (a temp file renamed over it)."""
    out_p = Path(out)
    out_p.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_p.with_name(out_p.name + ".partial")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(out_p)


def load_ensemble(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"ensemble: {path} does not exist")
    try:
        e = json.loads(p.read_text())
    except ValueError as err:
        raise ValueError(f"ensemble: {path} is not valid JSON ({err})") from None
    if e.get("format") != "gwi-ensemble":
        raise ValueError(f"ensemble: {path} is not a gwi ensemble file (format should be 'gwi-ensemble')")
    return e


def write_plots(folder: str, pred: np.ndarray, truth: np.ndarray | None, fams: np.ndarray,
                std: np.ndarray | None, per_family: int = 2, ids=None) -> list[str]:
    """PNG per sample: prediction, uncertainty and, with labels, truth and error.

    Files are ``<family>-<id>.png``, ``id`` from ``ids`` (e.g. dataset sample indices or oids)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for fam in sorted(set(fams.tolist())):
        for i in np.flatnonzero(fams == fam)[:per_family]:
            panels = [("prediction m/s", pred[i], "jet", (1500, 4500))]
            if std is not None:
                panels.append(("MC-dropout std m/s", std[i], "magma", (0, max(1.0, float(std[i].max())))))
            if truth is not None:
                err = pred[i] - truth[i]
                panels += [("truth m/s", truth[i], "jet", (1500, 4500)),
                           (f"error, MAE {np.abs(err).mean():.0f} m/s", err, "RdBu_r", (-500, 500))]
            fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2))
            for ax, (title, img, cmap, lim) in zip(np.atleast_1d(axes), panels):
                im = ax.imshow(img, cmap=cmap, vmin=lim[0], vmax=lim[1])
                ax.set_title(title, fontsize=9)
                ax.axis("off")
                fig.colorbar(im, ax=ax, fraction=0.046)
            label = ids[i] if ids is not None else i
            fig.suptitle(f"{fam} #{label}", fontsize=10)
            fig.tight_layout()
            p = out / f"{fam}-{label}.png"
            fig.savefig(p, dpi=80)
            plt.close(fig)
            written.append(str(p))
    return written
