"""Training-loop speed: gwi's loop against the bare step of the same model, in one run on one machine.

    .venv/bin/python bench/loop.py [--quick] [--models a,b] [--preset default|tiny] [--batch 16]
                                   [--device cpu|cuda] [--precision auto] [--window-s S] [--set KEY=VALUE]
                                   [--wait-idle S] [--json FILE]

Per registered model (``--models`` to choose), at one preset and batch:

* bare step: forward + L1 loss + backward + AdamW step on a batch already on the device (normalised
  random tensors), in the precision gwi's loop resolves to (``gwi.training.precision.resolve_precision``), with a
  GradScaler for fp16, ``torch.compile`` / channels-last when the loop is asked for them (``--set
  compile=true``); the median of the timed steps, each between ``torch.cuda.synchronize()`` calls on a
  GPU. Half the timed steps run before the loop runs and half after, so a drift of the machine's speed
  shows in both figures.
* gwi's loop: ``gwi.training.train`` on a dataset of random float16 shards (written with DatasetWriter,
  an epoch longer than the runs up to 4,096 samples, a few validation samples), same model, preset, batch, device and
  precision, TrainConfig's defaults otherwise (EMA, flip, clipping, ...; ``--set`` changes them). The
  steady rate is the difference of two runs of N1 and N2 steps, (loop_samples2 - loop_samples1) /
  (loop_s2 - loop_s1), so start-up, the first slow steps (cudnn autotuning, compilation) and the
  final validation and checkpoint cancel. N2 - N1 is sized from the bare step to take about
  ``--window-s`` seconds.

The table gives both rates, their ratio and the issue-13 target (>= 0.9x on CPU, >= 0.8x on a GPU).
Progress goes to stderr; stdout holds only the header and the table. Exit status 1 when a model fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gwi.models import registry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    OthersCPU,
    bare_train_steps,
    busy_text,
    load_text,
    log,
    machine_lines,
    others_text,
    params_text,
    scratch_home,
    table,
    wait_idle,
)

SEED = 0
FAMILY = "FlatVel_A"  # one family: the content of the random shards does not matter, only their size
VAL_SAMPLES = 2  # the loop's validation at the end of each run: kept tiny, it is not what is measured
MAX_SAMPLES = 4096  # 2.9 GB of float16 shards; beyond this the runs wrap into a second epoch
TARGET = {"cpu": 0.9, "cuda": 0.8}


@dataclass
class Mode:
    window_s: float  # wall seconds the N2 - N1 steps should take (guessed from the bare step)
    bare_steps: int  # timed bare steps, half before and half after the loop runs
    warmup: int  # untimed bare steps first (allocation, cudnn autotuning, compilation)
    min_window: int  # at least this many steps in N2 - N1


# a GPU step takes milliseconds: many more bare steps, and a shorter window (its device time is scarce)
MODES = {("full", "cpu"): Mode(window_s=60.0, bare_steps=8, warmup=2, min_window=5),
         ("full", "cuda"): Mode(window_s=10.0, bare_steps=60, warmup=10, min_window=50),
         ("quick", "cpu"): Mode(window_s=6.0, bare_steps=4, warmup=1, min_window=3),
         ("quick", "cuda"): Mode(window_s=3.0, bare_steps=20, warmup=5, min_window=20)}


@dataclass
class Row:
    name: str
    batch: int
    params: int | None = None
    precision: str = "?"
    bare_s: list[float] = field(default_factory=list)  # seconds per bare step
    n1: int = 0
    n2: int = 0
    runs: list[dict] = field(default_factory=list)  # the two train() metrics
    walls: list[float] = field(default_factory=list)
    loop_rate: float | None = None
    window: tuple[int, float] | None = None  # (samples, seconds) the longer run's loop spent beyond the shorter's
    others: float | None = None
    error: str | None = None

    @property
    def bare_rate(self) -> float | None:
        return None if not self.bare_s else self.batch / statistics.median(self.bare_s)


def write_random_dataset(store: Path, samples: int) -> str:
    """``samples`` random float16 samples of one family (seismic ~N(0,1), velocity uniform in range);
    returns the dataset's URL. One block of 64 is drawn and rolled: drawing 3 GB of fresh randoms would
    take longer than the runs, and the bytes do not change the speed."""
    from gwi.data.layout import VMAX, VMIN
    from gwi.data.shards import DatasetWriter

    rng = np.random.default_rng(SEED)
    block = 64
    x = rng.standard_normal((block, *registry.INPUT_SHAPE), dtype=np.float32).astype(np.float16)  # (64, 5, 1000, 70)
    y = rng.uniform(VMIN, VMAX, (block, *registry.OUTPUT_SHAPE)).astype(np.float32)  # (64, 1, 70, 70)
    name = "bench-loop"
    with DatasetWriter(f"file://{store}", name, source={"kind": "random", "seed": SEED}, labelled=True,
                       shard_size=512, overwrite=True) as w:
        for start in range(0, samples, block):
            n = min(block, samples - start)
            k = start // block
            w.add(FAMILY, np.roll(x, k, axis=0)[:n], np.roll(y, k, axis=0)[:n], src=f"random:{start}", first=start)
        w.finish()
    return f"file://{store}/datasets/{name}"


def loop_run(base, dataset: str, run: str, steps: int, samples: int):
    """One ``train()`` of ``steps`` steps: (metrics, wall seconds)."""
    from gwi.training import train

    # a validation part of ~VAL_SAMPLES: kfold over the one family with parts of that size
    k = max(2, samples // VAL_SAMPLES)
    train_n = samples - math.ceil(samples / k)
    epochs = max(1, math.ceil(steps / max(1, train_n // base.batch_size)))
    cfg = dataclasses.replace(base, dataset=dataset, run=run, epochs=epochs, max_steps=steps, val_every=epochs,
                              split=f"kfold:{k}:0", checkpoint_every=0, keep_checkpoints=1)
    t = time.perf_counter()
    m = train(cfg, log=lambda *a, **kw: None)
    return m, time.perf_counter() - t


def steady_rate(r: Row) -> None:
    """Samples/s of the steps the longer run took beyond the shorter one, from train()'s ``loop_s`` and
    ``loop_samples`` (training steps and their data waits; no validation, no checkpoints)."""
    m1, m2 = r.runs
    if any("loop_s" not in m for m in (m1, m2)):
        raise RuntimeError("train() reports no loop_s/loop_samples: expected gwi with issue 13's loop")
    dt, dn = m2["loop_s"] - m1["loop_s"], m2["loop_samples"] - m1["loop_samples"]
    r.window = (dn, dt)
    # a longer run that took no longer is the machine's noise, not the model's failure: no rate, no verdict
    r.loop_rate = dn / dt if dt > 0 and dn > 0 else None


def result_table(rows: list[Row], preset: str, device: torch.device) -> str:
    target = TARGET[device.type]
    head = ("model", "preset", "batch", "device", "precision", "params", "bare samples/s", "loop samples/s",
            "loop/bare", "target", "met?")
    body = []
    for r in rows:
        bare, loop = r.bare_rate, r.loop_rate
        ratio = loop / bare if bare and loop else None
        body.append((r.name, preset, str(r.batch), device.type, r.precision,
                     params_text(r.params) if r.params is not None else "-",
                     f"{bare:,.2f}" if bare else "-", f"{loop:,.2f}" if loop else "-",
                     f"{ratio:.2f}x" if ratio else "-", f">= {target:.1f}x",
                     "FAILED" if r.error else "?" if ratio is None else "yes" if ratio >= target else "NO"))
    return table(head, body, right={2, 5, 6, 7, 8})


def notes(rows: list[Row]) -> str:
    out = [("bare: median s/step of the timed steps (fastest..slowest); loop: the two train() runs "
            "(steps, wall s) and the steady window between them; others: other processes' CPU share meanwhile.")]
    for r in rows:
        if r.error:
            out.append(f"  {r.name}: ERROR {r.error}")
            continue
        b = r.bare_s
        text = f"  {r.name}: bare {statistics.median(b):.3f} s ({min(b):.3f}..{max(b):.3f}, n={len(b)})"
        if len(r.runs) == 2:
            (m1, m2), (w1, w2) = r.runs, r.walls
            text += f"; loop runs {m1['steps']} steps {w1:.1f} s, {m2['steps']} steps {w2:.1f} s"
        if r.window:
            text += f"; window {r.window[0]} samples in {r.window[1]:.1f} s of loop_s"
            if r.loop_rate is None:
                text += "  <- unmeasurable (load by others?): rerun with --wait-idle or a longer --window-s"
        text += f"; {others_text(r.others)}"
        if b and max(b) > 1.3 * min(b):
            text += "  <- noisy: >30% between bare steps"
        out.append(text)
    return "\n".join(out)


def machine_header(argv: list[str], device: torch.device) -> str:
    import gwi

    lines = machine_lines(argv, f"torch {torch.__version__} ({torch.get_num_threads()} threads)  "
                                f"numpy {np.__version__}  gwi {gwi.__version__}")
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        lines.append(f"gpu     : {p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    from gwi.config import TrainConfig, apply_sets
    from gwi.data.sync import pull
    from gwi.runs import run_url
    from gwi.training.precision import resolve_precision

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run (~1-2 min on CPU): tiny preset unless --preset, shorter windows, fewer bare steps")
    ap.add_argument("--models", default="", help="comma-separated registry names (default: all registered)")
    ap.add_argument("--preset", help="preset of every model (default: default; --quick: tiny)")
    ap.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    ap.add_argument("--precision", default="auto", help="auto (gwi's choice for the device), fp32, bf16 or fp16")
    ap.add_argument("--window-s", type=float,
                    help="seconds the steady window between the two runs should take (default: "
                         + ", ".join(f"{m} {d} {v.window_s:.0f}" for (m, d), v in MODES.items()) + ")")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a TrainConfig field for the loop runs, as `gwi train --set` (e.g. compile=true, workers=4)")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="S",
                    help="before each model, wait up to S s for other processes to use <15%% of the CPUs")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv[1:])
    preset = args.preset or ("tiny" if args.quick else "default")
    if args.batch < 1:
        ap.error(f"--batch: expected an integer >= 1, got {args.batch}")
    device = torch.device(args.device)
    if device.type not in TARGET:
        ap.error(f"--device: expected cpu or cuda[:N], got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device here")
    mode = MODES["quick" if args.quick else "full", device.type]
    if args.window_s:
        mode = dataclasses.replace(mode, window_s=args.window_s)
    known = registry.list_models()
    names = [n.strip() for n in args.models.split(",") if n.strip()] or known
    bad = [n for n in names if n not in known]
    if bad:
        ap.error(f"--models: unknown {', '.join(bad)}; expected some of {', '.join(known)}")
    for n in names:
        if preset not in registry.model_card(n).presets:
            ap.error(f"--preset: {n} has no preset {preset!r}; it has {', '.join(registry.model_card(n).presets)}")
    try:
        base = apply_sets(TrainConfig(model=names[0], dataset="", run="", preset=preset, batch_size=args.batch,
                                      precision=args.precision, seed=SEED, heartbeat_s=30.0, device=str(device)),
                          args.set)
    except ValueError as e:
        ap.error(str(e))
    if device.type == "cuda":
        # the loop autotunes its convolutions too; the bare step must not be the one left without
        torch.backends.cudnn.benchmark = True

    wait_idle(args.wait_idle, "start")  # before the header, so its load line describes the runs
    header = machine_header(argv, device)
    print(header)
    shown = {k: getattr(base, k) for k in ("ema", "flip", "grad_clip", "loss", "optimizer", "workers", "compile",
                                           "channels_last") if hasattr(base, k)}
    print(f"mode    : {'quick' if args.quick else 'full'}; preset {preset}; batch {args.batch}; device {device}; "
          f"window ~{mode.window_s:.0f} s; loop config " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    print(flush=True)

    start = time.perf_counter()
    rows: list[Row] = []
    data = {"url": "", "samples": 0}  # the random dataset, grown when a model needs longer runs
    with scratch_home("gwi-bench-loop-") as work:
        # per model: half the bare steps, the two loop runs, the other half, close together in time so a
        # drift of the machine's speed (a shared host) touches both figures alike
        for i, name in enumerate(names):
            r = Row(name, batch=args.batch)
            rows.append(r)
            wait_idle(args.wait_idle, name)
            others = OthersCPU().start()
            stage = "bare step"
            try:
                cfg = dataclasses.replace(base, model=name)
                cfg.validate()
                r.precision = resolve_precision(cfg, device, registry.model_card(name))
                r.bare_s, r.params = bare_train_steps(cfg, device, r.precision, math.ceil(mode.bare_steps / 2),
                                                      mode.warmup)
                if device.type == "cuda":
                    torch.cuda.empty_cache()  # the bare model is gone: its cached blocks must not crowd train()
                window = max(mode.min_window, math.ceil(mode.window_s / statistics.median(r.bare_s)))
                r.n1 = max(3, math.ceil(0.2 * window))  # past the slow first steps, which then cancel
                r.n2 = r.n1 + window
                log(f"{name}: bare {statistics.median(r.bare_s):.3f} s/step ({r.precision}); loop runs of "
                    f"{r.n1} and {r.n2} steps")
                stage = "loop"
                # the longer run inside one epoch where the cap allows: epoch ends restart the loader
                need = min(MAX_SAMPLES, (r.n2 + 1) * args.batch + VAL_SAMPLES + 1)
                if need > data["samples"]:
                    t = time.perf_counter()
                    data["url"], data["samples"] = write_random_dataset(work / "store", need), need
                    pull(data["url"], progress=False)  # into the cache now, so no run pays for it
                    log(f"dataset: {need} random samples written and pulled in {time.perf_counter() - t:.1f} s")
                for n in (r.n1, r.n2):
                    m, w = loop_run(cfg, data["url"], run_url(f"file://{work}", "bench-loop", f"{i:02d}-{name}-{n}"),
                                    n, data["samples"])
                    r.runs.append(m)
                    r.walls.append(w)
                steady_rate(r)
                stage = "bare step"
                more, _ = bare_train_steps(cfg, device, r.precision, mode.bare_steps // 2, mode.warmup)
                r.bare_s += more
                log(f"{name}: loop " + (f"{r.loop_rate:.2f}" if r.loop_rate else "unmeasurable")
                    + f" samples/s, bare {r.bare_rate:.2f} samples/s")
            except Exception as e:  # noqa: BLE001 - one broken model must not hide the others
                r.error = f"{stage}: {type(e).__name__}: {e}"
                log(f"{name}: {r.error}")
            r.others = others.stop()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    print(f"gwi's training loop against the bare step (samples/s; target >= {TARGET[device.type]:.1f}x on "
          f"{device.type})")
    print()
    print(result_table(rows, preset, device))
    print()
    print(notes(rows))
    print(f"total {time.perf_counter() - start:.0f} s; load {load_text()} at end; {busy_text()}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "header": header.splitlines(), "preset": preset, "batch": args.batch, "device": str(device),
            "target": TARGET[device.type],
            "loop_config": {k: v for k, v in dataclasses.asdict(base).items() if k not in ("model", "dataset", "run")},
            "rows": [{"model": r.name, "params": r.params, "precision": r.precision, "bare_step_s": r.bare_s,
                      "bare_samples_per_s": r.bare_rate, "loop_samples_per_s": r.loop_rate,
                      "ratio": r.loop_rate / r.bare_rate if r.loop_rate and r.bare_rate else None,
                      "steps": [r.n1, r.n2], "walls_s": r.walls, "window": r.window,
                      "others_cpu": r.others, "error": r.error,
                      "runs": [{k: m.get(k) for k in ("steps", "wall_s", "loop_s", "loop_samples", "samples_per_s")}
                               for m in r.runs]} for r in rows]}, indent=1))
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
