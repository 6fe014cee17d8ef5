"""The scheduler's state, read: ``gwi status``, ``history``, ``logs``, ``platforms``, ``instances`` and
the ``dashboard``. All but ``logs`` read through ``open_view`` (read-only, no lock); ``logs`` asks the
platform through the ``Scheduler`` and, with ``--follow``, reconciles between reads."""

from __future__ import annotations

import json
import sys

from ..console import clock, duration, platform_table, status_table, table
from ..errors import GwiError


def complete_job(prefix: str, **_) -> list[str]:
    """Completions for a job argument: the jobs this state knows, as SPEC/JOB."""
    from ..scheduler import open_view

    v = open_view()
    try:
        return [j["id"] for j in v.state.jobs() if j["id"].startswith(prefix)]
    finally:
        v.close()


def cmd_status(a) -> int:
    """Reads the state (read-only, no lock): it never reconciles, so it shows what the last scheduler
    pass recorded while a dispatcher or watcher goes on beside it."""
    import time

    from ..scheduler import open_view

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
        from ..console import color_enabled

        # a terminal gets a view redrawn in place; a pipe or file one snapshot after another
        top = "\033[2J\033[H" if color_enabled() else "\n" if shown else ""
        print(top + time.strftime("%H:%M:%S ") + "gwi status (Ctrl-C to stop)\n\n" + out, flush=True)
        shown = True
        try:
            time.sleep(a.interval)
        except KeyboardInterrupt:
            return 0


def _status_text(v, a) -> str:
    if a.job:
        return _job_detail(v, v.resolve(a.job), a.json)
    recs = v.status_records()
    if a.json:
        return json.dumps(recs, indent=1)
    from ..paths import gwi_home, home_origin

    where = f"\nstate: {gwi_home()} ({home_origin()})"
    if not recs:
        return "no jobs yet: gwi dispatch jobs/demo.yaml" + where
    return status_table(recs) + "\n\n" + platform_table(v) + _scheduler_note(v) + where


def _scheduler_note(v, stale_s: float = 60.0) -> str:
    """A line when jobs are unfinished and no scheduler pass ran lately: status only reads, so nothing
    moves on until a watcher runs."""
    import time

    if not v.state.unfinished():
        return ""
    last = v.state.last_reconcile()
    if last is not None and time.time() - last <= stale_s:
        return ""
    when = "yet" if last is None else f"for {duration(time.time() - last)}"
    return f"\n\nno scheduler pass {when}: jobs move on while gwi watch (or gwi dispatch --follow) runs"


def _job_detail(v, jid: str, as_json: bool) -> str:
    j = v.state.job(jid)
    atts = [dict(a) for a in v.state.attempts(jid)]
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


def add_status(sub) -> None:
    q = sub.add_parser("status", help="which platform runs what: state, epoch, val MAE, ETA, heartbeat, cost")
    q.add_argument("job", nargs="?", help="one job (SPEC/JOB or JOB): its attempts and outputs").completer = complete_job
    q.add_argument("--json", action="store_true")
    q.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    q.add_argument("--interval", type=float, default=2.0)
    q.set_defaults(fn=cmd_status)


def cmd_history(a) -> int:
    """Reads the state (read-only, no lock)."""
    from ..scheduler import open_view

    v = open_view()
    try:
        jid = v.resolve(a.job)
        if a.json:
            attempts = [{k: a_[k] for k in a_.keys() if k not in ("handle", "cleanup")} | {"hours": v.attempt_hours(a_)}
                        for a_ in v.state.attempts(jid)]
            for a_ in attempts:
                a_["progress"] = json.loads(a_["progress"]) if a_.get("progress") else None
            print(json.dumps({"job": jid, "attempts": attempts, "events": [dict(e) for e in v.state.events(jid)]},
                             indent=1, default=str))
            return 0
        print(_history_table(v, jid))
        print()
        for e in v.state.events(jid):
            print(f"{clock(e['time'])}  {e['kind']:<10} {e['message']}")
    finally:
        v.close()
    return 0


def _history_table(v, jid: str) -> str:
    rows = []
    for a in v.state.attempts(jid):
        hours = v.attempt_hours(a)
        rows.append([a["n"], a["platform"], a["state"], clock(a["launched_at"]), clock(a["ended_at"]),
                     duration(hours * 3600), a["resumed_from_step"] if a["resumed_from_step"] is not None else "-",
                     "-" if a["exit_code"] is None else a["exit_code"], f"${hours * a['usd_per_hour']:.2f}",
                     (a["end_reason"] or a["last_error"] or "")[:90]])
    return table(rows, ["try", "platform", "state", "launched", "ended", "ran", "from step", "exit", "cost", "why it ended"]) \
        if rows else "no attempts yet"


def add_history(sub) -> None:
    q = sub.add_parser("history", help="every attempt of a job and why it ended")
    q.add_argument("job").completer = complete_job
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_history)


def cmd_logs(a) -> int:
    import time

    from ..scheduler import ACTIVE, Scheduler

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


def add_logs(sub) -> None:
    q = sub.add_parser("logs", help="a job's output (latest attempt unless --attempt)")
    q.add_argument("job").completer = complete_job
    q.add_argument("--attempt", type=int)
    q.add_argument("--tail", type=int, help="last N lines")
    q.add_argument("--follow", "-f", action="store_true")
    q.set_defaults(fn=cmd_logs)


def cmd_platforms(a) -> int:
    from ..adapters.base import secret_routes, store_routes, trust_profile
    from ..scheduler import open_view

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
        print(platform_table(v, credentials=True))
        routes = [[plat, var, dest, src] for plat, var, dest, src in secret_routes(v.profiles) + store_routes()]
        if routes:
            print("\nwhere each secret goes (AWS_* are the store's credentials)\n")
            print(table(routes, ["platform", "variable", "sent to", "profile"]))
    finally:
        v.close()
    return 0


def add_platforms(sub) -> None:
    q = sub.add_parser("platforms", help="the platform profiles: adapter, GPU, slots, quota used, price, "
                                         "credentials and where each secret goes")
    q.add_argument("--trust", action="append", default=[], metavar="FILE",
                   help="trust a project's profile that sends secrets somewhere the package's profiles do not "
                        "(recorded with its sha256: an edit needs trusting again)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_platforms)


def cmd_instances(a) -> int:
    from ..scheduler import open_view
    from ..scheduler.instances import command

    v = open_view()
    try:
        return command(v, stop=a.stop_orphans, as_json=a.json)
    finally:
        v.close()


def add_instances(sub) -> None:
    q = sub.add_parser("instances", help="the machines gwi launched on every platform and the attempt owning each")
    q.add_argument("--stop-orphans", action="store_true", help="terminate those that no live attempt owns")
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_instances)


def cmd_dashboard(a) -> int:
    from ..dashboard import serve

    if a.refresh <= 0:
        raise GwiError(f"dashboard: --refresh: expected seconds > 0, got {a.refresh:g}")
    return serve(a.host, a.port, a.refresh)


def add_dashboard(sub) -> None:
    q = sub.add_parser("dashboard", help="the state as a local web page (plans, jobs, attempts, platforms, curves), "
                                         "refreshing itself")
    q.add_argument("--port", type=int, default=8765, help="port (0: a free one; default 8765)")
    q.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    q.add_argument("--refresh", type=float, default=5.0, metavar="S", help="seconds between the page's refreshes")
    q.set_defaults(fn=cmd_dashboard)


COMMANDS = {"status": add_status, "history": add_history, "logs": add_logs, "platforms": add_platforms,
            "instances": add_instances, "dashboard": add_dashboard}
