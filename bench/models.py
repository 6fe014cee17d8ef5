"""Model benchmark on the CPU: size and speed per model, and a fixed-budget quality table.

    python bench/models.py [--budget-s 60] [--samples 40] [--models a,b] [--quick]

1. Per model: parameters (default, tiny); tiny-preset inference samples/s in fp32 and bf16 (batch 8);
   tiny train step (batch 8, forward + backward + AdamW) in ms; default-preset fp32 inference
   samples/s at batch 2. Medians of repeats after a warm-up.
2. Quality at a fixed budget: every tiny model trains for the same wall time on the same synthetic
   families (kfold:5:0), then validation MAE in m/s, per family, beside the predict-the-mean-map
   baseline.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gwi.data.synth import synthesize  # noqa: E402
from gwi.models import registry  # noqa: E402
from gwi.train import TrainConfig, train  # noqa: E402

FAMILIES = ["FlatVel_A", "CurveVel_A", "FlatFault_A", "Style_A"]


def median_time(fn, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def speed(name: str, reps: int) -> dict:
    out = {"params_default": registry.count_parameters(registry.create_model(name, "default"))}
    m = registry.create_model(name, "tiny")
    out["params_tiny"] = registry.count_parameters(m)
    x = torch.randn(8, 5, 1000, 70)
    y = torch.rand(8, 1, 70, 70) * 2 - 1
    m.eval()
    with torch.no_grad():
        out["tiny_fp32_sps"] = 8 / median_time(lambda: m(x), reps)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out["tiny_bf16_sps"] = 8 / median_time(lambda: m(x), reps)
    m.train()
    opt = torch.optim.AdamW(m.parameters(), 1e-3)

    def step():
        loss = (m(x) - y).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    out["tiny_step_ms"] = 1000 * median_time(step, reps)
    big = registry.create_model(name, "default").eval()
    x2 = torch.randn(2, 5, 1000, 70)
    with torch.no_grad():
        out["default_fp32_sps"] = 2 / median_time(lambda: big(x2), max(2, reps // 2))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget-s", type=float, default=60)
    ap.add_argument("--samples", type=int, default=40, help="per family")
    ap.add_argument("--models", default="")
    ap.add_argument("--quick", action="store_true", help="15 s budget, 16 samples per family, fewer repeats")
    a = ap.parse_args()
    if a.quick:
        a.budget_s, a.samples = 15, 16
    reps = 3 if a.quick else 5
    names = a.models.split(",") if a.models else registry.list_models()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"machine : {cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"python {platform.python_version()}")
    print(f"load    : {' '.join(f'{v:.2f}' for v in os.getloadavg())} (1/5/15 min) at start")
    print(f"date    : {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"command : {' '.join(sys.argv)}\n")

    print(f"{'model':16s} {'params':>8s} {'tiny':>8s} {'tiny fp32/s':>12s} {'tiny bf16/s':>12s} "
          f"{'tiny step ms':>13s} {'default fp32/s':>15s}")
    for n in names:
        s = speed(n, reps)
        print(f"{n:16s} {s['params_default'] / 1e6:7.2f}M {s['params_tiny'] / 1e6:7.3f}M {s['tiny_fp32_sps']:12.1f} "
              f"{s['tiny_bf16_sps']:12.1f} {s['tiny_step_ms']:13.0f} {s['default_fp32_sps']:15.2f}", flush=True)

    with tempfile.TemporaryDirectory(prefix="gwi-bench-models-") as d:
        os.environ["GWI_CACHE"] = str(Path(d) / "cache")
        synthesize(FAMILIES, a.samples, f"file://{d}/s", "q", seed=0, batch_size=20, progress=False)
        ds = f"file://{d}/s/datasets/q"
        print(f"\nfixed budget {a.budget_s:.0f} s per tiny model; dataset: synthetic {', '.join(FAMILIES)} × "
              f"{a.samples} (seed 0), split kfold:5:0; batch 8, lr 2e-3, fp32; MAE m/s on de-normalised velocity\n")
        print(f"{'model':16s} {'steps':>6s} {'wall s':>7s} {'val MAE':>8s} {'baseline':>9s} " +
              " ".join(f"{f:>12s}" for f in FAMILIES))
        for n in names:
            # time three steps to turn the wall budget into a step count
            probe = train(TrainConfig(model=n, preset="tiny", dataset=ds, run=f"file://{d}/probe-{n}", epochs=1,
                                      batch_size=8, max_steps=3, heartbeat_s=600, lr=2e-3), log=lambda *_: None)
            per_step = 8 / probe["samples_per_s"]  # loop time only: pull and set-up are paid once
            steps = max(5, int(a.budget_s / per_step))
            t = time.perf_counter()
            m = train(TrainConfig(model=n, preset="tiny", dataset=ds, run=f"file://{d}/run-{n}", epochs=10_000,
                                  batch_size=8, max_steps=steps, heartbeat_s=600, lr=2e-3, val_every=10_000),
                      log=lambda *_: None)
            wall = time.perf_counter() - t
            fam = m["val_mae_per_family"]
            print(f"{n:16s} {m['steps']:6d} {wall:7.1f} {m['val_mae']:8.1f} {m['baseline_mae']:9.1f} " +
                  " ".join(f"{fam.get(f, float('nan')):12.1f}" for f in FAMILIES), flush=True)
    print(f"\nload    : {' '.join(f'{v:.2f}' for v in os.getloadavg())} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
