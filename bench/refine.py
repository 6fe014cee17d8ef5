"""Refinement by FWI: how far ``gwi refine``'s inversion brings a smoothed truth back, measured in
one run on held-out maps simulated with the same backend.

    python bench/refine.py                                   # deepwave, 2 maps x 4 families, CPU
    python bench/refine.py --backend openfwi --device cuda --per-family 16
    python bench/refine.py --variants scan+gd,gd --iterations 60

The start is what issue 15 sets: each true map blurred (Gaussian, ``--blur`` cells) and scaled
(``--scale``). Each variant refines the same starts; the table gives the MAE (m/s) before and after,
the ratio, the data misfit's fall and the seconds per file. Target: the MAE falls by half or more.

Variants: ``gd`` (the iterations alone), ``scan`` (the whole-map scale scan alone), ``scan+gd`` (the
default: scan, then the iterations), ``scan+adam``; settings of a variant's own after slashes, e.g.
``scan+gd/tv=0.03/iterations=120``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import OthersCPU, log, machine_lines, others_text, table, wait_idle  # noqa: E402

from gwi import physics  # noqa: E402
from gwi.data.synth import velocity_batch  # noqa: E402
from gwi.physics.misfit import file_misfit  # noqa: E402
from gwi.physics.refine import RefineConfig, fwi, scale_scan  # noqa: E402

FAMILIES = "FlatVel_A,CurveVel_A,FlatFault_A,CurveFault_B"
HELD_OUT_SEED = 90_210  # no test or training set uses it


def starts(truth: np.ndarray, blur: float, scale: float) -> np.ndarray:
    return np.stack([gaussian_filter(v, blur) * scale for v in truth]).clip(1500, 4500).astype(np.float32)


def run_variant(name: str, fwd, obs: torch.Tensor, v0: torch.Tensor, cfg: RefineConfig) -> tuple[torch.Tensor, float]:
    # "scan+gd/tv=0.03/iterations=120": a variant with settings of its own
    name, *sets = name.split("/")
    for kv in sets:
        key, _, value = kv.partition("=")
        cfg = dataclasses.replace(cfg, **{key: type(getattr(cfg, key))(value)})
    t = time.perf_counter()
    out = []
    for s in range(0, len(v0), cfg.batch_size):
        o, v = obs[s:s + cfg.batch_size], v0[s:s + cfg.batch_size]
        if name == "scan":
            out.append(scale_scan(fwd, o, v, cfg))
        else:
            c = dataclasses.replace(cfg, scale_range=cfg.scale_range if name.startswith("scan+") else 0.0,
                                    optimizer=name.split("+")[-1])
            out.append(fwi(fwd, o, v, c)[0])
    return torch.cat(out), time.perf_counter() - t


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="deepwave", choices=physics.BACKENDS)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--families", default=FAMILIES)
    ap.add_argument("--per-family", type=int, default=2)
    ap.add_argument("--blur", type=float, default=3.0, help="Gaussian sigma of the start, in cells")
    ap.add_argument("--scale", type=float, default=1.03, help="the start's scaling")
    ap.add_argument("--variants", default="gd,scan,scan+gd")
    ap.add_argument("--iterations", type=int, default=RefineConfig.iterations)
    ap.add_argument("--lr", type=float, default=RefineConfig.lr)
    ap.add_argument("--tv", type=float, default=RefineConfig.tv)
    ap.add_argument("--bands", default=",".join(f"{b:g}" for b in RefineConfig.bands))
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="S")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    print("\n".join(machine_lines(["bench/refine.py", *argv], f"torch {torch.__version__}, "
                                                             f"{torch.get_num_threads()} threads, backend {a.backend}")))
    wait_idle(a.wait_idle, "refine")
    fams = a.families.split(",")
    truth = np.concatenate([velocity_batch(f, HELD_OUT_SEED, 0, a.per_family).reshape(-1, 70, 70) for f in fams])
    family = [f for f in fams for _ in range(a.per_family)]
    fwd = physics.backend(a.backend, device=device)
    with torch.no_grad():
        obs = torch.cat([fwd(torch.from_numpy(truth[s:s + a.batch_size]).to(device, fwd.dtype))
                         for s in range(0, len(truth), a.batch_size)])
    v0 = torch.from_numpy(starts(truth, a.blur, a.scale)).to(device, fwd.dtype)
    cfg = RefineConfig(backend=a.backend, iterations=a.iterations, lr=a.lr, tv=a.tv, batch_size=a.batch_size,
                       bands=tuple(float(b) for b in a.bands.split(",")))
    true = torch.from_numpy(truth).to(device, fwd.dtype)
    mae0 = (v0 - true).abs().mean(dim=(1, 2))
    mis0 = torch.cat([file_misfit(fwd, v0[s:s + a.batch_size], obs[s:s + a.batch_size])
                      for s in range(0, len(v0), a.batch_size)])
    rows, per_family = [], []
    others = OthersCPU().start()
    for name in a.variants.split(","):
        log(f"{name}: {len(truth)} files, {a.iterations} iterations")
        v, secs = run_variant(name, fwd, obs, v0, cfg)
        mae = (v - true).abs().mean(dim=(1, 2))
        mis = torch.cat([file_misfit(fwd, v[s:s + a.batch_size], obs[s:s + a.batch_size])
                         for s in range(0, len(v), a.batch_size)])
        rows.append((name, f"{mae0.mean():.1f}", f"{mae.mean():.1f}", f"{(mae / mae0).mean():.2f}",
                     f"{(mae / mae0).max():.2f}", f"{(mis0 / mis.clamp_min(1e-30)).median():.0f}",
                     f"{secs / len(truth):.1f}"))
        per_family.append((name, *(f"{mae0[[i for i, g in enumerate(family) if g == f]].mean():.0f} -> "
                                   f"{mae[[i for i, g in enumerate(family) if g == f]].mean():.0f}" for f in fams)))
    print()
    print(f"{len(truth)} held-out maps ({a.per_family} per family, seed {HELD_OUT_SEED}); start: blur {a.blur:g} "
          f"cells x {a.scale:g}; {a.backend} on {device}; iterations {a.iterations}, lr {a.lr:g}, tv {a.tv:g}, "
          f"bands {a.bands}")
    print(table(("variant", "MAE start", "MAE after", "after/start (mean)", "worst file", "misfit fall (median x)",
                 "s/file"), rows, right={1, 2, 3, 4, 5, 6}))
    print()
    print(table(("variant", *fams), per_family))
    print(others_text(others.stop()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
