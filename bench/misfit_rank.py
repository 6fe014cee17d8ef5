"""Does a prediction's data misfit say which files it got wrong? ``gwi predict --misfit`` on
held-out data against the true MAE per file, as a rank correlation (issue 15's target: >= 0.5).

    python bench/misfit_rank.py                      # trains a tiny model for 3 min on CPU first
    python bench/misfit_rank.py --checkpoint RUN_URL --test STORE/datasets/NAME
    python bench/misfit_rank.py --device cuda --train-budget 10m --test-per-family 64

Without ``--checkpoint`` it makes the whole case itself: a training set and a held-out set (other
seed) simulated with ``--backend``, a model trained for ``--train-budget``; the predictions of a weak
model spread widely in quality, which is what a ranking is for. Prints Spearman's and Kendall's
correlation of misfit and MAE over the files, and how much of the total error the worst quarter by
misfit holds against the worst quarter by MAE (what refining "the worst quarter" would reach).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import log, machine_lines, table  # noqa: E402

FAMILIES = "FlatVel_A,CurveVel_A,FlatFault_A,CurveFault_B,Style_A"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="a run URL or .pt (default: train one here)")
    ap.add_argument("--test", help="a labelled dataset URL (default: simulate one here)")
    ap.add_argument("--backend", default="deepwave", help="forward model of the data and of the misfit")
    ap.add_argument("--families", default=FAMILIES)
    ap.add_argument("--train-per-family", type=int, default=64)
    ap.add_argument("--test-per-family", type=int, default=40)
    ap.add_argument("--model", default="inversionnet")
    ap.add_argument("--train-budget", default="3m")
    ap.add_argument("--device", default=None)
    a = ap.parse_args(argv)
    import scipy.stats
    import torch

    from gwi.config import TrainConfig
    from gwi.data.shards import ShardedDataset
    from gwi.data.synth import synthesize
    from gwi.physics.misfit import RANK_BAND_HZ
    from gwi.predict import predict, read_submission
    from gwi.training import train

    print("\n".join(machine_lines(["bench/misfit_rank.py", *argv], f"torch {torch.__version__}")))
    work = Path(tempfile.mkdtemp(prefix="gwi-misfit-rank-"))
    store = f"file://{work}/store"
    fams = a.families.split(",")
    test = a.test
    if test is None:
        log(f"held-out set: {a.test_per_family} per family, {a.backend}")
        synthesize(fams, a.test_per_family, store, "held-out", seed=4242, batch_size=16, progress=False,
                   backend=a.backend)
        test = f"{store}/datasets/held-out"
    ckpt = a.checkpoint
    if ckpt is None:
        log(f"training set: {a.train_per_family} per family; {a.model} (tiny) for {a.train_budget}")
        synthesize(fams, a.train_per_family, store, "train", seed=7, batch_size=16, progress=False, backend=a.backend)
        from gwi.budget import parse_duration

        ckpt = f"{store}/runs/rank"
        train(TrainConfig(model=a.model, preset="tiny", dataset=f"{store}/datasets/train", run=ckpt, epochs=1000,
                          time_budget=parse_duration(a.train_budget), batch_size=16, lr=2e-3, split="kfold:8:0",
                          device=a.device or ""), log=lambda *_: None)
    out, mis = work / "pred.csv", work / "misfit.csv"
    log("predict --misfit")
    predict([ckpt], test, str(out), misfit=str(mis), misfit_backend=a.backend, device=a.device, log=lambda *_: None)
    local = Path(test[len("file://"):]) if test.startswith("file://") else None
    if local is None:
        from gwi.data.sync import pull

        local = pull(test, progress=False)
    ds = ShardedDataset(local)
    pred = read_submission(out)
    with open(mis, newline="") as f:
        score = {r["oid"]: float(r["misfit"]) for r in csv.DictReader(f)}
    oids = sorted(pred)
    cols = list(range(1, 70, 2))
    mae = np.array([np.abs(pred[o][:, cols] - np.asarray(ds[int(o)][1], np.float32).reshape(70, 70)[:, cols]).mean()
                    for o in oids])
    m = np.array([score[o] for o in oids])
    q = max(1, len(oids) // 4)

    def row(name: str, mis: np.ndarray) -> list[str]:
        rho = scipy.stats.spearmanr(mis, mae).statistic
        tau = scipy.stats.kendalltau(mis, mae).statistic
        return [name, f"{rho:.2f}", f"{tau:.2f}", f"{mae[np.argsort(-mis)[:q]].sum() / mae.sum():.0%}"]

    # the same predictions scored on other bands (their even columns, which a submission lacks,
    # interpolated from the odd ones): why predict --misfit low-passes
    from gwi.physics import backend
    from gwi.physics.misfit import file_misfit

    maps = np.stack([pred[o] for o in oids]).astype(np.float32)
    maps[:, :, 0] = maps[:, :, 1]
    maps[:, :, 2:70:2] = 0.5 * (maps[:, :, 1:69:2] + maps[:, :, 3:70:2][:, :, :34])
    obs = torch.from_numpy(np.stack([np.asarray(ds[int(o)][0], np.float32) for o in oids]))
    fwd = backend(a.backend, device=a.device or "cpu")
    rows = [row(f"predict --misfit (below {RANK_BAND_HZ:g} Hz, the default)", m)]
    for band in (0.0, 7.0, 5.0, 3.0, 2.0):
        mis = torch.cat([file_misfit(fwd, torch.from_numpy(maps[s:s + 16]), obs[s:s + 16], band)
                         for s in range(0, len(oids), 16)]).cpu().numpy()
        rows.append(row("full band" if band == 0 else f"below {band:g} Hz", mis))
    rows.append(["true MAE (the best a ranking can do)", "1.00", "1.00", f"{mae[np.argsort(-mae)[:q]].sum() / mae.sum():.0%}"])
    print(f"\n{len(oids)} held-out files ({len(fams)} families), model MAE {mae.mean():.1f} m/s "
          f"(files {mae.min():.0f}-{mae.max():.0f}); misfit by {a.backend}")
    print(table(["misfit", "Spearman rho", "Kendall tau", "error in the worst quarter"], rows))
    rho = float(rows[0][1])
    print(f"target rho >= 0.5: {'met' if rho >= 0.5 else 'not met'}; a random quarter holds ~25% of the error")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
