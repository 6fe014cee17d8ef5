"""GPU benchmark: deepwave synthesis speed, and per model the full-size train step and inference
throughput in each precision, on whatever CUDA device is present. Prints tables (and writes JSON to
$OUT/gpu.json when $OUT is set).

    python bench/gpu.py [--models a,b] [--batch 64] [--infer-batch 256] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gwi.models import registry  # noqa: E402


def timed(fn, steps: int, warmup: int = 3) -> float:
    """Seconds per call, CUDA-synchronised, after warm-up."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def bench_synth(batch: int) -> dict:
    import numpy as np

    from gwi import physics
    from gwi.data.synth import velocity_batch

    dw_gpu, dw_cpu = physics.backend("deepwave", device="cuda"), physics.backend("deepwave", device="cpu")

    def fm(v):
        with torch.no_grad():
            return dw_gpu(torch.from_numpy(v)).cpu().numpy()

    v = velocity_batch("CurveFault_B", 0, 0, batch)
    fm(v[:2])
    torch.cuda.synchronize()
    t = time.perf_counter()
    x = fm(v)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    with torch.no_grad():
        ref = dw_cpu(torch.from_numpy(v[:1])).numpy()
    err = float(np.abs(x[:1] - ref).max() / np.abs(ref).max())
    return {"batch": batch, "samples_per_s": batch / dt, "max_rel_diff_vs_cpu": err}


def bench_model(name: str, batch: int, infer_batch: int, steps: int) -> dict:
    dev = torch.device("cuda")
    model = registry.create_model(name, "default").to(dev)
    out = {"model": name, "params": registry.count_parameters(model)}
    x = torch.randn(batch, 5, 1000, 70, device=dev)
    y = torch.rand(batch, 1, 70, 70, device=dev) * 2 - 1
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for prec in ("fp32", "bf16", "fp16"):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(prec)
        scaler = torch.amp.GradScaler("cuda", enabled=prec == "fp16")

        def step():
            with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                loss = (model(x).float() - y).abs().mean()
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        try:
            torch.cuda.reset_peak_memory_stats()
            s = timed(step, steps)
            out[f"train_{prec}_ms"] = s * 1000
            out[f"train_{prec}_samples_per_s"] = batch / s
            out[f"train_{prec}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        except Exception as e:  # noqa: BLE001 - report and go on to the next precision
            out[f"train_{prec}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    model.eval()
    xi = torch.randn(infer_batch, 5, 1000, 70, device=dev)
    for prec in ("fp32", "bf16", "fp16"):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(prec)

        @torch.no_grad()
        def infer():
            with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                model(xi)

        try:
            s = timed(infer, max(3, steps // 2))
            out[f"infer_{prec}_samples_per_s"] = infer_batch / s
        except Exception as e:  # noqa: BLE001
            out[f"infer_{prec}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    model.cpu()  # free the GPU before the next model
    torch.cuda.empty_cache()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--infer-batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--synth-batch", type=int, default=128)
    a = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    p = torch.cuda.get_device_properties(0)
    head = {"gpu": p.name, "gpu_mem_gib": p.total_memory / 2**30, "torch": torch.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "argv": sys.argv}
    print(json.dumps(head))
    res = {"head": head, "models": []}
    try:
        res["synth"] = bench_synth(a.synth_batch)
        s = res["synth"]
        print(f"\ndeepwave synth on GPU: {s['samples_per_s']:.1f} samples/s (batch {s['batch']}), "
              f"max rel diff vs CPU {s['max_rel_diff_vs_cpu']:.2e}")
    except Exception as e:  # noqa: BLE001
        res["synth"] = {"error": f"{type(e).__name__}: {e}"}
        print(f"\ndeepwave synth on GPU failed: {e}")
    names = a.models.split(",") if a.models else registry.list_models()
    for n in names:
        try:
            r = bench_model(n, a.batch, a.infer_batch, a.steps)
        except Exception as e:  # noqa: BLE001
            r = {"model": n, "error": f"{type(e).__name__}: {e}"}
        res["models"].append(r)
        print(json.dumps(r))
    cols = ["params", "train_fp32_ms", "train_bf16_ms", "train_fp16_ms", "train_bf16_peak_gib",
            "infer_fp32_samples_per_s", "infer_bf16_samples_per_s", "infer_fp16_samples_per_s"]
    print(f"\nfull-size models, train batch {a.batch}, inference batch {a.infer_batch}")
    print("| model | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for r in res["models"]:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append("err" if v is None else (f"{v / 1e6:.2f}M" if c == "params" else f"{v:.1f}" if v < 100 else f"{v:.0f}"))
        print(f"| {r['model']} | " + " | ".join(cells) + " |")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
