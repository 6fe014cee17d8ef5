"""Models and what is done with them: ``gwi models``, ``train``, ``predict``, ``ensemble fit``,
``evaluate`` and ``submission check``."""

from __future__ import annotations

import json
import sys

from ..console import print_problems, table
from ..errors import GwiError
from ..physics import BACKENDS, DEFAULT_BACKEND


def cmd_models(a) -> int:
    from ..models import registry

    if a.name:
        card = registry.model_card(a.name)
        print(json.dumps({**card.__dict__, "parameters": {p: _params(a.name, p) for p in card.presets}}, indent=1,
                         default=list))
        return 0
    if a.json:
        print(json.dumps([{**registry.model_card(n).__dict__, "name": n,
                           "parameters": {p: _params(n, p) for p in registry.model_card(n).presets}}
                          for n in registry.list_models()], indent=1, default=list))
        return 0
    rows = []
    for name in registry.list_models():
        c = registry.model_card(name)
        rows.append([name, f"{_params(name, 'default') / 1e6:.2f}M", f"{_params(name, 'tiny') / 1e6:.3f}M",
                     c.precision, c.equivariance[:38], c.summary[:60]])
    print(table(rows, ["model", "params", "tiny", "precision", "equivariant to", "what"]))
    print("\ninput (B, 5, 1000, 70) normalised seismic -> output (B, 1, 70, 70) normalised velocity in [-1, 1]")
    return 0


def _params(name: str, preset: str) -> int:
    from ..models import registry

    return registry.count_parameters(registry.create_model(name, preset))


def add_models(sub) -> None:
    q = sub.add_parser("models", help="list the model registry")
    q.add_argument("name", nargs="?", help="show one model's card")
    q.add_argument("--json", action="store_true", help="every model's card, with its parameter counts")
    q.set_defaults(fn=cmd_models)


def cmd_train(a) -> int:
    from ..config import TrainConfig, apply_sets
    from ..runs import METRICS, Run
    from ..training import train

    cfg = TrainConfig(model=a.model, dataset=a.dataset[0], run=a.run, preset=a.preset, datasets=a.dataset[1:])
    for key in ("epochs", "batch_size", "lr", "precision", "heartbeat_s", "seed", "device", "max_steps",
                "checkpoint_every", "keep_checkpoints", "ema", "flip", "loss", "optimizer", "schedule", "families",
                "init_from", "init_partial", "workers", "compile", "channels_last", "cache_limit", "val_dataset"):
        v = getattr(a, key, None)
        if v is not None:
            setattr(cfg, key, v)
    if a.split and a.fold is not None:
        raise GwiError("train: give --fold K or --split SPEC, not both")
    if a.fold is not None:
        cfg.split = f"kfold:{a.folds}:{a.fold}"
    elif a.split:
        cfg.split = a.split
    if a.time_budget is not None:
        from ..budget import parse_duration

        try:
            cfg.time_budget = parse_duration(a.time_budget, allow_auto=True)
        except ValueError as e:
            raise GwiError(f"--time-budget: {e}") from None
    apply_sets(cfg, a.set)
    from .. import STARTED

    m = train(cfg, log=lambda msg: print(msg, flush=True), started=STARTED)
    fam = ", ".join(f"{f} {v:.1f}" for f, v in m["val_mae_per_family"].items())
    print(f"done: {m['steps']} steps, val MAE {m['val_mae']:.1f} m/s ({fam}); metrics in {Run(cfg.run).key_url(METRICS)}")
    return 0


def add_train(sub) -> None:
    from ..config import LOSSES, OPTIMIZERS, SCHEDULES
    from ..runs import (
        RUNS,  # the run layout is spelled in one place, help text included
    )

    q = sub.add_parser("train", help="train (or resume) a model on a dataset; writes to a run folder in a store")
    q.add_argument("--model", required=True, help="registry name (see 'gwi models')")
    q.add_argument("--dataset", required=True, action="append", metavar="URL[:WEIGHT]",
                   help="STORE_URL/datasets/NAME; repeat it to mix datasets, each epoch drawing WEIGHT x a dataset's "
                        "training samples (default 1: each once; 0.3: a different 30%% each epoch)")
    q.add_argument("--val-dataset", dest="val_dataset", metavar="URL_OR_NAME",
                   help="with several --dataset: the one whose split validates (default: the first)")
    q.add_argument("--run", required=True, metavar="URL", help=f"STORE_URL/{RUNS}/RUN: checkpoints, progress, metrics")
    q.add_argument("--preset", default="default", help="model preset: default or tiny")
    q.add_argument("--epochs", type=int)
    q.add_argument("--time-budget", dest="time_budget", metavar="DURATION",
                   help="finish inside this much time from start (e.g. 90s, 45m, 2h30m; auto: the attempt's time "
                        "limit): the schedule is sized from measured step times, with the final validation and "
                        "checkpoint; epochs no longer bound it")
    q.add_argument("--batch-size", type=int, dest="batch_size")
    q.add_argument("--lr", type=float)
    q.add_argument("--fold", type=int, help="validation fold K of --folds (family-stratified)")
    q.add_argument("--folds", type=int, default=5)
    q.add_argument("--split", help="validation split: kfold:K:FOLD or family:NAME")
    q.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    q.add_argument("--ema", type=float, help="EMA decay of the weights used to validate, save and predict "
                                             "(default 0.999); 0 disables")
    q.add_argument("--flip", type=float, metavar="P", help="probability a training sample is flipped: map mirrored, "
                                                           "receivers and source order reversed (default 0.5; 0 disables)")
    q.add_argument("--loss", choices=list(LOSSES), help="default l1 (the metric is MAE)")
    q.add_argument("--optimizer", choices=list(OPTIMIZERS),
                   help="adamw (default) or muon (Muon for 2-D weight matrices, AdamW for the rest)")
    q.add_argument("--schedule", choices=list(SCHEDULES), help="lr after warm-up: cosine decay (default) or constant")
    q.add_argument("--families", type=lambda v: [f for f in v.split(",") if f], metavar="A,B",
                   help="train and validate on these families only (a specialist)")
    q.add_argument("--init-from", dest="init_from", metavar="RUN_OR_FILE",
                   help="start from the weights of a run (its latest checkpoint, EMA weights if any) or a .pt file")
    q.add_argument("--init-partial", dest="init_partial", action="store_true", default=None,
                   help="with --init-from: load the tensors that fit, leave the others as initialised")
    q.add_argument("--cache-limit", dest="cache_limit", metavar="SIZE",
                   help="stream datasets larger than SIZE (e.g. 40GB) from their store through a local cache that "
                        "never holds more, instead of pulling them whole (default: GWI_CACHE_LIMIT, else 80%% of the "
                        "free disk; none: always pull)")
    q.add_argument("--workers", type=int, help="DataLoader worker processes (default: several on a GPU, none on CPU)")
    q.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    q.add_argument("--channels-last", dest="channels_last", action="store_true", default=None,
                   help="NHWC memory format (faster convolutions on recent GPUs)")
    q.add_argument("--heartbeat-s", type=float, dest="heartbeat_s")
    q.add_argument("--checkpoint-every", type=int, dest="checkpoint_every", help="steps (default: every epoch)")
    q.add_argument("--keep-checkpoints", type=int, dest="keep_checkpoints")
    q.add_argument("--max-steps", type=int, dest="max_steps")
    q.add_argument("--seed", type=int)
    q.add_argument("--device", help="torch device (default: cuda if available)")
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any training setting (e.g. weight_decay=0.01) or model argument (model.dropout=0.1)")
    q.set_defaults(fn=cmd_train)


POST_HELP = ("post-processing of every map: plateau[:TOL] snaps maps judged layered to their plateaus "
             "(column runs between steps > TOL m/s, default 20, take their median)")


def cmd_predict(a) -> int:
    from ..predict import predict
    from ..sharding import parse_shard
    from ..store import staged_input, staged_output

    if bool(a.checkpoint) == bool(a.ensemble):
        raise GwiError("predict: give --checkpoint (one or more) or --ensemble FILE")
    # outputs given as store URLs are written locally and uploaded only when prediction succeeded
    with staged_input(a.ensemble) as ens, staged_output(a.out) as out, staged_output(a.uncertainty) as unc, \
            staged_output(a.plots) as plots, staged_output(a.misfit) as mis:
        r = predict(a.checkpoint or [], a.test, out, tta=a.tta == "flip", precision=a.precision, device=a.device,
                    batch_size=a.batch_size, skip_bad=a.skip_bad, ensemble=ens, uncertainty=unc,
                    mc_samples=a.mc_samples, plots=plots, misfit=mis, misfit_backend=a.misfit_backend,
                    shard=parse_shard(a.shard), post=a.post, log=lambda m: print(m, file=sys.stderr, flush=True))
    bad = f", {len(r['bad'])} bad file(s) filled with the training mean" if r["bad"] else ""
    print(f"wrote {a.out}: {r['files']} test files, {r['rows']} rows in {r['seconds']:.1f} s "
          f"({r['files_per_s']:.1f} files/s){bad}")
    return 0


def add_predict(sub) -> None:
    q = sub.add_parser("predict", help="checkpoints -> Kaggle submission.csv (works offline)")
    q.add_argument("--checkpoint", action="append", metavar="RUN_OR_FILE",
                   help="a run URL (uses its latest verified checkpoint) or a .pt file; repeat to average")
    q.add_argument("--ensemble", metavar="FILE", help="an ensemble.json from 'gwi ensemble fit' instead of --checkpoint")
    q.add_argument("--uncertainty", metavar="FILE.npy", help="also write MC-dropout per-pixel std (m/s)")
    q.add_argument("--mc-samples", type=int, default=8, help="stochastic passes for --uncertainty (default 8)")
    q.add_argument("--plots", metavar="DIR", help="PNGs of a few predictions (and their uncertainty)")
    q.add_argument("--test", required=True, metavar="DIR_OR_DATASET", help="folder of <oid>.npy or a prepared test dataset")
    q.add_argument("--out", default="submission.csv")
    q.add_argument("--tta", choices=["none", "flip"], default="flip",
                   help="flip (default): also predict the mirrored recording and average the mirrored-back map")
    q.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto: fp16 on CUDA, fp32 on CPU")
    q.add_argument("--batch-size", type=int, default=32)
    q.add_argument("--device")
    q.add_argument("--skip-bad", action="store_true", help="report unreadable test files and fill them with the training mean")
    q.add_argument("--misfit", metavar="FILE.csv",
                   help="also re-simulate each prediction and write oid,misfit (refine the worst files first)")
    q.add_argument("--misfit-backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                   help="forward model for --misfit (default openfwi; deepwave is ~10x faster on CPU)")
    q.add_argument("--shard", metavar="i/N", help="predict only the i-th of N interleaved shares of the test files "
                                                   "(gwi merge joins the parts)")
    q.add_argument("--post", metavar="STEPS", help=POST_HELP)
    q.set_defaults(fn=cmd_predict)


def cmd_ensemble_fit(a) -> int:
    from ..models.ensemble import fit
    from ..store import staged_output

    with staged_output(a.out) as out, staged_output(a.plots) as plots:
        r = fit(a.member, a.dataset, out, split=a.split, crf=not a.no_crf, mc_samples=a.mc_samples,
                device=a.device, plots=plots, log=lambda m: print(m, file=sys.stderr, flush=True))
    fams = sorted(k for k in r["val_mae"] if k != "overall")
    rows = [[m["model"], f"{m['weight']:.3f}", f"{m['val_mae']['overall']:.1f}"] + [f"{m['val_mae'][f]:.1f}" for f in fams]
            for m in r["members"]]
    rows.append(["ensemble" + (" + CRF" if r["crf"].get("enabled") else ""), "", f"{r['val_mae']['overall']:.1f}"]
                + [f"{r['val_mae'][f]:.1f}" for f in fams])
    print(table(rows, ["member", "weight", "val MAE m/s"] + fams))
    print(f"\nwrote {a.out} (split {r['split']}, {r['val_samples']} validation samples)")
    return 0


def add_ensemble(sub) -> None:
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


def cmd_evaluate(a) -> int:
    from ..evaluate import evaluate, table
    from ..models.ensemble import write_json
    from ..store import staged_input, staged_output

    if bool(a.checkpoint) == bool(a.ensemble):
        raise GwiError("evaluate: give --checkpoint (one or more) or --ensemble FILE")
    if a.split and a.fold is not None:
        raise GwiError("evaluate: give --fold K or --split SPEC, not both")
    split = f"kfold:{a.folds}:{a.fold}" if a.fold is not None else a.split
    with staged_input(a.ensemble) as ens, staged_output(a.out) as out, staged_output(a.plot) as plot:
        r = evaluate(a.checkpoint or [], a.dataset, ensemble=ens, split=split, tta=a.tta == "flip", device=a.device,
                     precision=a.precision, batch_size=a.batch_size, worst=a.worst, plot=plot, post=a.post,
                     log=lambda m: print(m, file=sys.stderr, flush=True))
        if a.ensemble:
            r["ensemble"] = a.ensemble  # the name the user gave, not the staged copy
        if a.plot:
            r["plot"] = a.plot
        if out:
            write_json(out, r)
    if a.json:
        print(json.dumps(r, indent=1))
        return 0
    print(table(r))
    worst = ", ".join(f"#{w['index']} {w['family']} {w['mae']:.0f}" for w in r["worst"])
    print(f"\n{r['samples']} samples ({r['split']}) of {r['dataset']}; worst (m/s): {worst}"
          + (f"\nwrote {a.out}" if a.out else "") + (f"\ndrew {a.plot}" if a.plot else ""))
    return 0


def add_evaluate(sub) -> None:
    q = sub.add_parser("evaluate", help="MAE, RMSE and SSIM per family of a model or ensemble on a labelled dataset")
    q.add_argument("--checkpoint", action="append", metavar="RUN_OR_FILE",
                   help="a run URL (its latest verified checkpoint) or a .pt file; repeat to average")
    q.add_argument("--ensemble", metavar="FILE", help="an ensemble.json from 'gwi ensemble fit' instead")
    q.add_argument("--dataset", required=True, metavar="URL", help="a labelled dataset")
    q.add_argument("--fold", type=int, help="evaluate on validation fold K of --folds (family-stratified)")
    q.add_argument("--folds", type=int, default=5)
    q.add_argument("--split", help="kfold:K:FOLD, family:NAME or all (default: the split the model validated on)")
    q.add_argument("--tta", choices=["none", "flip"], default="flip", help="as in predict (default flip)")
    q.add_argument("--worst", type=int, default=6, help="samples listed and drawn, the worst first (default 6)")
    q.add_argument("--plot", metavar="PNG", help="draw the worst samples: truth, prediction, error")
    q.add_argument("--out", metavar="FILE.json", help="write the report (a path or a store URL)")
    q.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    q.add_argument("--post", metavar="STEPS", help=POST_HELP + "; the MAE without them is shown beside")
    q.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="fp32")
    q.add_argument("--batch-size", type=int, default=32)
    q.add_argument("--device")
    q.set_defaults(fn=cmd_evaluate)


def cmd_submission_check(a) -> int:
    from ..predict import check_submission

    summary, problems = check_submission(a.file, a.test)
    if problems:
        return print_problems(f"{a.file}: INVALID", problems)
    print(f"{a.file}: valid ({summary['oids']} test files, {summary['rows']} rows)")
    return 0


def add_submission(sub) -> None:
    q = sub.add_parser("submission", help="check a submission file")
    ssub = q.add_subparsers(dest="sub_cmd", metavar="SUBCOMMAND")
    ssub.required = True
    q = ssub.add_parser("check", help="validate header, ids, rows per oid, values; with --test, the oid set")
    q.add_argument("file")
    q.add_argument("--test", metavar="DIR", help="the test folder the submission must cover")
    q.set_defaults(fn=cmd_submission_check)


COMMANDS = {"models": add_models, "train": add_train, "predict": add_predict, "ensemble": add_ensemble,
            "evaluate": add_evaluate, "submission": add_submission}
