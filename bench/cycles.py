"""Pseudo-label rounds against ordinary training, for the same CPU time, on two benchsets.

    .venv/bin/python bench/cycles.py [--budget-s 300] [--samples 60] [--heldout 20] [--rounds 2]
                                     [--benchsets a,b] [--model inversionnet] [--preset tiny]
                                     [--weight 1.0] [--data DIR] [--json FILE]

The question (issue 26): do R rounds of "predict the test set, re-simulate the predicted maps, train
on the data plus those pairs" lower the held-out MAE against the same budget spent on ordinary
training? Each benchset has a training set and a held-out set from other seeds; the held-out
recordings play the test set (their maps are only used to score). For each benchset, two arms:

- ``plain``: one ``train()`` of N steps, N = the budget over the measured time of a step;
- ``cycle``: half of the steps on the training set, then per round: predict the held-out recordings
  (``gwi.predict.predict``), re-simulate the maps (``gwi.data.pseudo.pseudo``, deepwave), train the
  round's share of the steps from the previous weights on the training set mixed with every round's
  pseudo set so far (``--weight``). The predict and simulation time of a round is taken off the
  steps of the rounds after it, so both arms spend the same time.

Benchset ``a`` is ``gwi data synth``'s OpenFWI-style families (FlatVel_A, CurveVel_A, FlatFault_A,
CurveFault_A, Style_A), ``b`` is ``bench/benchset_b.py``'s own generator. Recordings are simulated
with deepwave (the openfwi backend is ~10x slower on CPU; the rounds' pseudo sets use deepwave too).
Scored: the held-out MAE (m/s) of each arm's final model, flip TTA off. Progress on stderr; the
table on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_text, log, machine_lines, table  # noqa: E402

A_FAMILIES = ["FlatVel_A", "CurveVel_A", "FlatFault_A", "CurveFault_A", "Style_A"]
SEEDS = {"a": (0, 1), "b": (4242, 4243)}  # (training set, held-out set)


def make_sets(data: Path, which: str, samples: int, heldout: int) -> tuple[str, str]:
    """(training set URL, held-out set URL) of benchset ``which``, cached in ``data``."""
    store = f"file://{data}"
    train_seed, held_seed = SEEDS[which]
    urls = []
    for kind, n, seed in (("train", samples, train_seed), ("heldout", heldout, held_seed)):
        name = f"cyc-{which}-{kind}-{n}-s{seed}"
        if not (data / "datasets" / name / "manifest.json").is_file():
            log(f"data: benchset {which}: {name}")
            if which == "a":
                from gwi.data.synth import synthesize

                synthesize(A_FAMILIES, n, store, name, seed=seed, batch_size=16, progress=False, backend="deepwave")
            else:
                import benchset_b

                benchset_b.make(store, name, n, seed=seed, backend="deepwave")
        urls.append(f"{store}/datasets/{name}")
    return urls[0], urls[1]


def test_folder(held_url: str, folder: Path) -> None:
    """The held-out recordings as a test folder (``<oid>.npy``): what predict and pseudo read."""
    from gwi.data.shards import ShardedDataset
    from gwi.data.sync import pull

    ds = ShardedDataset(pull(held_url, progress=False))
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(len(ds)):
        np.save(folder / f"h{i:05d}.npy", np.asarray(ds[i][0], np.float16))


def heldout_mae(run: str, held_url: str) -> float:
    from gwi.data.shards import ShardedDataset
    from gwi.data.sync import pull
    from gwi.inference import predict_batch
    from gwi.runs import load_model

    dev = torch.device("cpu")
    lm = load_model(run, dev)
    ds = ShardedDataset(pull(held_url, progress=False))
    err = []
    for s in range(0, len(ds), 16):
        x, y = ds.batch(np.arange(s, min(s + 16, len(ds))))  # (B, 5, 1000, 70), (B, 1, 70, 70)
        err.append(np.abs(predict_batch([lm], [1.0], x, dev, "fp32", tta=False) - y[:, 0]).mean(axis=(1, 2)))
    return float(np.concatenate(err).mean())


def arms(which: str, args, work: Path) -> dict:
    from gwi.config import TrainConfig
    from gwi.data.pseudo import pseudo
    from gwi.predict import predict
    from gwi.training import train

    train_url, held_url = make_sets(args.data, which, args.samples, args.heldout)
    test = work / f"{which}-test"
    test_folder(held_url, test)
    store = f"file://{work}/store"
    base = TrainConfig(model=args.model, preset=args.preset, dataset=train_url, run="", epochs=10_000, batch_size=16,
                       split="kfold:5:0", val_every=10_000, checkpoint_every=10_000, heartbeat_s=3600, ema=0.0)

    def fit(name: str, steps: int, **kw) -> tuple[str, float]:
        run = f"{store}/runs/{which}-{name}"
        t = time.perf_counter()
        train(dataclasses.replace(base, run=run, max_steps=steps, **kw), log=lambda *a, **k: None)
        return run, time.perf_counter() - t

    # the step time, measured as the plain arm will see it (data loading, validation at the end); a
    # first run pulls the set into the cache, which the probes must not count
    fit("warm", 1)
    _, probe_s = fit("probe", 40)
    _, probe2_s = fit("probe2", 80)
    step_s = (probe2_s - probe_s) / 40
    fixed_s = max(0.0, probe_s - 40 * step_s)  # start-up and the final validation of a run
    steps = int((args.budget_s - fixed_s) / step_s)
    log(f"{which}: {step_s * 1000:.0f} ms a step, {fixed_s:.1f} s a run's overhead: {steps} steps in {args.budget_s:.0f} s")

    plain_run, plain_s = fit("plain", steps)
    out = {"benchset": which, "train": train_url, "heldout": held_url, "step_s": step_s, "steps": steps,
           "plain": {"steps": steps, "seconds": plain_s, "mae": heldout_mae(plain_run, held_url)}}
    log(f"{which}: plain {steps} steps in {plain_s:.0f} s: held-out MAE {out['plain']['mae']:.1f} m/s")

    t0 = time.perf_counter()
    first = steps // 2
    run, _ = fit("cycle-r0", first)
    rounds, sets, left = [], [], steps - first
    for r in range(1, args.rounds + 1):
        t = time.perf_counter()
        sub = work / f"{which}-r{r}.csv"
        predict([run], str(test), str(sub), tta=False, device="cpu", progress=False, log=lambda *a, **k: None)
        name = f"{which}-pseudo-r{r}"
        pseudo(str(sub), str(test), store, name, backend="deepwave", device="cpu", progress=False, overwrite=True)
        sets.append(f"{store}/datasets/{name}:{args.weight:g}")
        extra_s = time.perf_counter() - t + fixed_s  # one more run's start-up than the plain arm
        left -= int(extra_s / step_s)
        share = max(1, left // (args.rounds - r + 1))
        left -= share
        prev = run
        run, _ = fit(f"cycle-r{r}", share, init_from=prev, datasets=list(sets))
        mae = heldout_mae(run, held_url)
        rounds.append({"round": r, "steps": share, "predict_simulate_s": extra_s - fixed_s, "mae": mae})
        log(f"{which}: round {r}: {share} steps after {extra_s - fixed_s:.0f} s of predicting and simulating: "
            f"held-out MAE {mae:.1f} m/s")
    out["cycle"] = {"first_steps": first, "rounds": rounds, "seconds": time.perf_counter() - t0,
                    "mae": rounds[-1]["mae"], "r0_mae": heldout_mae(f"{store}/runs/{which}-cycle-r0", held_url)}
    out["ratio"] = out["cycle"]["mae"] / out["plain"]["mae"]
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget-s", type=float, default=300.0, help="CPU seconds of each arm (default 300)")
    ap.add_argument("--samples", type=int, default=60, help="training maps per family (default 60)")
    ap.add_argument("--heldout", type=int, default=20, help="held-out maps per family (default 20)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--weight", type=float, default=1.0, help="each pseudo set's weight in the mix (default 1)")
    ap.add_argument("--benchsets", default="a,b")
    ap.add_argument("--model", default="inversionnet")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--data", type=Path, default=Path.home() / ".cache" / "gwi-bench" / "cycles")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    work = Path("/tmp") / f"gwi-bench-cycles-{int(time.time())}"
    work.mkdir(parents=True)
    print("\n".join(machine_lines(argv, f"torch {torch.__version__}")))
    print(f"load at start: {load_text()}")
    print(f"budget {args.budget_s:.0f} s per arm; {args.samples} training + {args.heldout} held-out maps per family; "
          f"{args.rounds} round(s), pseudo weight {args.weight:g}; {args.model}:{args.preset}\n")
    results = []
    try:
        for which in args.benchsets.split(","):
            results.append(arms(which, args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for r in results:
        rounds = " / ".join(f"{x['mae']:.1f}" for x in r["cycle"]["rounds"])
        rows.append((r["benchset"], str(r["steps"]), f"{r['plain']['mae']:.1f}", f"{r['cycle']['r0_mae']:.1f}", rounds,
                     f"{r['cycle']['mae']:.1f}", f"{r['ratio']:.2f}x", "PASS" if r["ratio"] <= 0.9 else "FAIL"))
    print(table(("benchset", "steps", "plain MAE", "cycle r0", "after rounds", "cycle MAE", "cycle/plain",
                 "target <= 0.90x"), rows, right={1, 2, 3, 5, 6}))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
