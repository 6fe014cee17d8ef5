"""Physics on predictions: ``gwi refine`` (full-waveform inversion from a submission) and ``gwi merge``
(joining the shard outputs of refine and predict)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from ..errors import GwiError
from ..physics import BACKENDS, DEFAULT_BACKEND
from ..physics import OPTIMIZERS as REFINE_OPTIMIZERS
from ..physics.refine_config import PRIOR_MODES


def _refine_config(a):
    from ..budget import parse_duration
    from ..physics.refine import RefineConfig

    bands = tuple(float(b) for b in a.bands.split(",") if b.strip()) if a.bands else RefineConfig.bands
    opts = {"nbc": a.nbc} if a.nbc is not None else {}
    if opts and a.backend != "openfwi":
        raise GwiError(f"refine: --nbc is an openfwi setting; the backend is {a.backend}")
    cfg = RefineConfig(backend=a.backend, iterations=a.iterations, lr=a.lr, tv=a.tv, smooth=a.smooth, pull=a.pull,
                       priors=a.priors, bands=bands, optimizer=a.optimizer, batch_size=a.batch_size,
                       backend_options=opts, device=a.device,
                       **({} if a.scale_range is None else {"scale_range": a.scale_range}),
                       time_budget_s=parse_duration(a.time_budget) if a.time_budget else float("inf"))
    cfg.check()  # before a model predicts or a tuning runs: a bad setting is refused at once
    return cfg


def cmd_refine(a) -> int:
    from ..physics.refine import WORK_SUFFIXES, is_model, model_start, refine, tuned_weights
    from ..sharding import parse_shard

    cfg = _refine_config(a)
    only = None
    if a.only:
        only = [ln.strip() for ln in Path(a.only).read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if a.worst is not None and a.rank is None:
        raise GwiError("refine: --worst needs --rank MISFIT.csv (what gwi predict --misfit writes)")
    from_model = is_model(a.init)
    if a.tune_on and not (from_model and a.priors == "auto"):
        raise GwiError(f"refine: --tune-on chooses the weights of each prior set from the model's maps: expected "
                       f"--priors auto and --init a run or .pt, got --priors {a.priors} and --init {a.init}")
    if a.tune_files < 1:
        raise GwiError(f"refine: --tune-files: expected an integer >= 1, got {a.tune_files}")
    from ..store import resumable_output, staged_input

    shard = parse_shard(a.shard)
    say = lambda m: print(m, file=sys.stderr, flush=True)
    # a store URL as --out: the work files go up after every batch, so an attempt on another
    # machine resumes where this one stopped (the predicted start and the tuning among them)
    with staged_input(None if from_model else a.init) as init, staged_input(a.rank) as rank, \
            resumable_output(a.out, WORK_SUFFIXES) as out:
        if from_model:
            # the refine shard is a shard of all files only when no --only/--rank chose among them
            init = model_start(a.init, a.test, out.path, shard=shard if only is None and rank is None else None,
                               device=a.device, log=say)
            out.save()
        if a.tune_on:
            cfg.prior_sets = tuned_weights(out.path, a.tune_on, a.tune_files, a.init, cfg, log=say)["chosen"]
            out.save()
        r = refine(a.test, init, out.path, cfg, shard=shard, only=only, rank=rank,
                   worst=1.0 if a.worst is None else a.worst, save=out.save, log=say)
    print(f"wrote {a.out}: {r['refined']} of {r['chosen']} files refined ({r['files']} in the file); "
          f"misfit per file in {a.out}.misfit.csv, prior set per file in {a.out}.priors.csv")
    return 0 if r["stopped"] is None else 3


def add_refine(sub) -> None:
    q = sub.add_parser("refine", help="full-waveform inversion of test files, starting from a submission or a model")
    q.add_argument("--test", required=True, metavar="DIR|URL", help="folder of <oid>.npy test files, or a dataset")
    q.add_argument("--init", required=True, metavar="SUBMISSION.csv|RUN|CKPT.pt",
                   help="the maps to start from: a submission (path or store URL), or a model (a run or a .pt "
                        "checkpoint) whose predictions of --test are written to OUT.init.csv first (reused on resume)")
    q.add_argument("--out", required=True, metavar="REFINED.csv",
                   help="path or store URL: a whole submission; with --shard, that shard's files only")
    q.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                   help="forward model (default openfwi, the scheme the competition's data was made with)")
    q.add_argument("--iterations", type=int, default=60, help="per file, split over the bands (default 60)")
    q.add_argument("--bands", help="low-pass cut-offs in Hz, coarse to fine, 0 = full band (default 5,10,0)")
    q.add_argument("--lr", type=float, default=50.0,
                   help="m/s: gd's largest change per step (default 50), or Adam's step")
    q.add_argument("--tv", type=float, default=1e-3, help="total-variation weight (default 1e-3)")
    q.add_argument("--smooth", type=float, default=0.0,
                   help="weight of the mean squared Laplacian of the map in km/s (default 0; --priors auto's "
                        "smooth set: 1e3 when 0)")
    q.add_argument("--pull", type=float, default=0.0,
                   help="weight of the mean squared difference to the start map in km/s (default 0)")
    q.add_argument("--priors", choices=PRIOR_MODES, default="fixed",
                   help="fixed (default): --tv/--smooth/--pull for every file; auto: per file, TV for a layered "
                        "start map, the Laplacian for a smooth one (recorded in OUT.priors.csv)")
    q.add_argument("--tune-on", metavar="DATASET", help="choose each prior set's weights on labelled samples of "
                   "this dataset (a grid, scored by MAE; needs --priors auto and a model as --init); in OUT.tuning.json")
    q.add_argument("--tune-files", type=int, default=8, metavar="K", help="samples --tune-on refines (default 8)")
    q.add_argument("--optimizer", choices=REFINE_OPTIMIZERS, default="gd",
                   help="gd (default): depth-scaled steepest descent; adam; lbfgs")
    q.add_argument("--batch-size", type=int, default=4, help="files refined together (default 4)")
    q.add_argument("--time-budget", metavar="DURATION",
                   help="start no batch that would end after this (e.g. 2h, 45m); exit 3 if files were left: rerun to resume")
    q.add_argument("--scale-range", type=float, metavar="FRACTION",
                   help="first scan each map times 1 +- this for the best fit on the first band (0: no scan)")
    q.add_argument("--nbc", type=int, help="openfwi: absorbing cells (default 120 as published; 40 is ~4x faster)")
    q.add_argument("--shard", metavar="i/N", help="refine only the i-th of N interleaved shares of the files")
    q.add_argument("--only", metavar="FILE", help="refine only the oids listed in FILE (one per line)")
    q.add_argument("--rank", metavar="MISFIT.csv", help="misfit per file (gwi predict --misfit), for --worst")
    q.add_argument("--worst", type=float, metavar="FRACTION",
                   help="refine only this fraction of the files, those with the largest misfit in --rank")
    q.add_argument("--device")
    q.set_defaults(fn=cmd_refine)


def cmd_merge(a) -> int:
    from ..merge import merge
    from ..store import staged_input, staged_output

    with contextlib.ExitStack() as stack:
        parts = [stack.enter_context(staged_input(p)) for p in a.parts]
        base = stack.enter_context(staged_input(a.base))
        out = stack.enter_context(staged_output(a.out))
        r = merge(parts, out, test=a.test, base=base, names=a.parts, base_name=a.base)
    print(f"wrote {a.out}: {r['files']} files from {r['parts']} parts"
          + (f", {r['from_base']} from {a.base}" if a.base else ""))
    return 0


def add_merge(sub) -> None:
    q = sub.add_parser("merge", help="join shard outputs (submissions) into one, checking none is missing or doubled")
    q.add_argument("parts", nargs="+", metavar="PART.csv", help="paths or store URLs")
    q.add_argument("--out", required=True, metavar="MERGED.csv", help="path or store URL")
    q.add_argument("--test", metavar="DIR|URL", help="require exactly the oids of this test folder or dataset")
    q.add_argument("--base", metavar="SUBMISSION.csv", help="rows for the oids no part holds (e.g. the unrefined)")
    q.set_defaults(fn=cmd_merge)


COMMANDS = {"refine": add_refine, "merge": add_merge}
