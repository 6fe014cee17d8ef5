"""The ``gwi`` command. Parsing and printing only: the work lives in the modules it calls."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from . import __version__
from .console import duration
from .errors import EXIT_STORE_UNAVAILABLE, GwiError
from .physics import AUGMENT_OPS, BACKENDS, DEFAULT_BACKEND
from .physics import OPTIMIZERS as REFINE_OPTIMIZERS


def _table(rows: list[list], header: list[str], **rich) -> str:
    """Aligned columns for a pipe; a rich table on a terminal (``gwi.console``)."""
    from .console import table

    return table(rows, header, **rich)


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
                   shard_size=a.shard_size, overwrite=a.overwrite, exist_ok=a.exist_ok, backend=a.backend)
    print(_summary(m, out.rstrip("/") + f"/datasets/{a.name}"))
    return 0


def cmd_data_augment(a) -> int:
    from .data.augment import augment, parse_recipe
    from .sharding import parse_shard
    from .store import default_store_url

    out = a.out or default_store_url()
    m = augment(a.source, out, a.name, factor=a.factor, recipe=parse_recipe(a.recipe), seed=a.seed,
                backend=a.backend, keep_source=a.keep_source, shard=parse_shard(a.shard), batch_size=a.batch_size,
                device=a.device, shard_size=a.shard_size, overwrite=a.overwrite, exist_ok=a.exist_ok)
    where = out.rstrip("/") + f"/datasets/{a.name}"
    if a.shard:
        n = parse_shard(a.shard)[1]
        print(f"part {a.shard} of {where}: {m['num_samples']} samples; when all {n} parts are there: "
              f"gwi data merge --out {out} --name {a.name} --parts {n}")
    else:
        print(_summary(m, where))
    return 0


def cmd_data_merge(a) -> int:
    from .data.shards import merge_parts
    from .store import default_store_url

    out = a.out or default_store_url()
    m = merge_parts(out, a.name, a.parts, overwrite=a.overwrite)
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
    print(_table(rows, ["model", "params", "tiny", "precision", "equivariant to", "what"]))
    print("\ninput (B, 5, 1000, 70) normalised seismic -> output (B, 1, 70, 70) normalised velocity in [-1, 1]")
    return 0


def _params(name: str, preset: str) -> int:
    from .models import registry

    return registry.count_parameters(registry.create_model(name, preset))


def cmd_train(a) -> int:
    from .runs import METRICS, Run
    from .train import TrainConfig, apply_sets, train

    cfg = TrainConfig(model=a.model, dataset=a.dataset, run=a.run, preset=a.preset)
    for key in ("epochs", "batch_size", "lr", "precision", "heartbeat_s", "seed", "device", "max_steps",
                "checkpoint_every", "keep_checkpoints", "ema", "flip", "loss", "optimizer", "schedule", "families",
                "init_from", "init_partial", "workers", "compile", "channels_last"):
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
        from .budget import parse_duration

        try:
            cfg.time_budget = parse_duration(a.time_budget, allow_auto=True)
        except ValueError as e:
            raise GwiError(f"--time-budget: {e}") from None
    apply_sets(cfg, a.set)
    from . import STARTED

    m = train(cfg, log=lambda msg: print(msg, flush=True), started=STARTED)
    fam = ", ".join(f"{f} {v:.1f}" for f, v in m["val_mae_per_family"].items())
    print(f"done: {m['steps']} steps, val MAE {m['val_mae']:.1f} m/s ({fam}); metrics in {Run(cfg.run).key_url(METRICS)}")
    return 0


def cmd_predict(a) -> int:
    from .sharding import parse_shard
    from .predict import predict
    from .store import staged_input, staged_output

    if bool(a.checkpoint) == bool(a.ensemble):
        raise GwiError("predict: give --checkpoint (one or more) or --ensemble FILE")
    # outputs given as store URLs are written locally and uploaded only when prediction succeeded
    with staged_input(a.ensemble) as ens, staged_output(a.out) as out, staged_output(a.uncertainty) as unc, \
            staged_output(a.plots) as plots, staged_output(a.misfit) as mis:
        r = predict(a.checkpoint or [], a.test, out, tta=a.tta == "flip", precision=a.precision, device=a.device,
                    batch_size=a.batch_size, skip_bad=a.skip_bad, ensemble=ens, uncertainty=unc,
                    mc_samples=a.mc_samples, plots=plots, misfit=mis, misfit_backend=a.misfit_backend,
                    shard=parse_shard(a.shard), log=lambda m: print(m, file=sys.stderr, flush=True))
    bad = f", {len(r['bad'])} bad file(s) filled with the training mean" if r["bad"] else ""
    print(f"wrote {a.out}: {r['files']} test files, {r['rows']} rows in {r['seconds']:.1f} s "
          f"({r['files_per_s']:.1f} files/s){bad}")
    return 0


def cmd_refine(a) -> int:
    from .budget import parse_duration
    from .sharding import parse_shard
    from .physics.refine import WORK_SUFFIXES, RefineConfig, refine

    bands = tuple(float(b) for b in a.bands.split(",") if b.strip()) if a.bands else RefineConfig.bands
    opts = {"nbc": a.nbc} if a.nbc is not None else {}
    if opts and a.backend != "openfwi":
        raise GwiError(f"refine: --nbc is an openfwi setting; the backend is {a.backend}")
    cfg = RefineConfig(backend=a.backend, iterations=a.iterations, lr=a.lr, tv=a.tv, bands=bands,
                       optimizer=a.optimizer, batch_size=a.batch_size, backend_options=opts, device=a.device,
                       **({} if a.scale_range is None else {"scale_range": a.scale_range}),
                       time_budget_s=parse_duration(a.time_budget) if a.time_budget else float("inf"))
    only = None
    if a.only:
        only = [ln.strip() for ln in Path(a.only).read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if a.worst is not None and a.rank is None:
        raise GwiError("refine: --worst needs --rank MISFIT.csv (what gwi predict --misfit writes)")
    from .store import resumable_output, staged_input

    # a store URL as --out: the work files go up after every batch, so an attempt on another
    # machine resumes where this one stopped
    with staged_input(a.init) as init, staged_input(a.rank) as rank, \
            resumable_output(a.out, WORK_SUFFIXES) as out:
        r = refine(a.test, init, out.path, cfg, shard=parse_shard(a.shard), only=only, rank=rank,
                   worst=1.0 if a.worst is None else a.worst, save=out.save,
                   log=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"wrote {a.out}: {r['refined']} of {r['chosen']} files refined ({r['files']} in the file); "
          f"misfit per file in {a.out}.misfit.csv")
    return 0 if r["stopped"] is None else 3


def cmd_merge(a) -> int:
    from .merge import merge

    from .store import staged_input, staged_output

    with contextlib.ExitStack() as stack:
        parts = [stack.enter_context(staged_input(p)) for p in a.parts]
        base = stack.enter_context(staged_input(a.base))
        out = stack.enter_context(staged_output(a.out))
        r = merge(parts, out, test=a.test, base=base, names=a.parts, base_name=a.base)
    print(f"wrote {a.out}: {r['files']} files from {r['parts']} parts"
          + (f", {r['from_base']} from {a.base}" if a.base else ""))
    return 0


def cmd_ensemble_fit(a) -> int:
    from .models.ensemble import fit
    from .store import staged_output

    with staged_output(a.out) as out, staged_output(a.plots) as plots:
        r = fit(a.member, a.dataset, out, split=a.split, crf=not a.no_crf, mc_samples=a.mc_samples,
                device=a.device, plots=plots, log=lambda m: print(m, file=sys.stderr, flush=True))
    fams = sorted(k for k in r["val_mae"] if k != "overall")
    rows = [[m["model"], f"{m['weight']:.3f}", f"{m['val_mae']['overall']:.1f}"] + [f"{m['val_mae'][f]:.1f}" for f in fams]
            for m in r["members"]]
    rows.append(["ensemble" + (" + CRF" if r["crf"].get("enabled") else ""), "", f"{r['val_mae']['overall']:.1f}"]
                + [f"{r['val_mae'][f]:.1f}" for f in fams])
    print(_table(rows, ["member", "weight", "val MAE m/s"] + fams))
    print(f"\nwrote {a.out} (split {r['split']}, {r['val_samples']} validation samples)")
    return 0


def cmd_evaluate(a) -> int:
    from .evaluate import evaluate, table
    from .models.ensemble import write_json
    from .store import staged_input, staged_output

    if bool(a.checkpoint) == bool(a.ensemble):
        raise GwiError("evaluate: give --checkpoint (one or more) or --ensemble FILE")
    if a.split and a.fold is not None:
        raise GwiError("evaluate: give --fold K or --split SPEC, not both")
    split = f"kfold:{a.folds}:{a.fold}" if a.fold is not None else a.split
    with staged_input(a.ensemble) as ens, staged_output(a.out) as out, staged_output(a.plot) as plot:
        r = evaluate(a.checkpoint or [], a.dataset, ensemble=ens, split=split, tta=a.tta == "flip", device=a.device,
                     precision=a.precision, batch_size=a.batch_size, worst=a.worst, plot=plot,
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


def cmd_submission_check(a) -> int:
    from .predict import check_submission

    summary, problems = check_submission(a.file, a.test)
    if problems:
        return _report(f"{a.file}: INVALID", problems)
    print(f"{a.file}: valid ({summary['oids']} test files, {summary['rows']} rows)")
    return 0



# ------------------------------------------------------------------------------------------------
# dispatch, status and the scheduler


def _clock(t: float | None) -> str:
    import time

    return "-" if t is None else time.strftime("%H:%M:%S", time.localtime(t))


def _status_table(recs: list[dict]) -> str:
    rows = []
    for r in recs:
        ep = f"{r['epoch']}/{r['epochs']}" if r["epochs"] else "-"
        mae = f"{r['val_mae']:.1f}" if isinstance(r["val_mae"], (int, float)) else "-"
        state = r["shown_state"]
        beat = duration(r["heartbeat_age_s"])
        rows.append([r["job"], r["platform"] or "-", state, r["attempt"] or "-", ep, mae, duration(r["eta_s"]),
                     beat if beat == "-" else beat + " ago", f"${r['cost_usd']:.2f}", (r["reason"] or "")[:70]])
    from .console import STATE_STYLE

    bars = [(r["epoch"], r["epochs"]) if r["epochs"] else None for r in recs]
    return _table(rows, ["job", "platform", "state", "try", "epoch", "val MAE m/s", "ETA", "beat", "cost", "note"],
                  styles={"state": STATE_STYLE}, bars={"epoch": bars})


def _platform_table(v, credentials: bool = False) -> str:
    rows = []
    for name, p in sorted(v.profiles.items()):
        u = v.usage(name)
        quota = f"{u['hours_week']:.1f}/{p.quota_hours_per_week:g} h" if p.quota_hours_per_week is not None \
            else f"{u['hours_week']:.1f} h"
        row = [name, p.adapter, p.gpu or "-", f"{u['active']}/{p.capacity}", quota, f"${p.usd_per_hour:g}/h",
               f"${u['cost_usd']:.2f}"]
        if credentials:
            missing = p.missing_credentials()
            row.append("missing " + ", ".join(missing) if missing else "set" if p.credentials else "-")
        rows.append(row)
    head = ["platform", "adapter", "gpu", "running", "used (7 days)", "price", "spent"]
    return _table(rows, head + (["credentials"] if credentials else []))


def _scheduler_note(v, stale_s: float = 60.0) -> str:
    """A line when jobs are unfinished and no scheduler pass ran lately: status only reads, so nothing
    moves on until a watcher runs."""
    import time

    if not v.unfinished():
        return ""
    last = v.last_reconcile()
    if last is not None and time.time() - last <= stale_s:
        return ""
    when = "yet" if last is None else f"for {duration(time.time() - last)}"
    return f"\n\nno scheduler pass {when}: jobs move on while gwi watch (or gwi dispatch --follow) runs"


def _print_events(s, after: int, spec: str | None = None) -> int:
    for e in s.events(after_id=after):
        if spec and not e["job_id"].startswith(spec + "/"):
            after = e["id"]
            continue
        print(f"{_clock(e['time'])}  {e['job_id']:<28} {e['kind']:<10} {e['message']}", flush=True)
        after = e["id"]
    return after


def _follow(s, spec: str | None, interval: float, forever: bool = False) -> int:
    """Reconcile and print events until every job (of ``spec``) has finished."""
    import time

    last, swept = s.last_event_id(), time.monotonic()
    try:
        while True:
            s.reconcile()  # waits while another watcher holds the lock, then acts on what it left
            last = _print_events(s, last, spec)
            if not forever and s.unfinished(spec) == 0:
                break
            if forever and time.monotonic() - swept > float(os.environ.get("GWI_SWEEP_S", 3600)):
                _sweep(s)
                swept = time.monotonic()
            time.sleep(interval)
    except KeyboardInterrupt:
        print("\nstopped following; jobs keep running (gwi watch resumes, gwi status shows them)")
        return 130
    recs = s.status_records(spec)
    print()
    print(_status_table(recs))
    outputs = [(j["id"], k, v) for j in s.jobs(spec) if j["state"] == "succeeded"
               for k, v in s.job_def(j).outputs.items() if k != "run" and j["kind"] != "synth"]
    if outputs:
        print("\noutputs:")
        for jid, k, v in outputs:
            print(f"  {jid:<28} {k:<12} {v}")
    bad = [r for r in recs if r["state"] != "succeeded"]
    return 1 if bad else 0


def _sweep(s) -> None:
    """Stop machines still running for attempts that ended (the service's hourly safety net)."""
    import time

    from .scheduler.instances import sweep

    try:
        sweep(s, log=lambda m: print(f"{_clock(time.time())}  sweep: {m}", flush=True))
    except Exception as e:  # noqa: BLE001 - the watch goes on; the next sweep tries again
        print(f"gwi: sweep of orphaned machines failed: {type(e).__name__}: {e}", file=sys.stderr)


def _dry_run(path: str) -> int:
    """The plan: every job in order, where it would go first and why, its fallbacks, its command and
    outputs; then the platforms that will be skipped (missing credentials, ...) and the problems (a
    store that does not answer, a job no platform can take), exiting 1 when there are problems.
    Reads the state and changes nothing; needs no credentials to show the plan."""
    import shlex

    from .scheduler import open_view
    from .scheduler.policy import fallback_order
    from .spec import load_spec, store_problem

    v = open_view()
    try:
        spec = load_spec(path, profiles=v.profiles, check_store=False)
        print(f"plan for {spec.name} ({path}): {len(spec.jobs)} job(s), store {spec.store}\n")
        rows, problems, skipped = [], [], {}
        store_issue = store_problem(spec.store)
        for job in spec.jobs:
            jid = f"{spec.name}/{job.name}"
            known = v.job(jid)
            if known is not None and known["state"] in ("succeeded", "running"):
                rows.append([job.name, job.kind, ",".join(job.after) or "-", "-", f"already {known['state']}", ""])
                continue
            if job.kind == "sweep":  # run by the scheduler itself; its trials go to the platforms
                rows.append([job.name, job.kind, ",".join(job.after) or "-", "scheduler",
                             f"{job.params['trials']} train trials, {job.params['parallel']} at a time",
                             " > ".join(job.platforms)])
                continue
            # with the store unreachable, every platform would say so: ask them without it
            ch = v.choices(jid, job, None if store_issue else spec.store)
            first, rest = fallback_order(ch)
            for c in ch:
                if not (c.ok or c.busy) and c.why:
                    skipped.setdefault((c.platform, c.why), []).append(job.name)
            then = [c.platform + ("" if c.ok or c.busy else f" (skip: {c.why})") for c in rest]
            rows.append([job.name, job.kind, ",".join(job.after) or "-", first.platform if first else "NONE",
                         first.why if first else "; ".join(f"{c.platform}: {c.why}" for c in ch),
                         " > ".join(then) or "-"])
            if first is None:
                problems.append(f"job {job.name}: no platform can take it now")
        print(_table(rows, ["job", "kind", "after", "first", "why", "then (fallback order)"]))
        print("\ncommands (the same on every platform) and outputs:")
        for job in spec.jobs:
            print(f"  {job.name}: {shlex.join(job.argv) if job.argv else '(run by the scheduler)'}")
            for key, url in job.outputs.items():
                print(f"      {key}: {url}")
        if spec.deadline is not None:
            print()
            print(_deadline_text(v, spec))
        print()
        print(_platform_table(v))
        if store_issue:
            problems.insert(0, f"store: {store_issue}")
        if skipped:  # the jobs fall back past these: worth fixing, not in the way
            print("\nplatforms that will be skipped:")
            print("\n".join(f"  - {plat}: {why} (jobs {', '.join(jobs)})" for (plat, why), jobs in skipped.items()))
        if problems:
            print(f"\n{len(problems)} problem(s):")
            print("\n".join(f"  - {p}" for p in problems))
            return 1
        print("\nno problems found: gwi dispatch " + path)
        return 0
    finally:
        v.close()


def _deadline_text(v, spec) -> str:
    """Whether the plan ends by its deadline, the expected timeline per platform, and what meeting
    the deadline takes (budgets cut, jobs dropped)."""
    import datetime as dt

    work, plan = v.deadline_plan(spec.name, spec.jobs, spec.deadline)
    when = dt.datetime.fromtimestamp(spec.deadline, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    left = (spec.deadline - v.clock()) / 3600
    full = {w.name: w.hours for w in work}
    verdict = ("holds as planned" if plan.holds and not plan.budgets and not plan.dropped else
               "holds with the changes below" if plan.holds else "cannot hold, even with the changes below")
    lines = [f"deadline {when} (in {left:.1f} h): {verdict}; the last job ends in ~{plan.end_h:.1f} h",
             "  timeline, hours from now (~: a guess, no budget or measurement yet):"]
    guessed = {w.name for w in work if w.guessed}
    by_platform: dict[str, list] = {}
    for p in sorted(plan.placed.values(), key=lambda p: p.start_h):
        by_platform.setdefault(p.platform or "nowhere", []).append(p)
    for name, placed in sorted(by_platform.items()):
        lines.append(f"  {name:<10} " + ", ".join(
            f"{p.job} {p.start_h:.1f}-{p.end_h:.1f}{'~' if p.job in guessed else ''}" if p.platform else
            f"{p.job} (no usable platform)" for p in placed))
    for job, h in plan.budgets.items():
        lines.append(f"  budget cut: {job} {full[job]:.2f} -> {h:.2f} h")
    for job, why in plan.dropped.items():
        lines.append(f"  drop {job}: {why}")
    return "\n".join(lines)


def cmd_check(a) -> int:
    from .adapters.base import load_profiles
    from .check import check, render
    from .store import default_store_url

    sections = check(load_profiles(), a.store or default_store_url(), a.deadline)
    if a.json:
        print(json.dumps([s.as_json() for s in sections], indent=1))
    else:
        print(render(sections))
    store_ok = sections[-1].ok
    return 0 if store_ok and any(s.ok for s in sections[:-1]) else 1


def cmd_dashboard(a) -> int:
    from .dashboard import serve

    if a.refresh <= 0:
        raise GwiError(f"dashboard: --refresh: expected seconds > 0, got {a.refresh:g}")
    return serve(a.host, a.port, a.refresh)


def cmd_exec(a) -> int:
    """Run a command as a job (kind ``run``): beat for it, pass SIGTERM on, exit with its status."""
    import signal
    import subprocess

    from . import progress

    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        raise GwiError("exec: expected a command after --, e.g. gwi exec -- python script.py")
    env = {**os.environ, **({"GWI_RUN": a.run} if a.run else {}), **({"GWI_STORE": a.store} if a.store else {})}
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env,
                                errors="replace")
    except OSError as e:
        raise GwiError(f"exec: cannot run {cmd[0]!r}: {e.strerror or e}") from None
    # a platform's stop reaches gwi: the command gets the same chance to save its work
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, _f: proc.send_signal(s))
    progress.update(state="running", done=0, unit="lines")
    lines = 0
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        lines += 1
        progress.update(done=lines)
    rc = proc.wait()
    return rc if rc >= 0 else 128 - rc  # killed by a signal: the shell's convention


def cmd_runs_list(a) -> int:
    from .store import default_store_url
    from .tracking import RUN_COLUMNS, find_runs, run_metrics, summary_row

    urls = find_runs(a.store or default_store_url())
    rows = [summary_row(u, run_metrics(u)) for u in urls]
    if a.json:
        print(json.dumps([dict(zip(RUN_COLUMNS, r)) for r in rows], indent=1))
    elif not rows:
        print(f"no runs in {a.store or default_store_url()}")
    else:
        print(_table(rows, RUN_COLUMNS))
    return 0


def cmd_runs_compare(a) -> int:
    from .runs import METRICS
    from .store import staged_output
    from .tracking import RUN_COLUMNS, plot_curves, run_metrics, summary_row

    metrics = {u: run_metrics(u) for u in a.runs}
    missing = [u for u, m in metrics.items() if m is None]
    if missing:
        raise GwiError(f"runs compare: no {METRICS} (unfinished or not a run): " + ", ".join(missing))
    print(_table([summary_row(u, m) for u, m in metrics.items()], RUN_COLUMNS))
    if a.plot:
        names = [u.rstrip("/").rsplit("/", 1)[-1] for u in a.runs]
        labels = names if len(set(names)) == len(names) else a.runs
        with staged_output(a.plot) as out:
            plot_curves({lab: metrics[u]["history"] for lab, u in zip(labels, a.runs)}, Path(out))
        print(f"curves of {len(a.runs)} runs in {a.plot}")
    return 0


def _jobs(prefix: str, **_) -> list[str]:
    """Completions for a job argument: the jobs this state knows, as SPEC/JOB."""
    from .scheduler import open_view

    v = open_view()
    try:
        return [j["id"] for j in v.jobs() if j["id"].startswith(prefix)]
    finally:
        v.close()


def cmd_completion(a) -> int:
    import argcomplete

    print(argcomplete.shellcode(["gwi"], shell=a.shell))
    return 0


def cmd_init(a) -> int:
    from .paths import HOME_DIR, find_home

    folder = Path(a.folder).resolve()
    target = folder / HOME_DIR
    if target.is_dir():
        print(f"{target} exists: gwi keeps its state there for {folder} and the folders below")
        return 0
    outer = find_home(folder)
    target.mkdir(mode=0o700, parents=True)
    print(f"created {target}: gwi keeps its state and the embedded store (file://{target / 'store'}) there for "
          f"{folder} and the folders below" + (f", instead of {outer}" if outer else "")
          + " ($GWI_HOME, when set, still wins)")
    return 0


def cmd_dispatch(a) -> int:
    if a.dry_run:
        return _dry_run(a.spec)
    from .scheduler import Scheduler
    from .spec import load_spec

    s = Scheduler()
    spec = load_spec(a.spec, profiles=s.profiles)
    for line in s.submit(spec):
        print(f"{spec.name}/{line}")
    if a.follow:
        return _follow(s, spec.name, a.interval)
    s.reconcile()
    print()
    print(_status_table(s.status_records(spec.name)))
    print("\nfollow with: gwi watch   (gwi status --watch shows progress; logs: gwi logs JOB)")
    return 0


def cmd_watch(a) -> int:
    if a.install:
        from .scheduler import gwi_home
        from .service import install

        print(install(gwi_home(), dry_run=a.dry_run))
        return 0
    from .scheduler import Scheduler

    return _follow(Scheduler(), a.spec, a.interval, forever=a.forever)


def cmd_doctor(a) -> int:
    from .doctor import doctor
    from .scheduler import gwi_home

    findings = doctor(gwi_home(), fix=a.fix)
    rows = [[f.area, "fixed" if f.fixed else "ok" if f.ok else "PROBLEM", f.message] for f in findings]
    print(_table(rows, ["area", "", "finding"]))
    bad = [f for f in findings if not (f.ok or f.fixed)]
    if bad and not a.fix:
        print("\ngwi doctor --fix repairs what it safely can (it says what it does)")
    return 1 if bad else 0


def cmd_instances(a) -> int:
    from .scheduler import open_view
    from .scheduler.instances import command

    v = open_view()
    try:
        return command(v, stop=a.stop_orphans, as_json=a.json)
    finally:
        v.close()


def _status_text(v, a) -> str:
    if a.job:
        return _job_detail(v, v.resolve(a.job), a.json)
    recs = v.status_records()
    if a.json:
        return json.dumps(recs, indent=1)
    from .paths import gwi_home, home_origin

    where = f"\nstate: {gwi_home()} ({home_origin()})"
    if not recs:
        return "no jobs yet: gwi dispatch jobs/demo.yaml" + where
    return _status_table(recs) + "\n\n" + _platform_table(v) + _scheduler_note(v) + where


def cmd_status(a) -> int:
    """Reads the state (read-only, no lock): it never reconciles, so it shows what the last scheduler
    pass recorded while a dispatcher or watcher goes on beside it."""
    import time

    from .scheduler import open_view

    shown = False
    while True:
        v = open_view()  # afresh each time: a first dispatch may create the state meanwhile
        try:
            out = _status_text(v, a)
        finally:
            v.close()
        if not a.watch:
            print(out)
            return 0
        from .console import color_enabled

        # a terminal gets a view redrawn in place; a pipe or file one snapshot after another
        top = "\033[2J\033[H" if color_enabled() else "\n" if shown else ""
        print(top + time.strftime("%H:%M:%S ") + "gwi status (Ctrl-C to stop)\n\n" + out, flush=True)
        shown = True
        try:
            time.sleep(a.interval)
        except KeyboardInterrupt:
            return 0


def cmd_platforms(a) -> int:
    from .adapters.base import secret_routes, trust_profile
    from .scheduler import open_view

    for path in a.trust:  # before anything loads the profiles: an untrusted one would be refused
        t = trust_profile(path)
        print(f"trusted {t['path']} (sha256 {t['sha256'][:12]}…): sends "
              f"{', '.join(t['variables']) or 'no secret'} to {', '.join(t['destinations']) or 'nowhere'}")
    v = open_view()
    try:
        if a.json:
            out = [{**r, "secrets": [{"variable": var, "sent_to": dest} for _, var, dest, _ in
                                     secret_routes({r["name"]: v.profiles[r["name"]]})]} for r in v.platform_records()]
            print(json.dumps(out, indent=1, default=list))
            return 0
        if not v.profiles:
            print("no platform profiles found")
            return 0
        print(_platform_table(v, credentials=True))
        routes = [[plat, var, dest, src] for plat, var, dest, src in secret_routes(v.profiles)]
        if routes:
            print("\nwhere each secret goes (AWS_* are the store's credentials)\n")
            print(_table(routes, ["platform", "variable", "sent to", "profile"]))
    finally:
        v.close()
    return 0


def _job_detail(v, jid: str, as_json: bool) -> str:
    j = v.job(jid)
    atts = [dict(a) for a in v.attempts(jid)]
    job = v.job_def(j)
    if as_json:
        for a in atts:
            a["progress"] = json.loads(a["progress"]) if a["progress"] else None
            a["handle"] = json.loads(a["handle"]) if a["handle"] else None
        return json.dumps({"job": jid, "state": j["state"], "reason": j["reason"], "definition": job.to_dict(),
                           "attempts": atts}, indent=1)
    rec = next(r for r in v.status_records(j["spec"]) if r["job"] == jid)
    lines = [f"{jid}: {j['kind']} {j['state']}" + (f" ({j['reason']})" if j["reason"] else ""),
             f"  command: {' '.join(job.argv)}", f"  platforms: {' > '.join(job.platforms)}"]
    lines += [f"  {k}: {url}" for k, url in job.outputs.items()]
    if rec["epochs"]:
        lines.append(f"  progress: epoch {rec['epoch']}/{rec['epochs']}, step {rec['step']}/{rec['total_steps']}, "
                     f"val MAE {rec['val_mae'] if rec['val_mae'] is not None else '-'} m/s, ETA {duration(rec['eta_s'])}")
    lines += ["", _history_table(v, jid)]
    return "\n".join(lines)


def _history_table(v, jid: str) -> str:
    rows = []
    for a in v.attempts(jid):
        hours = v.attempt_hours(a)
        rows.append([a["n"], a["platform"], a["state"], _clock(a["launched_at"]), _clock(a["ended_at"]),
                     duration(hours * 3600), a["resumed_from_step"] if a["resumed_from_step"] is not None else "-",
                     "-" if a["exit_code"] is None else a["exit_code"], f"${hours * a['usd_per_hour']:.2f}",
                     (a["end_reason"] or a["last_error"] or "")[:90]])
    return _table(rows, ["try", "platform", "state", "launched", "ended", "ran", "from step", "exit", "cost", "why it ended"]) \
        if rows else "no attempts yet"


def cmd_history(a) -> int:
    """Reads the state (read-only, no lock)."""
    from .scheduler import open_view

    v = open_view()
    try:
        jid = v.resolve(a.job)
        if a.json:
            attempts = [{k: a_[k] for k in a_.keys() if k not in ("handle", "cleanup")} | {"hours": v.attempt_hours(a_)}
                        for a_ in v.attempts(jid)]
            for a_ in attempts:
                a_["progress"] = json.loads(a_["progress"]) if a_.get("progress") else None
            print(json.dumps({"job": jid, "attempts": attempts, "events": [dict(e) for e in v.events(jid)]},
                             indent=1, default=str))
            return 0
        print(_history_table(v, jid))
        print()
        for e in v.events(jid):
            print(f"{_clock(e['time'])}  {e['kind']:<10} {e['message']}")
    finally:
        v.close()
    return 0


def cmd_sweep_show(a) -> int:
    """A sweep's trials (params, validation MAE, state) and the best; reads the study, no lock."""
    from .scheduler import open_view
    from .scheduler.sweeps import show

    v = open_view()
    try:
        jid = v.resolve(a.sweep)
        row = v.job(jid)
        if row["kind"] != "sweep":
            raise GwiError(f"{jid} is a {row['kind']} job, not a sweep")
        r = show(v.home, jid, v.job_def(row))
        r["state"], r["reason"] = row["state"], row["reason"]
    finally:
        v.close()
    if a.json:
        print(json.dumps(r, indent=1, default=str))
        return 0
    keys = sorted({k for t in r["trials"] for k in t["params"]})
    rows = [[f"t{t['trial']}", t["state"], "-" if t["value"] is None else f"{t['value']:.1f}", t["validations"]]
            + [_num(t["params"].get(k)) for k in keys] for t in r["trials"]]
    print(f"sweep {jid}: {r['state']} - {r['reason']}\n")
    print(_table(rows, ["trial", "state", "val MAE m/s", "validations"] + keys) if rows else "no trials yet")
    if r["best"]:
        b = r["best"]
        print(f"\nbest: t{b['trial']} ({b['job']}), val MAE {b['value']:.1f} m/s: "
              + ", ".join(f"{k}={_num(v)}" for k, v in b["params"].items()))
    return 0


def _num(v) -> str:
    return "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)


def cmd_cancel(a) -> int:
    from .scheduler import Scheduler

    s = Scheduler()
    print(s.cancel(s.resolve(a.job)))
    return 0


def cmd_logs(a) -> int:
    import time

    from .scheduler import ACTIVE, Scheduler

    s = Scheduler()
    jid = s.resolve(a.job)
    att, text = s.logs(jid, a.attempt, a.tail)
    sys.stdout.write(text)
    if not a.follow:
        return 0
    seen = len(s.logs(jid, att["n"])[1]) if a.tail else len(text)  # follow from the end of the whole log
    try:
        while True:
            time.sleep(1.0)
            att, text = s.logs(jid, att["n"])
            sys.stdout.write(text[seen:])
            sys.stdout.flush()
            seen = len(text)
            if att["state"] not in ACTIVE:
                return 0
            s.reconcile()
    except KeyboardInterrupt:
        return 0

def cmd_kaggle_package(a) -> int:
    from .adapters.kaggle import package

    r = package(a.out, a.id, runs=a.run, ensembles=a.ensemble, wheel=a.wheel, with_deps=a.with_deps, title=a.title,
                log=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"wrote {r['folder']}: {len(r['wheels'])} wheel(s), {len(r['mirrored'])} file(s) of the store mirrored")
    for f in r["mirrored"]:
        print(f"  {f}")
    print(f"\nupload: kaggle datasets create -p {r['folder']}   (later: kaggle datasets version -p {r['folder']} -m NOTE)")
    return 0


def _kaggle_adapter(platform: str):
    from .adapters.base import get_adapter, load_profiles

    profiles = load_profiles()
    p = profiles.get(platform)
    if p is None or p.adapter != "kaggle":
        kaggle = sorted(n for n, q in profiles.items() if q.adapter == "kaggle")
        raise GwiError(f"--platform: expected a Kaggle profile ({', '.join(kaggle) or 'none found'}), got {platform!r}")
    ad = get_adapter(p)
    why = ad.available()
    if why:
        raise GwiError(f"{platform}: {why}; gwi check says what it found")
    return ad


def cmd_kaggle_download(a) -> int:
    from .adapters.kaggle_competition import download
    from .data.prep import prep_test, prep_train
    from .data.shards import existing_dataset
    from .store import default_store_url

    root = download(_kaggle_adapter(a.platform), a.competition, a.dir, force=a.force, keep_zip=a.keep_zip,
                    log=lambda m: print(m, flush=True))
    if a.no_prep:
        return 0
    out = a.out or default_store_url()
    work = [(a.name, "kaggle-train", prep_train, root)]
    if (root / "test").is_dir():
        work.append((a.test_name, "kaggle-test", prep_test, root / "test"))
    else:
        print(f"no test/ folder in {root}: only the training data is prepared")
    for name, kind, prep, src in work:
        if not a.overwrite:
            try:
                if existing_dataset(out, name, {"kind": kind, "path": str(src.resolve())}):
                    print(f"{out.rstrip('/')}/datasets/{name}: already prepared from {src} (--overwrite redoes it)")
                    continue
            except ValueError as e:
                raise GwiError(str(e)) from None
        m = prep(src, out, name, overwrite=a.overwrite)
        print(_summary(m, out.rstrip("/") + f"/datasets/{name}"))
    return 0


def cmd_kaggle_submit(a) -> int:
    from .adapters.kaggle_competition import submit
    from .predict import check_submission

    summary, problems = check_submission(a.file, a.test)
    if problems:
        raise GwiError(f"{a.file}: not submitted, not a valid submission:\n  " + "\n  ".join(problems))
    ad = _kaggle_adapter(a.platform)
    print(f"{a.file}: valid ({summary['oids']} maps, {summary['rows']} rows); submitting to {a.competition}")
    print(submit(ad, a.competition, a.file, a.message))
    print("scores: gwi kaggle submissions")
    return 0


def cmd_kaggle_submissions(a) -> int:
    from .adapters.kaggle_competition import SUBMISSION_FIELDS, submissions

    rows = submissions(_kaggle_adapter(a.platform), a.competition, a.limit)
    if a.json:
        print(json.dumps(rows, indent=1))
    elif not rows:
        print(f"no submissions to {a.competition} yet")
    else:
        print(_table([[r[k] if r[k] is not None else "-" for k in SUBMISSION_FIELDS[:-1]] for r in rows],
                     ["date", "description", "status", "public MAE", "private MAE", "file"]))
    return 0


# ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gwi", description="Seismic FWI team runner: data, training, dispatch, submission.")
    p.add_argument("--version", action="version", version=f"gwi {__version__}")
    p.add_argument("--platforms", metavar="DIR", action="append", default=[],
                   help="also read platform profiles from DIR (a project's platforms/ folder); repeatable. "
                        "Profiles that send secrets somewhere new must be trusted first: gwi platforms --trust FILE")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True
    _data_parsers(sub)
    _training_parsers(sub)
    _prediction_parsers(sub)
    _physics_parsers(sub)
    _dispatch_parsers(sub)
    _job_parsers(sub)
    _kaggle_parsers(sub)
    return p


def _store_args(q, out_help: str) -> None:
    q.add_argument("--out", metavar="STORE_URL", help=out_help + " (default: the embedded store in gwi's home; gwi status names it)")
    q.add_argument("--name", required=True, help="dataset name: written to STORE_URL/datasets/NAME/")
    q.add_argument("--shard-size", type=int, default=500, help="samples per shard (default 500)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")


def _simulation_args(q, exists: str) -> None:
    """What the commands that forward-model maps into a dataset share."""
    q.add_argument("--batch-size", type=int, default=16, help="velocity maps per forward-model call")
    q.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    q.add_argument("--exist-ok", action="store_true", dest="exist_ok", help=f"succeed without work if {exists}")
    _store_args(q, "store to write to")


def _data_parsers(sub) -> None:
    data = sub.add_parser("data", help="prepare, synthesise, move and check datasets")
    dsub = data.add_subparsers(dest="data_cmd", metavar="SUBCOMMAND")
    dsub.required = True

    q = dsub.add_parser("prep", help="Kaggle/OpenFWI folders -> float16 shards + manifest")
    q.add_argument("--src", metavar="DIR", help="competition root, train_samples/, or one family folder")
    q.add_argument("--test-dir", metavar="DIR", help="a folder of test/<oid>.npy files")
    _store_args(q, "store to write to: file://PATH or s3://BUCKET/PREFIX")
    q.add_argument("--time-decimate", type=int, default=1, metavar="K",
                   help="keep every K-th time sample after a zero-phase anti-alias low-pass")
    q.add_argument("--velocity-tolerance", type=float, default=1.0, metavar="M_S",
                   help="allowed excursion outside 1500-4500 m/s (default 1)")
    q.set_defaults(fn=cmd_data_prep)

    q = dsub.add_parser("synth", help="generate OpenFWI-style families and forward-model them")
    q.add_argument("--family", action="append", required=True,
                   help="family (repeat or comma-separate): FlatVel_A ... Style_B")
    q.add_argument("--samples", type=int, required=True, help="samples per family")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                   help="forward model: openfwi (the organisers' scheme, default) or deepwave (faster on CPU)")
    _simulation_args(q, "the dataset exists with the same families, samples and seed")
    q.set_defaults(fn=cmd_data_synth)

    q = dsub.add_parser("augment", help="new maps from a dataset's maps (flip, crop, affine, blend), re-simulated")
    q.add_argument("--from", dest="source", required=True, metavar="URL", help="a labelled dataset: STORE_URL/datasets/NAME")
    q.add_argument("--factor", type=int, default=10, help="new maps per source map (default 10)")
    q.add_argument("--recipe", help=f"operations, comma-separated (default all: {','.join(AUGMENT_OPS)})")
    q.add_argument("--keep-source", action="store_true", help="also copy the source samples into the new dataset")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--backend", choices=BACKENDS, help="forward model (default: the one that made the source)")
    q.add_argument("--shard", metavar="i/N", help="only the i-th of N interleaved shares of the source maps, "
                                                   "written as part i of N (gwi data merge joins them)")
    _simulation_args(q, "the dataset (or part) exists from the same command")
    q.set_defaults(fn=cmd_data_augment)

    q = dsub.add_parser("merge", help="join the parts written by 'gwi data augment --shard i/N' into the dataset")
    q.add_argument("--parts", type=int, required=True, metavar="N", help="how many parts (the N of --shard i/N)")
    q.add_argument("--name", required=True, help="dataset name")
    q.add_argument("--out", help="store holding it (default: the embedded store)")
    q.add_argument("--overwrite", action="store_true", help="replace a dataset of that name made otherwise")
    q.set_defaults(fn=cmd_data_merge)

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


def _training_parsers(sub) -> None:
    from .config import LOSSES, OPTIMIZERS, SCHEDULES
    from .runs import RUNS  # the run layout is spelled in one place, help text included

    q = sub.add_parser("models", help="list the model registry")
    q.add_argument("name", nargs="?", help="show one model's card")
    q.add_argument("--json", action="store_true", help="every model's card, with its parameter counts")
    q.set_defaults(fn=cmd_models)

    q = sub.add_parser("train", help="train (or resume) a model on a dataset; writes to a run folder in a store")
    q.add_argument("--model", required=True, help="registry name (see 'gwi models')")
    q.add_argument("--dataset", required=True, metavar="URL", help="STORE_URL/datasets/NAME")
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


def _physics_parsers(sub) -> None:
    q = sub.add_parser("refine", help="full-waveform inversion of test files, starting from a submission")
    q.add_argument("--test", required=True, metavar="DIR|URL", help="folder of <oid>.npy test files, or a dataset")
    q.add_argument("--init", required=True, metavar="SUBMISSION.csv", help="the maps to start from (path or store URL)")
    q.add_argument("--out", required=True, metavar="REFINED.csv",
                   help="path or store URL: a whole submission; with --shard, that shard's files only")
    q.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                   help="forward model (default openfwi, the scheme the competition's data was made with)")
    q.add_argument("--iterations", type=int, default=60, help="per file, split over the bands (default 60)")
    q.add_argument("--bands", help="low-pass cut-offs in Hz, coarse to fine, 0 = full band (default 5,10,0)")
    q.add_argument("--lr", type=float, default=50.0,
                   help="m/s: gd's largest change per step (default 50), or Adam's step")
    q.add_argument("--tv", type=float, default=1e-3, help="total-variation weight (default 1e-3)")
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

    q = sub.add_parser("merge", help="join shard outputs (submissions) into one, checking none is missing or doubled")
    q.add_argument("parts", nargs="+", metavar="PART.csv", help="paths or store URLs")
    q.add_argument("--out", required=True, metavar="MERGED.csv", help="path or store URL")
    q.add_argument("--test", metavar="DIR|URL", help="require exactly the oids of this test folder or dataset")
    q.add_argument("--base", metavar="SUBMISSION.csv", help="rows for the oids no part holds (e.g. the unrefined)")
    q.set_defaults(fn=cmd_merge)


def _prediction_parsers(sub) -> None:
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
    q.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="fp32")
    q.add_argument("--batch-size", type=int, default=32)
    q.add_argument("--device")
    q.set_defaults(fn=cmd_evaluate)

    q = sub.add_parser("submission", help="check a submission file")
    ssub = q.add_subparsers(dest="sub_cmd", metavar="SUBCOMMAND")
    ssub.required = True
    q = ssub.add_parser("check", help="validate header, ids, rows per oid, values; with --test, the oid set")
    q.add_argument("file")
    q.add_argument("--test", metavar="DIR", help="the test folder the submission must cover")
    q.set_defaults(fn=cmd_submission_check)


def _dispatch_parsers(sub) -> None:
    q = sub.add_parser("check", help="which platforms and store can be used now: credentials, a live call, the fix")
    q.add_argument("--store", metavar="URL", help="the store to check (default: the embedded store)")
    q.add_argument("--deadline", type=float, default=10.0, metavar="S", help="seconds each live call may take")
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_check)

    q = sub.add_parser("dashboard", help="the state as a local web page (plans, jobs, attempts, platforms, curves), "
                                         "refreshing itself")
    q.add_argument("--port", type=int, default=8765, help="port (0: a free one; default 8765)")
    q.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    q.add_argument("--refresh", type=float, default=5.0, metavar="S", help="seconds between the page's refreshes")
    q.set_defaults(fn=cmd_dashboard)

    q = sub.add_parser("exec", help="run any command as a job: heartbeats for it, SIGTERM passed on (kind: run)")
    q.add_argument("--run", metavar="URL", help="the job's run folder, given to the command as $GWI_RUN")
    q.add_argument("--store", metavar="URL", help="the plan's store, given to the command as $GWI_STORE")
    q.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    q.set_defaults(fn=cmd_exec)

    q = sub.add_parser("runs", help="training runs in a store: list them, compare them (table and curves)")
    rsub = q.add_subparsers(dest="runs_cmd", metavar="SUBCOMMAND")
    rsub.required = True
    q = rsub.add_parser("list", help="every run in a store: model, data, steps, validation MAE per family, time")
    q.add_argument("store", nargs="?", help="store URL (default: the embedded store)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_runs_list)
    q = rsub.add_parser("compare", help="runs side by side, and their curves drawn together (--plot)")
    q.add_argument("runs", nargs="+", metavar="RUN_URL")
    q.add_argument("--plot", metavar="PNG", help="draw their loss and validation MAE against step into this file")
    q.set_defaults(fn=cmd_runs_compare)

    q = sub.add_parser("completion", help="print the shell's completion hook: eval \"$(gwi completion bash)\"")
    q.add_argument("shell", nargs="?", default="bash", choices=["bash", "zsh", "fish", "tcsh", "powershell"])
    q.set_defaults(fn=cmd_completion)

    q = sub.add_parser("init", help="make a .gwi/ folder here: gwi's state for this folder and those below (like git init)")
    q.add_argument("folder", nargs="?", default=".", help="where (default: the current folder)")
    q.set_defaults(fn=cmd_init)

    q = sub.add_parser("dispatch", help="validate a job spec and launch its jobs (idempotent)")
    q.add_argument("spec", help="a job spec, e.g. jobs/demo.yaml")
    q.add_argument("--dry-run", action="store_true", help="print the plan: where each job goes first, why, and its fallbacks")
    q.add_argument("--follow", action="store_true", help="stay and run the scheduler until every job has finished")
    q.add_argument("--interval", type=float, default=2.0, help="seconds between scheduler passes (default 2)")
    q.set_defaults(fn=cmd_dispatch)

    q = sub.add_parser("status", help="which platform runs what: state, epoch, val MAE, ETA, heartbeat, cost")
    q.add_argument("job", nargs="?", help="one job (SPEC/JOB or JOB): its attempts and outputs").completer = _jobs
    q.add_argument("--json", action="store_true")
    q.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    q.add_argument("--interval", type=float, default=2.0)
    q.set_defaults(fn=cmd_status)

    q = sub.add_parser("platforms", help="the platform profiles: adapter, GPU, slots, quota used, price, "
                                         "credentials and where each secret goes")
    q.add_argument("--trust", action="append", default=[], metavar="FILE",
                   help="trust a project's profile that sends secrets somewhere the package's profiles do not "
                        "(recorded with its sha256: an edit needs trusting again)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_platforms)


def _job_parsers(sub) -> None:
    q = sub.add_parser("watch", help="run the scheduler: reconcile, fall back, launch, until all jobs finish")
    q.add_argument("--spec", help="only wait for this spec's jobs")
    q.add_argument("--interval", type=float, default=2.0)
    q.add_argument("--forever", action="store_true", help="keep running when nothing is left")
    q.add_argument("--install", action="store_true",
                   help="install 'gwi watch --forever' as a service (systemd user unit, launchd or cron) so "
                        "supervision survives logout and reboot")
    q.add_argument("--dry-run", action="store_true", help="with --install: print what would be written")
    q.set_defaults(fn=cmd_watch)

    q = sub.add_parser("doctor", help="check the state, the profiles, the stores and the cache; --fix repairs "
                                      "what it safely can")
    q.add_argument("--fix", action="store_true",
                   help="move a corrupt state aside and restore its backup, remove stale temp and lock files")
    q.set_defaults(fn=cmd_doctor)

    q = sub.add_parser("instances", help="the machines gwi launched on every platform and the attempt owning each")
    q.add_argument("--stop-orphans", action="store_true", help="terminate those that no live attempt owns")
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_instances)

    q = sub.add_parser("sweep", help="hyperparameter sweeps (kind: sweep in a plan)")
    wsub = q.add_subparsers(dest="sweep_cmd", metavar="SUBCOMMAND")
    wsub.required = True
    q = wsub.add_parser("show", help="a sweep's trials: params, validation MAE, state; and the best")
    q.add_argument("sweep", help="the sweep job (SPEC/JOB or JOB)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_sweep_show)

    q = sub.add_parser("cancel", help="stop a job on its platform (and release the machine)")
    q.add_argument("job").completer = _jobs
    q.set_defaults(fn=cmd_cancel)

    q = sub.add_parser("logs", help="a job's output (latest attempt unless --attempt)")
    q.add_argument("job").completer = _jobs
    q.add_argument("--attempt", type=int)
    q.add_argument("--tail", type=int, help="last N lines")
    q.add_argument("--follow", "-f", action="store_true")
    q.set_defaults(fn=cmd_logs)

    q = sub.add_parser("history", help="every attempt of a job and why it ended")
    q.add_argument("job").completer = _jobs
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_history)


def _kaggle_parsers(sub) -> None:
    q = sub.add_parser("kaggle", help="Kaggle helpers")
    ksub = q.add_subparsers(dest="kcmd", required=True)
    q = ksub.add_parser("package", help="the dataset a Kaggle kernel attaches: gwi wheel(s) + a store mirror of runs")
    q.add_argument("--out", required=True, metavar="DIR")
    q.add_argument("--id", required=True, metavar="OWNER/SLUG", help="the Kaggle dataset id")
    q.add_argument("--run", action="append", default=[], metavar="URL", help="a run whose latest checkpoint to include")
    q.add_argument("--ensemble", action="append", default=[], metavar="URL",
                   help="an ensemble.json to include, with its members' checkpoints")
    q.add_argument("--wheel", metavar="FILE", help="a gwi wheel (default: build one from this source tree)")
    q.add_argument("--with-deps", action="store_true", help="also the dependencies' wheels, for kernels without internet")
    q.add_argument("--title")
    q.set_defaults(fn=cmd_kaggle_package)

    def competition_args(q):
        from .adapters.kaggle_competition import COMPETITION

        q.add_argument("--competition", default=COMPETITION, help=f"the competition's slug (default {COMPETITION})")
        q.add_argument("--platform", default="kaggle", help="the Kaggle profile whose credentials and endpoint to use")

    q = ksub.add_parser("download", help="the competition's data, resumable, then gwi data prep of train and test")
    competition_args(q)
    q.add_argument("--dir", default="~/kaggle", help="where to unzip it: DIR/<competition> (default ~/kaggle)")
    q.add_argument("--out", metavar="STORE_URL", help="store the prepared datasets go to (default: the embedded store)")
    q.add_argument("--name", default="kaggle-train-f16", help="the prepared training set's name (default kaggle-train-f16)")
    q.add_argument("--test-name", default="kaggle-test-f16", help="the prepared test set's name (default kaggle-test-f16)")
    q.add_argument("--overwrite", action="store_true", help="prepare again over datasets of those names")
    q.add_argument("--no-prep", action="store_true", help="download and unzip only")
    q.add_argument("--force", action="store_true", help="download again even if a whole copy is there")
    q.add_argument("--keep-zip", action="store_true", help="keep the archive after unzipping")
    q.set_defaults(fn=cmd_kaggle_download)

    q = ksub.add_parser("submit", help="validate a submission.csv and submit it")
    competition_args(q)
    q.add_argument("file", metavar="FILE")
    q.add_argument("-m", "--message", required=True, help="the submission's description")
    q.add_argument("--test", metavar="DIR", help="the test folder: also check that every oid is there")
    q.set_defaults(fn=cmd_kaggle_submit)

    q = ksub.add_parser("submissions", help="your submissions and their scores")
    competition_args(q)
    q.add_argument("--limit", type=int, default=20)
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_kaggle_submissions)


def main(argv: list[str] | None = None) -> int:
    from . import progress

    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions (gwi completion installs the hook)
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    if args.platforms:  # through the environment, so the scheduler and the jobs it starts see the same profiles
        os.environ["GWI_PLATFORMS"] = os.pathsep.join(
            [str(Path(d).resolve()) for d in args.platforms] + [p for p in [os.environ.get("GWI_PLATFORMS")] if p])
    # launched by the scheduler: beat from the first second, so a slow start is not taken for a stall
    progress.start_process_heartbeat(" ".join(sys.argv[1:3] if argv is None else argv[:2]))
    rc, err = 1, None
    try:
        rc = int(args.fn(args) or 0)
        return rc
    except (GwiError, ValueError, TypeError) as e:
        err = f"{type(e).__name__}: {e}"
        rc = getattr(e, "exit_code", 1)  # 75: the store was unreachable, worth retrying later (not a bug)
        if os.environ.get("GWI_DEBUG"):
            raise
        print(f"gwi: error: {e}", file=sys.stderr)
        return rc
    except KeyboardInterrupt:
        err = "interrupted"
        print("gwi: interrupted", file=sys.stderr)
        rc = 130
        return 130
    except BrokenPipeError:
        # the reader went away (``gwi status | head -1``): stop quietly, as a tool killed by SIGPIPE
        # would; stdout goes to /dev/null so the interpreter's last flush does not fail again
        err, rc = None, 141
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except BaseException as e:
        err = f"{type(e).__name__}: {e}"
        raise
    finally:
        if rc == 0 and err is None:
            progress.end_process_heartbeat("succeeded")
        else:
            progress.end_process_heartbeat("failed", error=err or f"exit status {rc}",
                                           retryable=rc == EXIT_STORE_UNAVAILABLE)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
