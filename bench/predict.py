"""Prediction throughput: files/s of `gwi predict` (reading <oid>.npy files, inference, CSV writing)
per model and for the 5-model ensemble with flip TTA, and the projected time for the competition's
65,818 test files. On CUDA it also compares fp16 with fp32 predictions (max / mean abs difference).

    python bench/predict.py [--files 64] [--preset tiny] [--device cpu|cuda] [--precision fp32|bf16|fp16]

Checkpoints come from one-step `gwi train` runs on a small synthetic set: untrained weights run at
the same speed as trained ones.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gwi.config import TrainConfig  # noqa: E402
from gwi.data.synth import synthesize  # noqa: E402
from gwi.models.registry import list_models  # noqa: E402
from gwi.inference import predict_batch  # noqa: E402
from gwi.predict import predict  # noqa: E402
from gwi.runs import load_model, run_url  # noqa: E402
from gwi.training import train  # noqa: E402

N_TEST = 65_818


def machine() -> str:
    cpu = "?"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return f"{cpu}, {os.cpu_count()} cores; GPU {gpu}; python {platform.python_version()}, torch {torch.__version__}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=64)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--device", default=None)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--models", default="")
    a = ap.parse_args()
    names = a.models.split(",") if a.models else list_models()
    print(f"machine : {machine()}")
    print(f"date    : {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"command : {' '.join(sys.argv)}")
    with tempfile.TemporaryDirectory(prefix="gwi-bench-predict-") as d:
        d = Path(d)
        os.environ["GWI_CACHE"] = str(d / "cache")
        synthesize(["FlatVel_A"], 8, f"file://{d}/s", "b", batch_size=8, progress=False, backend="deepwave")
        runs = {}
        for n in names:
            runs[n] = run_url(f"file://{d}/s", "bench", n)
            train(TrainConfig(model=n, preset=a.preset, dataset=f"file://{d}/s/datasets/b", run=runs[n], epochs=1,
                              batch_size=4, max_steps=1, heartbeat_s=60, device="cpu"), log=lambda *_: None)
        test = d / "test"
        test.mkdir()
        rng = np.random.default_rng(0)
        for i in range(a.files):
            np.save(test / f"{i:08x}.npy", (rng.standard_normal((5, 1000, 70)) * 3).astype(np.float32))

        rows = []

        def run(label, ckpts, tta):
            predict(ckpts, str(test), str(d / "warm.csv"), tta=tta, device=a.device, precision=a.precision,
                    batch_size=a.batch_size, progress=False, log=lambda *_: None)  # warm-up: loads, cudnn
            r = predict(ckpts, str(test), str(d / "sub.csv"), tta=tta, device=a.device, precision=a.precision,
                        batch_size=a.batch_size, progress=False, log=lambda *_: None)
            rows.append((label, r["device"], r["precision"], r["files_per_s"], N_TEST / r["files_per_s"] / 60))

        for n in names:
            run(f"{n} ({a.preset})", [runs[n]], False)
        run(f"ensemble of {len(names)} + flip TTA", [runs[n] for n in names], True)
        print(f"\n{a.files} test files, batch {a.batch_size}\n")
        print(f"{'what':40s} {'device':8s} {'precision':9s} {'files/s':>10s} {'65,818 files':>14s}")
        for label, dev, prec, fps, mins in rows:
            print(f"{label:40s} {dev:8s} {prec:9s} {fps:10.1f} {mins:11.1f} min")

        if torch.cuda.is_available() and (a.device or "cuda").startswith("cuda"):
            print("\nfp16 vs fp32 on CUDA (same weights, same 32 files), m/s after de-normalisation:")
            x = np.stack([np.load(p) for p in sorted(test.glob("*.npy"))[:32]])
            for n in names:
                m = load_model(runs[n], torch.device("cuda"))
                p32 = predict_batch([m], [1.0], x, torch.device("cuda"), "fp32")
                p16 = predict_batch([m], [1.0], x, torch.device("cuda"), "fp16")
                print(f"  {n:18s} max |diff| {np.abs(p32 - p16).max():7.2f}   mean {np.abs(p32 - p16).mean():6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
