"""Model benchmark on the CPU: size and speed of every registry model, and quality at a fixed budget.

    .venv/bin/python bench/models.py [--quick] [--budget-s S] [--models a,b] [--samples N] [--lr LR]
                                     [--wait-idle S]

1. Speed, per model: parameters of the ``default`` and ``tiny`` presets; inference samples/s of the
   tiny preset in fp32 and in bf16 (``torch.autocast("cpu", dtype=torch.bfloat16)``), batch 8, eval
   mode, no_grad; one tiny train step (batch 8, forward + L1 loss + backward + AdamW step) in ms; and
   inference samples/s of the default preset in fp32 at batch 2. Every figure is the median of its
   repeats after a warm-up.
2. Quality at a fixed budget: one small synthetic dataset is made once; every model's ``tiny`` preset
   then trains with ``gwi.training.train`` for the same wall-clock budget, and the table gives the
   validation MAE in m/s (de-normalised velocity), overall and per family, beside the
   predict-the-training-mean-map baseline on the same validation samples. inversionnet, the OpenFWI
   baseline, is always in this table for comparison.

How the budget becomes a step count: two probe runs of ``train()`` (2 steps, and 2 steps plus whole
epochs worth about 8% of the budget) give the time per step as the difference of their wall times
over the difference of their steps (the fixed cost of a run, the first slow step and the final
validation cancel; the epoch boundaries in between are averaged into the per-step time, as in the
real run), and the fixed cost as what is left. A shorter window is too noisy: a 6-step difference
(~0.4 s) was off by +-30% on an idle 2-core machine. The run then gets the whole epochs that fit
``budget - fixed``, with ``epochs`` set to that number and ``max_steps`` to the same step count, so
the lr schedule (5% warm-up, cosine to 0) spans exactly the run whichever way ``train()`` derives it.

A noisy machine: the speed repeats go round-robin over the models, and the order reverses every
round, so a burst of load from another process spoils one repeat of several models rather than every
repeat of one; the notes under the table give each figure's fastest..slowest repeat. Each section
also records how much CPU other processes used while it ran (from /proc/stat minus this process's own
CPU time), and the header warns when the machine was busy at the start; ``--wait-idle S`` waits up
to S s before each section (and each model's training) for other processes to go quiet, and probes
again once when the probes were disturbed. A probe's per-step time is never taken below half the
bare train step of section 1. Load during a budget run only stretches its wall time: its step count
was fixed before it started. Progress goes to stderr; stdout holds only the header and the tables.
The exit status is 1 when a model fails to build or train.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gwi.models import registry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    OthersCPU,
    busy_text,
    load_text,
    log,
    machine_lines,
    others_text,
    params_text,
    plan_budget,
    scratch_home,
    table,
    wait_idle,
)

FAMILIES = ["FlatVel_A", "CurveVel_A", "FlatFault_A", "Style_A"]
SPLIT = "kfold:5:0"
SEED = 0
BATCH = 8  # tiny inference, tiny train step, and training in section 2
DEFAULT_BATCH = 2  # default-preset inference
REFERENCE = "inversionnet"  # always in the quality table
PROBE_FRAC = 0.08  # share of the budget the longer probe run takes


@dataclass
class Config:
    samples: int  # per family
    budget_s: float  # wall-clock seconds per model's train() call
    tiny_repeats: int
    default_repeats: int
    warmup: int


FULL = Config(samples=40, budget_s=60.0, tiny_repeats=7, default_repeats=3, warmup=2)
QUICK = Config(samples=16, budget_s=15.0, tiny_repeats=3, default_repeats=2, warmup=1)


# ------------------------------------------------------------------------------------------------
# header


def machine_header(argv: list[str]) -> str:
    import deepwave

    import gwi

    return "\n".join(machine_lines(
        argv, f"torch {torch.__version__} ({torch.get_num_threads()} threads)  "
              f"deepwave {getattr(deepwave, '__version__', '?')}  numpy {np.__version__}  gwi {gwi.__version__}"))


# ------------------------------------------------------------------------------------------------
# 1. speed


@dataclass
class Speed:
    name: str
    params_default: int | None = None
    params_tiny: int | None = None
    times: dict[str, list[float]] = field(default_factory=dict)  # measurement -> seconds per repeat
    error: str | None = None


# measurement -> (samples per call, label)
MEASURES = {
    "tiny_fp32": (BATCH, "tiny fp32 inference"),
    "tiny_bf16": (BATCH, "tiny bf16 inference"),
    "tiny_step": (BATCH, "tiny train step"),
    "default_fp32": (DEFAULT_BATCH, "default fp32 inference"),
}


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def round_robin(label: str, calls: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Time every model's call ``repeats`` times, one call per model per round, the order reversed
    every round; ``warmup`` untimed calls each first."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {n: [] for n in calls}
    order = list(calls)
    for r in range(repeats):
        for name in (order if r % 2 == 0 else order[::-1]):
            out[name].append(timed(calls[name]))
        log(f"{label}: round {r + 1}/{repeats}: " + ", ".join(f"{n} {out[n][-1] * 1e3:.0f} ms" for n in order))
    return out


def bench_speed(names: list[str], cfg: Config) -> tuple[list[Speed], float | None]:
    gen = torch.Generator().manual_seed(SEED)
    x = torch.rand(BATCH, *registry.INPUT_SHAPE, generator=gen) * 2 - 1
    y = torch.rand(BATCH, *registry.OUTPUT_SHAPE, generator=gen) * 2 - 1
    x2 = x[:DEFAULT_BATCH].clone()
    res = {n: Speed(n) for n in names}
    others = OthersCPU().start()

    # tiny models: inference fp32 / bf16 and a train step, all models alive at once for the round-robin
    tiny, opts = {}, {}
    for n in names:
        try:
            torch.manual_seed(SEED)
            m = registry.create_model(n, "tiny")
            res[n].params_tiny = registry.count_parameters(m)
            tiny[n] = m
            opts[n] = torch.optim.AdamW(m.parameters(), lr=1e-3)
        except Exception as e:  # noqa: BLE001 - one broken model must not hide the others
            res[n].error = f"tiny: {type(e).__name__}: {e}"
            log(f"{n}: {res[n].error}")

    def infer(m, bf16: bool):
        def f():
            with torch.no_grad(), (torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()):
                return m(x)
        return f

    def step(m, opt):
        def f():
            loss = (m(x) - y).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return f

    for m in tiny.values():
        m.eval()
    for key, bf16 in (("tiny_fp32", False), ("tiny_bf16", True)):
        for n, t in round_robin(MEASURES[key][1], {n: infer(m, bf16) for n, m in tiny.items()},
                                cfg.tiny_repeats, cfg.warmup).items():
            res[n].times[key] = t
    for m in tiny.values():
        m.train()
    for n, t in round_robin(MEASURES["tiny_step"][1], {n: step(m, opts[n]) for n, m in tiny.items()},
                            cfg.tiny_repeats, cfg.warmup).items():
        res[n].times["tiny_step"] = t
    del tiny, opts

    # default models: few repeats, they are slow on 2 cores
    big = {}
    for n in names:
        try:
            torch.manual_seed(SEED)
            m = registry.create_model(n, "default").eval()
            res[n].params_default = registry.count_parameters(m)
            big[n] = m
        except Exception as e:  # noqa: BLE001
            res[n].error = (res[n].error + "; " if res[n].error else "") + f"default: {type(e).__name__}: {e}"
            log(f"{n}: {res[n].error}")
    with torch.no_grad():
        for n, t in round_robin(MEASURES["default_fp32"][1], {n: (lambda m=m: m(x2)) for n, m in big.items()},
                                cfg.default_repeats, 1).items():
            res[n].times["default_fp32"] = t
    del big
    return [res[n] for n in names], others.stop()


def speed_table(rows: list[Speed]) -> str:
    def sps(r: Speed, key: str) -> str:
        t = r.times.get(key)
        return f"{MEASURES[key][0] / statistics.median(t):,.1f}" if t else "error"

    def ms(r: Speed, key: str) -> str:
        t = r.times.get(key)
        return f"{1e3 * statistics.median(t):,.0f}" if t else "error"

    head = ("model", "params default", "params tiny", f"tiny fp32 /s (b{BATCH})", f"tiny bf16 /s (b{BATCH})",
            "bf16/fp32", f"tiny train step ms (b{BATCH})", f"default fp32 /s (b{DEFAULT_BATCH})")
    body = []
    for r in rows:
        t32, t16 = r.times.get("tiny_fp32"), r.times.get("tiny_bf16")
        ratio = f"{statistics.median(t32) / statistics.median(t16):.2f}x" if t32 and t16 else "-"
        body.append((r.name, params_text(r.params_default) if r.params_default is not None else "error",
                     params_text(r.params_tiny) if r.params_tiny is not None else "error",
                     sps(r, "tiny_fp32"), sps(r, "tiny_bf16"), ratio, ms(r, "tiny_step"), sps(r, "default_fp32")))
    return table(head, body, right=set(range(1, len(head))))


def speed_spread(rows: list[Speed], others: float | None) -> str:
    """Each figure's fastest..slowest repeat: a wide spread means other load on the machine."""
    out = [f"repeats (ms per call, fastest..slowest; while they ran {others_text(others)}):"]
    for r in rows:
        parts, noisy = [], False
        for key, (_, label) in MEASURES.items():
            t = r.times.get(key)
            if t:
                parts.append(f"{label.replace(' inference', '')} {1e3 * min(t):.0f}..{1e3 * max(t):.0f} (n={len(t)})")
                noisy |= max(t) > 1.3 * min(t)
        out.append(f"  {r.name}: " + ", ".join(parts) + ("  <- noisy: >30% between repeats" if noisy else ""))
        if r.error:
            out.append(f"  {r.name}: ERROR {r.error}")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# 2. quality at a fixed budget


@dataclass
class Quality:
    name: str
    per_step_s: float = float("nan")
    fixed_s: float = float("nan")
    planned: int = 0
    epochs: int = 0
    metrics: dict = field(default_factory=dict)
    wall_s: float = float("nan")
    probe_s: float = 0.0
    others: float | None = None
    error: str | None = None


def quiet(*_a, **_k) -> None:
    pass


def bench_quality(names: list[str], cfg: Config, lr: float, work: Path, wait_s: float,
                  step_floor: dict[str, float]) -> tuple[list[Quality], str]:
    from gwi.config import TrainConfig
    from gwi.data import folds
    from gwi.data.synth import synthesize
    from gwi.runs import run_url
    from gwi.training import train

    # the dataset, once
    store, name = work / "store", "bench-models"
    n = cfg.samples * len(FAMILIES)
    wait_idle(wait_s, "synth")
    log(f"quality: synthesizing {cfg.samples} samples x {len(FAMILIES)} families ({n}) into {store}")
    t = time.perf_counter()
    manifest = synthesize(FAMILIES, cfg.samples, f"file://{store}", name, seed=SEED, batch_size=20, progress=False, backend="deepwave")
    t_synth = time.perf_counter() - t
    log(f"quality: synthesized in {t_synth:.1f} s")
    ds = f"file://{store}/datasets/{name}"
    train_idx, val_idx = folds.split(manifest, SPLIT, SEED)
    spe = max(1, len(train_idx) // BATCH)  # train() drops the last partial batch
    fams = folds.sample_families(manifest)
    val_counts = {f: int((fams[val_idx] == f).sum()) for f in FAMILIES}
    described = (f"dataset : synthetic (gwi.data.synth.synthesize, seed {SEED}), {', '.join(FAMILIES)} x {cfg.samples} "
                 f"= {n} samples, made in {t_synth:.0f} s\n"
                 f"split   : {SPLIT} (family-stratified, seed {SEED}): {len(train_idx)} train / {len(val_idx)} val "
                 f"({', '.join(f'{f} {c}' for f, c in val_counts.items())}); {spe} steps/epoch at batch {BATCH}\n"
                 f"training: tiny preset, gwi.training.train, batch {BATCH}, AdamW lr {lr:g} (5% warm-up, cosine to 0 over "
                 f"the run), L1, fp32 on CPU, budget {cfg.budget_s:.0f} s wall per model (the whole train() call)")
    runs = 0

    def run(model: str, steps: int, epochs: int, tag: str) -> tuple[dict, float]:
        nonlocal runs
        runs += 1
        c = TrainConfig(model=model, dataset=ds, run=run_url(f"file://{work}", "bench", f"{runs:03d}-{model}-{tag}"),
                        preset="tiny", epochs=epochs, max_steps=steps, val_every=epochs, batch_size=BATCH, lr=lr, split=SPLIT,
                        seed=SEED, heartbeat_s=30, checkpoint_every=0, precision="fp32", device="cpu")
        t = time.perf_counter()
        m = train(c, log=quiet)
        return m, time.perf_counter() - t

    # one untimed run first: the first train() in a process pays one-time costs (imports, the pull
    # into the cache, thread pools) that must not count as one model's fixed cost
    if names:
        with contextlib.suppress(Exception):
            run(names[0], 1, 1, "warmup")

    out = []
    for model in names:
        q = Quality(model)
        out.append(q)
        wait_idle(wait_s, model)
        try:
            train_in_budget(q, run, cfg, spe, wait_s, step_floor)
        except Exception as e:  # noqa: BLE001 - one broken model must not hide the others
            q.error = f"{type(e).__name__}: {e}"
            log(f"quality: {model}: FAILED {q.error}")
    return out, described


def train_in_budget(q: Quality, run, cfg: Config, spe: int, wait_s: float, step_floor: dict[str, float]) -> None:
    """Time two probe runs of ``q.name``, fit whole epochs to the budget from them, and train that long."""
    model = q.name
    # the longer probe's length is guessed from section 1's bare step, which train() exceeds by
    # ~1.3x with data loading and clipping; a probe's step is never taken below half the bare step
    bare = step_floor.get(model)
    plan = plan_budget(lambda steps, epochs, tag: run(model, steps, epochs, tag), cfg.budget_s, spe,
                       1.3 * bare if bare else None, label=f"quality: {model}", wait_s=wait_s,
                       floor_step_s=0.5 * bare if bare else 0.0, probe_frac=PROBE_FRAC)
    q.probe_s, q.per_step_s, q.fixed_s = plan.probe_s, plan.per_step_s, plan.fixed_s
    q.epochs, q.planned = plan.epochs, plan.steps
    others = OthersCPU().start()
    q.metrics, q.wall_s = run(model, q.planned, q.epochs, "budget")
    q.others = others.stop()
    log(f"quality: {model}: {q.metrics['steps']} steps in {q.wall_s:.1f} s, val MAE "
        f"{q.metrics['val_mae']:.1f} m/s, baseline {q.metrics['baseline_mae']:.1f} m/s")


def quality_table(rows: list[Quality]) -> str:
    head = ("model", "steps", "epochs", "ms/step", "wall s", "val MAE", "baseline", "vs baseline",
            *FAMILIES, "others' CPU")
    body = []
    for q in rows:
        if q.error or not q.metrics:
            body.append((q.name, *["-"] * (len(head) - 2), "FAILED"))
            continue
        m = q.metrics
        fam = m.get("val_mae_per_family", {})
        rel = (m["val_mae"] - m["baseline_mae"]) / m["baseline_mae"]
        body.append((q.name, str(m["steps"]), str(m["epochs"]), f"{1e3 * q.per_step_s:.0f}", f"{q.wall_s:.1f}",
                     f"{m['val_mae']:.1f}", f"{m['baseline_mae']:.1f}", f"{rel:+.0%}" + ("" if rel < 0 else " (worse)"),
                     *(f"{fam[f]:.1f}" if f in fam else "-" for f in FAMILIES),
                     "?" if q.others is None else f"{q.others:.0%}"))
    return table(head, body, right=set(range(1, len(head))))


def quality_notes(rows: list[Quality], budget_s: float) -> str:
    out = [("val MAE and baseline: m/s on de-normalised velocity (1500-4500 m/s), mean over validation samples; "
            "baseline = predict the training set's per-pixel mean map; vs baseline < 0 is better."),
           (f"steps: whole epochs fitted to the {budget_s:.0f} s budget from two probe runs (ms/step = their wall-time "
            "difference per step); wall s: the timed train() call; others' CPU: other processes' share of the CPUs "
            "during it (above ~15% the wall time runs over the budget; the step count is fixed before, by the probes).")]
    for q in rows:
        if q.error:
            out.append(f"  {q.name}: ERROR {q.error}")
        elif q.metrics and abs(q.wall_s - budget_s) > 0.2 * budget_s:
            out.append(f"  {q.name}: wall {q.wall_s:.1f} s is >20% off the budget (probe estimate "
                       f"{1e3 * q.per_step_s:.0f} ms/step, fixed {q.fixed_s:.1f} s)  <- noisy")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"{QUICK.samples} samples per family, {QUICK.budget_s:.0f} s budget, fewer repeats (~2 min)")
    ap.add_argument("--budget-s", type=float, help=f"wall seconds of training per model (default {FULL.budget_s:.0f}, "
                                                   f"--quick {QUICK.budget_s:.0f})")
    ap.add_argument("--models", default="", help=f"comma-separated registry names (default: all); "
                                                 f"{REFERENCE} is added to the quality table for comparison")
    ap.add_argument("--samples", type=int, help=f"synthetic samples per family (default {FULL.samples}, "
                                                f"--quick {QUICK.samples})")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="S",
                    help="before each timed section, wait up to S s for other processes to use <15%% of the CPUs "
                         "(default 0: do not wait, only warn)")
    ap.add_argument("--lr", type=float, default=2e-3, help="learning rate of the budget runs (default 2e-3)")
    args = ap.parse_args(argv[1:])
    cfg = QUICK if args.quick else FULL
    cfg = Config(samples=args.samples or cfg.samples, budget_s=args.budget_s or cfg.budget_s,
                 tiny_repeats=cfg.tiny_repeats, default_repeats=cfg.default_repeats, warmup=cfg.warmup)
    if cfg.samples < 5:
        ap.error("--samples: need at least 5 per family for kfold:5")
    known = registry.list_models()
    names = [n.strip() for n in args.models.split(",") if n.strip()] or known
    bad = [n for n in names if n not in known]
    if bad:
        ap.error(f"--models: unknown {', '.join(bad)}; expected some of {', '.join(known)}")
    quality_names = names if REFERENCE in names or REFERENCE not in known else [REFERENCE, *names]

    wait_idle(args.wait_idle, "start")  # before the header, so its load line describes the runs
    print(machine_header(argv))
    print(f"mode    : {'quick' if args.quick else 'full'}; CPU only; models: {', '.join(names)}"
          + (f"; waits up to {args.wait_idle:.0f} s for an idle machine before each section" if args.wait_idle else ""))
    print(flush=True)

    start = time.perf_counter()
    failed = False
    with scratch_home("gwi-bench-models-") as work:
        log(f"speed: {len(names)} models, {cfg.tiny_repeats} repeats tiny, {cfg.default_repeats} default")
        rows, others = bench_speed(names, cfg)
        failed |= any(r.error for r in rows)
        print("1. speed on CPU (inference in eval mode under no_grad; median of repeats after warm-up; "
              "samples/s)")
        print()
        print(speed_table(rows))
        print()
        print(speed_spread(rows, others))
        print(flush=True)

        floor = {r.name: statistics.median(r.times["tiny_step"]) for r in rows if r.times.get("tiny_step")}
        qrows, described = bench_quality(quality_names, cfg, args.lr, work, args.wait_idle, floor)
        failed |= any(q.error for q in qrows)
        print(f"2. quality at a fixed budget of {cfg.budget_s:.0f} s wall per model")
        print()
        print(described)
        print()
        print(quality_table(qrows))
        print()
        print(quality_notes(qrows, cfg.budget_s))
        print(flush=True)

    print(f"total {time.perf_counter() - start:.0f} s; load {load_text()} at end; {busy_text()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
