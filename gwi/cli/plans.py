"""Plans and the scheduler that runs them: ``gwi dispatch`` (with ``--dry-run``'s report), ``watch``,
``cancel``, ``exec`` (a command as a job) and ``sweep show``."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..console import clock, platform_table, status_table, table
from ..errors import GwiError
from .views import complete_job


def cmd_dispatch(a) -> int:
    if a.dry_run:
        return _dry_run(a.spec)
    from ..scheduler import Scheduler
    from ..spec import load_spec

    s = Scheduler()
    spec = load_spec(a.spec, profiles=s.profiles)
    for line in s.submit(spec):
        print(f"{spec.name}/{line}")
    if a.follow:
        return _follow(s, spec.name, a.interval)
    s.reconcile()
    print()
    print(status_table(s.status_records(spec.name)))
    print("\nfollow with: gwi watch   (gwi status --watch shows progress; logs: gwi logs JOB)")
    return 0


def _dry_run(path: str) -> int:
    """The plan: every job in order, where it would go first and why, its fallbacks, its command and
    outputs; then the platforms that will be skipped (missing credentials, ...) and the problems (a
    store that does not answer, a job no platform can take), exiting 1 when there are problems.
    Reads the state and changes nothing; needs no credentials to show the plan."""
    import shlex

    from .. import kinds
    from ..runs import Run, run_url
    from ..scheduler import open_view
    from ..scheduler.policy import fallback_order
    from ..spec import load_spec, store_problem

    v = open_view()
    try:
        spec = load_spec(path, profiles=v.profiles, check_store=False)
        print(f"plan for {spec.name} ({path}): {len(spec.jobs)} job(s), store {spec.store}\n")
        rows, problems, skipped = [], [], {}
        store_issue = store_problem(spec.store)
        for job in spec.jobs:
            jid = f"{spec.name}/{job.name}"
            known = v.state.job(jid)
            if known is not None and known["state"] in ("succeeded", "running"):
                rows.append([job.name, job.kind, ",".join(job.after) or "-", "-", f"already {known['state']}", ""])
                continue
            if kinds.get(job.kind).controller:  # run by the scheduler itself; the jobs it adds go to the platforms
                rows.append([job.name, job.kind, ",".join(job.after) or "-", "scheduler",
                             kinds.get(job.kind).summary(job.params), " > ".join(job.platforms)])
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
        print(table(rows, ["job", "kind", "after", "first", "why", "then (fallback order)"]))
        print("\ncommands (the same on every platform) and outputs:")
        for job in spec.jobs:
            print(f"  {job.name}: {shlex.join(job.argv) if job.argv else '(run by the scheduler)'}")
            for key, url in job.outputs.items():
                print(f"      {key}: {url}")
            added = kinds.get(job.kind).preview(job.params, Run(run_url(spec.store, spec.name, job.name)), job.heartbeat_s)
            if added:
                print("      the jobs it adds first (the later rounds likewise):")
            for name, argv in added:
                print(f"      {job.name}-{name}: {shlex.join(argv)}")
        if spec.deadline is not None:
            print()
            print(_deadline_text(v, spec))
        print()
        print(platform_table(v))
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


def add_dispatch(sub) -> None:
    q = sub.add_parser("dispatch", help="validate a job spec and launch its jobs (idempotent)")
    q.add_argument("spec", help="a job spec, e.g. jobs/demo.yaml")
    q.add_argument("--dry-run", action="store_true", help="print the plan: where each job goes first, why, and its fallbacks")
    q.add_argument("--follow", action="store_true", help="stay and run the scheduler until every job has finished")
    q.add_argument("--interval", type=float, default=2.0, help="seconds between scheduler passes (default 2)")
    q.set_defaults(fn=cmd_dispatch)


def cmd_watch(a) -> int:
    if a.install:
        from ..scheduler import gwi_home
        from ..service import install

        print(install(gwi_home(), dry_run=a.dry_run))
        return 0
    from ..scheduler import Scheduler

    return _follow(Scheduler(), a.spec, a.interval, forever=a.forever)


def _follow(s, spec: str | None, interval: float, forever: bool = False) -> int:
    """Reconcile and print events until every job (of ``spec``) has finished."""
    import time

    last, swept = s.state.last_event_id(), time.monotonic()
    try:
        while True:
            s.reconcile()  # waits while another watcher holds the lock, then acts on what it left
            last = _print_events(s, last, spec)
            if not forever and s.state.unfinished(spec) == 0:
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
    print(status_table(recs))
    outputs = [(j["id"], k, v) for j in s.state.jobs(spec) if j["state"] == "succeeded"
               for k, v in s.job_def(j).outputs.items() if k != "run" and j["kind"] != "synth"]
    if outputs:
        print("\noutputs:")
        for jid, k, v in outputs:
            print(f"  {jid:<28} {k:<12} {v}")
    bad = [r for r in recs if r["state"] != "succeeded"]
    return 1 if bad else 0


def _print_events(s, after: int, spec: str | None = None) -> int:
    for e in s.state.events(after_id=after):
        if spec and not e["job_id"].startswith(spec + "/"):
            after = e["id"]
            continue
        print(f"{clock(e['time'])}  {e['job_id']:<28} {e['kind']:<10} {e['message']}", flush=True)
        after = e["id"]
    return after


def _sweep(s) -> None:
    """Stop machines still running for attempts that ended (the service's hourly safety net)."""
    import time

    from ..scheduler.instances import sweep

    try:
        sweep(s, log=lambda m: print(f"{clock(time.time())}  sweep: {m}", flush=True))
    except Exception as e:  # noqa: BLE001 - the watch goes on; the next sweep tries again
        print(f"gwi: sweep of orphaned machines failed: {type(e).__name__}: {e}", file=sys.stderr)


def add_watch(sub) -> None:
    q = sub.add_parser("watch", help="run the scheduler: reconcile, fall back, launch, until all jobs finish")
    q.add_argument("--spec", help="only wait for this spec's jobs")
    q.add_argument("--interval", type=float, default=2.0)
    q.add_argument("--forever", action="store_true", help="keep running when nothing is left")
    q.add_argument("--install", action="store_true",
                   help="install 'gwi watch --forever' as a service (systemd user unit, launchd or cron) so "
                        "supervision survives logout and reboot")
    q.add_argument("--dry-run", action="store_true", help="with --install: print what would be written")
    q.set_defaults(fn=cmd_watch)


def cmd_cancel(a) -> int:
    from ..scheduler import Scheduler

    s = Scheduler()
    print(s.cancel(s.resolve(a.job)))
    return 0


def add_cancel(sub) -> None:
    q = sub.add_parser("cancel", help="stop a job on its platform (and release the machine)")
    q.add_argument("job").completer = complete_job
    q.set_defaults(fn=cmd_cancel)


def cmd_exec(a) -> int:
    """Run a command as a job (kind ``run``): beat for it, pass SIGTERM on, exit with its status."""
    import signal
    import subprocess

    from .. import progress

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


def add_exec(sub) -> None:
    q = sub.add_parser("exec", help="run any command as a job: heartbeats for it, SIGTERM passed on (kind: run)")
    q.add_argument("--run", metavar="URL", help="the job's run folder, given to the command as $GWI_RUN")
    q.add_argument("--store", metavar="URL", help="the plan's store, given to the command as $GWI_STORE")
    q.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    q.set_defaults(fn=cmd_exec)


def cmd_sweep_show(a) -> int:
    """A sweep's trials (params, validation MAE, state) and the best; reads the study, no lock."""
    from ..scheduler import open_view
    from ..scheduler.sweeps import show

    v = open_view()
    try:
        jid = v.resolve(a.sweep)
        row = v.state.job(jid)
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
    print(table(rows, ["trial", "state", "val MAE m/s", "validations"] + keys) if rows else "no trials yet")
    if r["best"]:
        b = r["best"]
        print(f"\nbest: t{b['trial']} ({b['job']}), val MAE {b['value']:.1f} m/s: "
              + ", ".join(f"{k}={_num(v)}" for k, v in b["params"].items()))
    return 0


def _num(v) -> str:
    return "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)


def add_sweep(sub) -> None:
    q = sub.add_parser("sweep", help="hyperparameter sweeps (kind: sweep in a plan)")
    wsub = q.add_subparsers(dest="sweep_cmd", metavar="SUBCOMMAND")
    wsub.required = True
    q = wsub.add_parser("show", help="a sweep's trials: params, validation MAE, state; and the best")
    q.add_argument("sweep", help="the sweep job (SPEC/JOB or JOB)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_sweep_show)


COMMANDS = {"dispatch": add_dispatch, "watch": add_watch, "cancel": add_cancel, "exec": add_exec,
            "sweep": add_sweep}
