"""Sweeps: the scheduler drives an Optuna study, one train job per trial.

Each reconcile pass, for each sweep job (``kind: sweep``):

1. every trial still running in the study is looked at through its train job: a validation it has
   reported since the last pass (the heartbeat's ``validations`` count and ``val_mae``) goes to the
   study as an intermediate value; when the pruner says stop, the train job is cancelled on its
   platform and the trial is pruned; a job that ended gives the trial its value (the final
   validation MAE) or fails it;
2. while fewer than ``parallel`` trials run and fewer than ``trials`` were asked, a new trial is
   asked and started as the train job ``<sweep>-t<N>``: queued, it is placed, retried and resumed
   like any other job;
3. when every trial has ended, the sweep job succeeds with the best trial in its reason.

The study lives beside the scheduler's state (``$GWI_HOME/sweeps/<spec>.<job>.journal``, Optuna's
journal file: no database server, safe to append from one process). Optuna is imported here only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..runs import Run, run_url
from ..spec import Job
from . import policy
from .lifecycle import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED

SWEEPS = "sweeps"
MIN_RESOURCE = 3  # validations before a trial can be pruned (a time-budgeted trial validates ~10 times)


def is_child(name: str, sweep: str) -> bool:
    """Whether ``name`` is a trial's train job of the sweep ``sweep`` (``<sweep>-t<N>``)."""
    return name.startswith(f"{sweep}-t") and name[len(sweep) + 2:].isdigit()


def hours(job: Job) -> tuple[float, bool, bool]:
    """(hours the sweep takes: its trials, ``parallel`` at a time; shrinkable (never: a sweep is not
    shrunk); a guess)."""
    tb = job.params["config"].get("time_budget") or 0.0
    sized = 0 < tb < math.inf
    rounds = math.ceil(job.params["trials"] / job.params["parallel"])
    return rounds * (tb / 3600 if sized else policy.GUESS_HOURS["train"]), False, not sized


def study_path(home: Path, job_id: str) -> Path:
    return Path(home) / SWEEPS / (job_id.replace("/", ".") + ".journal")


def open_study(home: Path, job_id: str, params: dict, create: bool = True):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = study_path(home, job_id)
    if not create and not path.exists():
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(path)))
    # the first rung at the third validation: the first ones fall in the warm-up, where a good lr can
    # score worse than a useless one (measured: a trial with lr 3e-3 pruned at validation 1 by one
    # with lr 1e-6 that never learned)
    pruner = {"halving": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=MIN_RESOURCE, reduction_factor=2),
              "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=MIN_RESOURCE, reduction_factor=2),
              "none": optuna.pruners.NopPruner}[params.get("pruner", "halving")]()
    return optuna.create_study(study_name=job_id, storage=storage, direction="minimize", load_if_exists=True,
                               sampler=optuna.samplers.TPESampler(seed=params.get("seed", 0)), pruner=pruner)


def suggest(trial, space: dict) -> dict:
    """The trial's settings drawn from ``space`` (see gwi.kinds.sweep)."""
    out = {}
    for key, spec in space.items():
        (how, arg), = spec.items()
        if how == "choice":
            out[key] = trial.suggest_categorical(key, arg)
        elif how == "int":
            out[key] = trial.suggest_int(key, arg[0], arg[1])
        else:
            out[key] = trial.suggest_float(key, float(arg[0]), float(arg[1]), log=how == "log_uniform")
    return out


def trial_job(sweep: Job, spec: str, store: str, number: int, drawn: dict) -> Job:
    """The train job of trial ``number``: the sweep's model, dataset and config with ``drawn`` over them."""
    from .. import kinds

    p = sweep.params
    name = f"{sweep.name}-t{number}"
    model, preset = drawn.get("model", p["model"]), drawn.get("preset", p["preset"])
    config = {**p["config"], **{k: v for k, v in drawn.items() if k not in ("model", "preset")}}
    params = {"model": model, "preset": preset, "dataset": p["dataset"], "config": config}
    train = kinds.get("train")
    run = Run(run_url(store, spec, name))
    return Job(name=name, kind="train", platforms=list(sweep.platforms), after=[], resources=sweep.resources,
               limits=sweep.limits, heartbeat_s=sweep.heartbeat_s, params=params, line=sweep.line,
               argv=train.argv(params, run, sweep.heartbeat_s), outputs=train.outputs(params, run),
               priority=sweep.priority)


def advance(s, row) -> None:
    """One pass of a sweep job (``s``: the Scheduler, holding its lock)."""
    import optuna
    from optuna.trial import TrialState

    sweep = s.job_def(row)
    p = sweep.params
    study = open_study(s.home, row["id"], p)
    now = s.clock()
    if row["state"] == QUEUED:
        with s.state.tx() as st:
            st.update_job(row["id"], state=RUNNING, reason=f"sweep: 0/{p['trials']} trials", updated_at=now)
            st.event(row["id"], "sweep", f"started: {p['trials']} trials, {p['parallel']} at a time, "
                                         f"pruner {p['pruner']}; study {study_path(s.home, row['id'])}")
    latest = s.state.latest_attempts()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        jid = t.user_attrs.get("job")
        jr = s.state.job(jid) if jid else None
        a = latest.get(jid)
        prog = json.loads(a["progress"]) if a is not None and a["progress"] else {}
        if jr is None or jr["state"] in (FAILED, CANCELLED):
            study.tell(t.number, state=TrialState.FAIL)
            s.state.event(row["id"], "trial", f"t{t.number}: {jr['state'] if jr else 'no job'} ({jr['reason'] if jr else ''})")
        elif jr["state"] == SUCCEEDED:
            value = prog.get("val_mae")
            if value is None:
                study.tell(t.number, state=TrialState.FAIL)
                s.state.event(row["id"], "trial", f"t{t.number}: succeeded without a validation MAE")
            else:
                study.tell(t.number, float(value))
                s.state.event(row["id"], "trial", f"t{t.number}: val MAE {value:.1f} m/s ({_params(t.params)})")
        else:
            n, mae = prog.get("validations"), prog.get("val_mae")
            if n and mae is not None and n not in t.intermediate_values:
                trial = optuna.trial.Trial(study, t._trial_id)
                trial.report(float(mae), int(n))
                if trial.should_prune():
                    s.cancel(jid, reason=f"pruned by sweep {sweep.name}: val MAE {mae:.1f} m/s at validation {n}")
                    study.tell(t.number, state=TrialState.PRUNED)
                    s.state.event(row["id"], "trial", f"t{t.number}: pruned at validation {n} (val MAE {mae:.1f})")
    trials = study.get_trials(deepcopy=False)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    asked = len(trials)
    while running < p["parallel"] and asked < p["trials"]:
        trial = study.ask()
        job = trial_job(sweep, row["spec"], s.state.spec_store(row["spec"]), trial.number, suggest(trial, p["space"]))
        jid = f"{row['spec']}/{job.name}"
        trial.set_user_attr("job", jid)
        with s.state.tx() as st:
            st.insert_job(jid, row["spec"], job.name, "train", row["position"], json.dumps(job.to_dict(), sort_keys=True),
                          QUEUED, s.clock())
            st.event(jid, "dispatched", f"trial {trial.number} of sweep {sweep.name}: {_params(trial.params)}")
        running += 1
        asked += 1
    _finish_or_note(s, row, study, p)


def _finish_or_note(s, row, study, p: dict) -> None:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state != TrialState.RUNNING]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value) if complete else None
    best_text = f"best t{best.number}: val MAE {best.value:.1f} m/s ({_params(best.params)})" if best else "no trial complete yet"
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    now = s.clock()
    if len(done) >= p["trials"]:
        state = SUCCEEDED if best else FAILED
        why = f"{len(done)} trials ({pruned} pruned); {best_text}" if best else f"no trial completed ({len(done)} ended)"
        with s.state.tx() as st:
            st.update_job(row["id"], state=state, reason=why[:500], updated_at=now, finished_at=now)
            st.event(row["id"], "sweep", why)
        return
    why = f"sweep: {len(done)}/{p['trials']} trials ended, {len(trials) - len(done)} running, {pruned} pruned; {best_text}"
    if s.state.job(row["id"])["reason"] != why[:500]:
        s.state.update_job(row["id"], reason=why[:500], updated_at=now)


def _params(params: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def show(home: Path, job_id: str, job: Job | None) -> dict:
    """The study of a sweep job as plain data: its trials (number, state, params, value, the job) and
    the best. None of it needs the scheduler's lock."""
    from optuna.trial import TrialState

    study = open_study(home, job_id, job.params if job else {}, create=False)
    if study is None:
        return {"sweep": job_id, "trials": [], "best": None}
    trials = [{"trial": t.number, "state": t.state.name.lower(), "params": t.params, "value": t.value,
               # the last validation the scheduler saw: a fast trial can validate twice between two passes
               "validations": max(t.intermediate_values, default=0), "job": t.user_attrs.get("job"),
               "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
               if t.datetime_complete and t.datetime_start else None}
              for t in study.get_trials(deepcopy=False)]
    complete = [t for t in trials if t["state"] == TrialState.COMPLETE.name.lower()]
    return {"sweep": job_id, "trials": trials, "best": min(complete, key=lambda t: t["value"]) if complete else None}
