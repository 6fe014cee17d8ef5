"""The ``gwi`` command. Parsing and printing only: the work lives in the modules it calls."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from . import __version__
from .errors import GwiError


_NUMERIC = re.compile(r"^[-+]?[\d.,]+(e[-+]?\d+)?[A-Za-z%/]*$|^-$")


def _table(rows: list[list], header: list[str]) -> str:
    """Plain aligned columns: numbers right-aligned, text left-aligned."""
    cells = [header] + [[str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(header))]
    num = [bool(rows) and all(_NUMERIC.match(r[i]) for r in cells[1:]) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w[i]) if num[i] else c.ljust(w[i]) for i, c in enumerate(r))  # noqa: E731
    return "\n".join([line(cells[0]), "  ".join("-" * x for x in w)] + [line(r) for r in cells[1:]])


def _report(headline: str, problems: list) -> int:
    """Print a failure and each problem to stderr; the exit status for it."""
    print(headline, file=sys.stderr)
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    return 1


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def _summary(m: dict, where: str) -> str:
    rows = []
    for fam, d in m["families"].items():
        norm = m["normalisation"]["seismic"]["per_family"].get(fam, {})
        rows.append([fam, d["samples"], f"{norm.get('min', float('nan')):.3f}", f"{norm.get('max', float('nan')):.3f}",
                     f"{d['velocity_mean']:.0f}" if "velocity_mean" in d else "-"])
    size = sum(s.get("bytes", 0) for s in m["shards"])
    err = m.get("float16_error", {}).get("x", {})
    out = [f"dataset {m['name']} at {where}",
           f"  {m['num_samples']} samples, {len(m['shards'])} shards, {_mb(size)}, seismic {tuple(m['seismic_shape'])}"
           f" float16 (round-trip max abs {err.get('max_abs', 0):.3g}, max rel {err.get('max_rel', 0):.3g})",
           ""]
    out.append(_table(rows, ["family", "samples", "log-min", "log-max", "mean v m/s"]))
    dec = m.get("time_decimation")
    if dec:
        out.append(f"\n  time decimated ×{dec['factor']}: {100 * dec['energy_above_new_nyquist_fraction']:.2f}% of the "
                   f"energy was above the new Nyquist ({dec['nyquist_hz']:.0f} Hz), "
                   f"{100 * dec['energy_removed_by_filter_fraction']:.2f}% removed by the anti-alias filter")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# data commands


def cmd_data_prep(a) -> int:
    from .data.prep import prep_test, prep_train
    from .store import default_store_url

    out = a.out or default_store_url()
    if bool(a.src) == bool(a.test_dir):
        raise GwiError("data prep: give exactly one of --src DIR (training data) or --test-dir DIR")
    if a.src:
        m = prep_train(a.src, out, a.name, shard_size=a.shard_size, overwrite=a.overwrite,
                       time_decimate=a.time_decimate, velocity_tolerance=a.velocity_tolerance)
    else:
        m = prep_test(a.test_dir, out, a.name, shard_size=a.shard_size, overwrite=a.overwrite,
                      time_decimate=a.time_decimate)
    print(_summary(m, out.rstrip("/") + f"/datasets/{a.name}"))
    return 0


def cmd_data_synth(a) -> int:
    from .data.synth import synthesize
    from .store import default_store_url

    out = a.out or default_store_url()
    families = [f for item in a.family for f in item.split(",") if f]
    m = synthesize(families, a.samples, out, a.name, seed=a.seed, batch_size=a.batch_size, device=a.device,
                   shard_size=a.shard_size, overwrite=a.overwrite)
    print(_summary(m, out.rstrip("/") + f"/datasets/{a.name}"))
    return 0


def cmd_data_pull(a) -> int:
    from .data.sync import pull

    print(pull(a.url, a.dest, workers=a.workers))
    return 0


def cmd_data_push(a) -> int:
    from .data.sync import push

    m = push(a.src, a.to, workers=a.workers)
    print(f"pushed {m['name']}: {len(m['shards'])} shards to {a.to}")
    return 0


def cmd_data_verify(a) -> int:
    from .data.sync import verify

    m, problems = verify(a.url, workers=a.workers)
    if problems:
        return _report(f"{len(problems)} of {len(m['shards'])} shards FAILED verification:", problems)
    print(f"ok: {len(m['shards'])} shards of {m['name']} match their sha256")
    return 0


def cmd_data_info(a) -> int:
    from .data.shards import load_manifest
    from .store import open_store

    m = load_manifest(open_store(a.url))
    if a.json:
        print(json.dumps(m, indent=1))
    else:
        print(_summary(m, a.url))
    return 0


def cmd_data_folds(a) -> int:
    from .data import folds
    from .data.shards import load_manifest
    from .store import open_store

    m = load_manifest(open_store(a.url))
    fams = folds.sample_families(m)
    names = sorted(set(fams.tolist()))
    rows = []
    if a.family:
        tr, va = folds.leave_family_out(m, a.family)
        rows.append([f"hold out {a.family}", len(tr), len(va)])
        print(_table(rows, ["split", "train", "val"]))
        return 0
    for i in range(a.k):
        tr, va = folds.kfold(m, a.k, i, a.seed)
        rows.append([f"kfold:{a.k}:{i}", len(tr), len(va)] + [int((fams[va] == f).sum()) for f in names])
    print(_table(rows, ["split", "train", "val"] + [f"val {f}" for f in names]))
    return 0


# ------------------------------------------------------------------------------------------------
# models and training


def cmd_models(a) -> int:
    from .models import registry

    if a.name:
        card = registry.model_card(a.name)
        print(json.dumps({**card.__dict__, "parameters": {p: _params(a.name, p) for p in card.presets}}, indent=1,
                         default=list))
        return 0
    rows = []
    for name in registry.list_models():
        c = registry.model_card(name)
        rows.append([name, f"{_params(name, 'default') / 1e6:.2f}M", f"{_params(name, 'tiny') / 1e6:.3f}M",
                     c.precision, c.equivariance[:38], c.summary[:60]])
    print(_table(rows, ["model", "params", "tiny", "precision", "equivariant to", "what"]))
    print("\ninput (B, 5, 1000, 70) normalised seismic -> output (B, 1, 70, 70) normalised velocity in [-1, 1]")
    return 0


def _params(name: str, preset: str) -> int:
    from .models import registry

    return registry.count_parameters(registry.create_model(name, preset))


def cmd_train(a) -> int:
    from .train import TrainConfig, apply_sets, train

    cfg = TrainConfig(model=a.model, dataset=a.dataset, run=a.run, preset=a.preset)
    for key in ("epochs", "batch_size", "lr", "precision", "heartbeat_s", "seed", "device", "max_steps",
                "checkpoint_every", "keep_checkpoints", "ema"):
        v = getattr(a, key, None)
        if v is not None:
            setattr(cfg, key, v)
    if a.split and a.fold is not None:
        raise GwiError("train: give --fold K or --split SPEC, not both")
    if a.fold is not None:
        cfg.split = f"kfold:{a.folds}:{a.fold}"
    elif a.split:
        cfg.split = a.split
    apply_sets(cfg, a.set)
    m = train(cfg, log=lambda msg: print(msg, flush=True))
    fam = ", ".join(f"{f} {v:.1f}" for f, v in m["val_mae_per_family"].items())
    print(f"done: {m['steps']} steps, val MAE {m['val_mae']:.1f} m/s ({fam}); metrics in {cfg.run}/metrics.json")
    return 0


def cmd_predict(a) -> int:
    from .predict import predict

    if bool(a.checkpoint) == bool(a.ensemble):
        raise GwiError("predict: give --checkpoint (one or more) or --ensemble FILE")
    r = predict(a.checkpoint or [], a.test, a.out, tta=a.tta == "flip", precision=a.precision, device=a.device,
                batch_size=a.batch_size, skip_bad=a.skip_bad, ensemble=a.ensemble, uncertainty=a.uncertainty,
                mc_samples=a.mc_samples, plots=a.plots, log=lambda m: print(m, file=sys.stderr, flush=True))
    bad = f", {len(r['bad'])} bad file(s) filled with the training mean" if r["bad"] else ""
    print(f"wrote {a.out}: {r['files']} test files, {r['rows']} rows in {r['seconds']:.1f} s "
          f"({r['files_per_s']:.1f} files/s){bad}")
    return 0


def cmd_ensemble_fit(a) -> int:
    from .models.ensemble import fit

    r = fit(a.member, a.dataset, a.out, split=a.split, crf=not a.no_crf, mc_samples=a.mc_samples,
            device=a.device, plots=a.plots, log=lambda m: print(m, file=sys.stderr, flush=True))
    fams = sorted(k for k in r["val_mae"] if k != "overall")
    rows = [[m["model"], f"{m['weight']:.3f}", f"{m['val_mae']['overall']:.1f}"] + [f"{m['val_mae'][f]:.1f}" for f in fams]
            for m in r["members"]]
    rows.append(["ensemble" + (" + CRF" if r["crf"].get("enabled") else ""), "", f"{r['val_mae']['overall']:.1f}"]
                + [f"{r['val_mae'][f]:.1f}" for f in fams])
    print(_table(rows, ["member", "weight", "val MAE m/s"] + fams))
    print(f"\nwrote {a.out} (split {r['split']}, {r['val_samples']} validation samples)")
    return 0


def cmd_submission_check(a) -> int:
    from .predict import check_submission

    summary, problems = check_submission(a.file, a.test)
    if problems:
        return _report(f"{a.file}: INVALID", problems)
    print(f"{a.file}: valid ({summary['oids']} test files, {summary['rows']} rows)")
    return 0


# ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gwi", description="Seismic FWI team runner: data, training, dispatch, submission.")
    p.add_argument("--version", action="version", version=f"gwi {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True

    data = sub.add_parser("data", help="prepare, synthesise, move and check datasets")
    dsub = data.add_subparsers(dest="data_cmd", metavar="SUBCOMMAND")
    dsub.required = True

    def store_args(q, out_help):
        q.add_argument("--out", metavar="STORE_URL", help=out_help + " (default: the embedded file:// store under $GWI_HOME, ./.gwi)")
        q.add_argument("--name", required=True, help="dataset name: written to STORE_URL/datasets/NAME/")
        q.add_argument("--shard-size", type=int, default=500, help="samples per shard (default 500)")
        q.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")

    q = dsub.add_parser("prep", help="Kaggle/OpenFWI folders -> float16 shards + manifest")
    q.add_argument("--src", metavar="DIR", help="competition root, train_samples/, or one family folder")
    q.add_argument("--test-dir", metavar="DIR", help="a folder of test/<oid>.npy files")
    store_args(q, "store to write to: file://PATH or s3://BUCKET/PREFIX")
    q.add_argument("--time-decimate", type=int, default=1, metavar="K",
                   help="keep every K-th time sample after a zero-phase anti-alias low-pass")
    q.add_argument("--velocity-tolerance", type=float, default=1.0, metavar="M_S",
                   help="allowed excursion outside 1500-4500 m/s (default 1)")
    q.set_defaults(fn=cmd_data_prep)

    q = dsub.add_parser("synth", help="generate OpenFWI-style families with the deepwave forward model")
    q.add_argument("--family", action="append", required=True,
                   help="family (repeat or comma-separate): FlatVel_A ... Style_B")
    q.add_argument("--samples", type=int, required=True, help="samples per family")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--batch-size", type=int, default=16, help="velocity maps per deepwave call")
    q.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    store_args(q, "store to write to")
    q.set_defaults(fn=cmd_data_synth)

    q = dsub.add_parser("pull", help="download a dataset into the local cache, verifying every shard")
    q.add_argument("url", help="STORE_URL/datasets/NAME")
    q.add_argument("--dest", help="folder to pull into (default: $GWI_CACHE/datasets/...)")
    q.add_argument("--workers", type=int, default=4)
    q.set_defaults(fn=cmd_data_pull)

    q = dsub.add_parser("push", help="copy a dataset (local folder or URL) to a store")
    q.add_argument("src", help="local dataset folder or STORE_URL/datasets/NAME")
    q.add_argument("--to", required=True, metavar="URL", help="destination STORE_URL/datasets/NAME")
    q.add_argument("--workers", type=int, default=4)
    q.set_defaults(fn=cmd_data_push)

    q = dsub.add_parser("verify", help="re-hash every shard where it is stored and report mismatches")
    q.add_argument("url")
    q.add_argument("--workers", type=int, default=4)
    q.set_defaults(fn=cmd_data_verify)

    q = dsub.add_parser("info", help="summarise a dataset's manifest")
    q.add_argument("url")
    q.add_argument("--json", action="store_true", help="print the whole manifest")
    q.set_defaults(fn=cmd_data_info)

    q = dsub.add_parser("folds", help="show the validation splits of a dataset")
    q.add_argument("url")
    q.add_argument("--k", type=int, default=5)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--family", help="leave this family out instead of K-fold")
    q.set_defaults(fn=cmd_data_folds)

    q = sub.add_parser("models", help="list the model registry")
    q.add_argument("name", nargs="?", help="show one model's card")
    q.set_defaults(fn=cmd_models)

    q = sub.add_parser("train", help="train (or resume) a model on a dataset; writes to a run folder in a store")
    q.add_argument("--model", required=True, help="registry name (see 'gwi models')")
    q.add_argument("--dataset", required=True, metavar="URL", help="STORE_URL/datasets/NAME")
    q.add_argument("--run", required=True, metavar="URL", help="STORE_URL/runs/RUN: checkpoints, progress, metrics")
    q.add_argument("--preset", default="default", help="model preset: default or tiny")
    q.add_argument("--epochs", type=int)
    q.add_argument("--batch-size", type=int, dest="batch_size")
    q.add_argument("--lr", type=float)
    q.add_argument("--fold", type=int, help="validation fold K of --folds (family-stratified)")
    q.add_argument("--folds", type=int, default=5)
    q.add_argument("--split", help="validation split: kfold:K:FOLD or family:NAME")
    q.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    q.add_argument("--ema", type=float, help="EMA decay (e.g. 0.999); 0 disables")
    q.add_argument("--heartbeat-s", type=float, dest="heartbeat_s")
    q.add_argument("--checkpoint-every", type=int, dest="checkpoint_every", help="steps (default: every epoch)")
    q.add_argument("--keep-checkpoints", type=int, dest="keep_checkpoints")
    q.add_argument("--max-steps", type=int, dest="max_steps")
    q.add_argument("--seed", type=int)
    q.add_argument("--device", help="torch device (default: cuda if available)")
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any training setting (e.g. weight_decay=0.01) or model argument (model.dropout=0.1)")
    q.set_defaults(fn=cmd_train)

    q = sub.add_parser("predict", help="checkpoints -> Kaggle submission.csv (works offline)")
    q.add_argument("--checkpoint", action="append", metavar="RUN_OR_FILE",
                   help="a run URL (uses its latest verified checkpoint) or a .pt file; repeat to average")
    q.add_argument("--ensemble", metavar="FILE", help="an ensemble.json from 'gwi ensemble fit' instead of --checkpoint")
    q.add_argument("--uncertainty", metavar="FILE.npy", help="also write MC-dropout per-pixel std (m/s)")
    q.add_argument("--mc-samples", type=int, default=8, help="stochastic passes for --uncertainty (default 8)")
    q.add_argument("--plots", metavar="DIR", help="PNGs of a few predictions (and their uncertainty)")
    q.add_argument("--test", required=True, metavar="DIR_OR_DATASET", help="folder of <oid>.npy or a prepared test dataset")
    q.add_argument("--out", default="submission.csv")
    q.add_argument("--tta", choices=["none", "flip"], default="none")
    q.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto: fp16 on CUDA, fp32 on CPU")
    q.add_argument("--batch-size", type=int, default=32)
    q.add_argument("--device")
    q.add_argument("--skip-bad", action="store_true", help="report unreadable test files and fill them with the training mean")
    q.set_defaults(fn=cmd_predict)

    q = sub.add_parser("ensemble", help="fit ensemble weights, CRF and uncertainty on a validation fold")
    esub = q.add_subparsers(dest="ens_cmd", metavar="SUBCOMMAND")
    esub.required = True
    q = esub.add_parser("fit", help="fit member weights to minimise validation MAE; writes ensemble.json")
    q.add_argument("--member", action="append", required=True, metavar="RUN_OR_FILE")
    q.add_argument("--dataset", required=True, metavar="URL", help="labelled dataset holding the validation fold")
    q.add_argument("--split", help="validation split (default: the first member's training split)")
    q.add_argument("--out", default="ensemble.json")
    q.add_argument("--no-crf", action="store_true", help="do not try CRF smoothing")
    q.add_argument("--mc-samples", type=int, default=8, help="MC-dropout passes for the uncertainty report (0: off)")
    q.add_argument("--plots", metavar="DIR", help="PNGs: prediction, uncertainty, truth, error per family")
    q.add_argument("--device")
    q.set_defaults(fn=cmd_ensemble_fit)

    q = sub.add_parser("submission", help="check a submission file")
    ssub = q.add_subparsers(dest="sub_cmd", metavar="SUBCOMMAND")
    ssub.required = True
    q = ssub.add_parser("check", help="validate header, ids, rows per oid, values; with --test, the oid set")
    q.add_argument("file")
    q.add_argument("--test", metavar="DIR", help="the test folder the submission must cover")
    q.set_defaults(fn=cmd_submission_check)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except (GwiError, ValueError, TypeError) as e:
        if os.environ.get("GWI_DEBUG"):
            raise
        print(f"gwi: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gwi: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
