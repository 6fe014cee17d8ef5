"""Scheduler benchmark: `gwi status` with 1,000 jobs in the state, and how fast a killed attempt is
replaced.

    .venv/bin/python bench/scheduler.py [--quick]

1. status: a state with 1,000 jobs (their attempts finished, 10 of them still running as real
   processes through the local adapter, each with a heartbeat in the store), then `gwi status` and
   `gwi status --json` as a user runs them: a fresh process each time, wall time, median of N.
   Status only reads the state (a read-only connection, no scheduler lock, no reconcile). Target
   < 0.5 s.
2. replacement: a tiny training job on one local platform with another as its fallback; the
   scheduler runs passes every 2 s as `gwi watch` does. The training process is killed (SIGKILL);
   measured from the kill: the attempt declared failed, its replacement launched on the next
   platform, and the replacement's first heartbeat seen. Target: replacement running within
   2 heartbeat intervals. Repeated for heartbeat_s 20 (the default) and 5.

Prints the machine, then one table; exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_lines, scratch_home  # noqa: E402

from gwi import __version__  # noqa: E402

PROFILE = "adapter: local\ncapacity: 20\nstart_timeout_s: 300\noptions: {runtime: process, grace_s: 2}\n"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_state(work: Path, n_jobs: int, n_running: int) -> dict:
    """A scheduler state with ``n_jobs`` jobs as a busy team's would look after a few weeks."""
    from gwi.adapters.base import LaunchRequest, load_profiles
    from gwi.runs import Run, run_url
    from gwi.scheduler import Scheduler
    from gwi.spec import load_spec
    from gwi.store import split_url

    plat = work / "platforms"
    plat.mkdir()
    (plat / "box.yaml").write_text(PROFILE)
    store = f"file://{work}/store"
    lines = [f"name: many\nstore: {store}\ndefaults: {{platforms: [box]}}\njobs:"]
    for i in range(n_jobs):
        lines.append(f"  - {{name: j{i:04d}, kind: synth, dataset: d{i:04d}, families: [FlatVel_A], samples: 1}}")
    (work / "many.yaml").write_text("\n".join(lines) + "\n")
    s = Scheduler(work / "home", profiles=load_profiles([plat]))
    spec = load_spec(work / "many.yaml", profiles=s.profiles)
    s.submit(spec)
    now = time.time()
    adapter = s.adapter("box")
    procs = []
    with s.state.tx() as st:
        for i, job in enumerate(spec.jobs):
            jid = f"many/{job.name}"
            running = i >= n_jobs - n_running
            state = "running" if running else ("failed" if i % 50 == 0 else "succeeded")
            hb = Run(run_url(store, "many", job.name)).attempt_heartbeat_url(1)
            prog = {"state": state, "epoch": 40 if not running else 12, "epochs": 40, "step": 4000, "total_steps": 13000,
                    "val_mae": 61.5 + i % 7, "eta_s": 1800, "unix_time": now, "beat": 1}
            handle = None
            if running:
                req = LaunchRequest(attempt_id=f"many.{job.name}.1", job=jid, kind="synth", argv=["sleep", "3600"],
                                    env={}, store_url=store, heartbeat_url=hb,
                                    workdir=str(work / "home" / "attempts" / f"many.{job.name}.1"))
                handle = adapter.launch(req)
                procs.append(handle)
                hb_store, key = split_url(hb)
                hb_store.put_bytes(key, json.dumps(prog).encode())
            st.update_job(jid, state="running" if running else state)
            st.insert_attempt(f"many.{job.name}.1", job_id=jid, n=1, platform="box", state=state,
                              handle=json.dumps(handle) if handle else None, heartbeat_url=hb,
                              launched_at=now - 7200, started_at=now - 7100, ended_at=None if running else now - 600,
                              end_reason="" if running else "exited 0", exit_code=None if running else 0,
                              usd_per_hour=0.0, progress=json.dumps(prog), beat_key=f"{now}:1" if running else None,
                              beat_seen_at=now if running else None)
            for k in ("dispatched", "queued", "assigned", "launched", "succeeded"):
                st.event(jid, k, "bench")
    s.close()
    return {"home": work / "home", "platforms": plat, "procs": procs}


def bench_status(work: Path, n_jobs: int, repeats: int) -> list[tuple]:
    log(f"status: building a state with {n_jobs} jobs")
    st = make_state(work, n_jobs, 10)
    env = dict(os.environ, GWI_HOME=str(st["home"]), GWI_PLATFORMS=str(st["platforms"]))
    rows = []
    try:
        for args in (["status"], ["status", "--json"]):
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                r = subprocess.run([sys.executable, "-m", "gwi", *args], env=env, capture_output=True, text=True)
                times.append(time.perf_counter() - t0)
                if r.returncode != 0:
                    raise RuntimeError(r.stderr)
            shown = r.stdout.count("many/") if args == ["status"] else len(json.loads(r.stdout))
            rows.append((f"gwi {' '.join(args)} ({n_jobs} jobs, 10 running)", f"{statistics.median(times):.3f} s",
                         f"min {min(times):.3f} max {max(times):.3f}, {shown} rows", "< 0.5 s",
                         statistics.median(times) < 0.5))
    finally:
        from gwi.adapters.base import load_profiles
        from gwi.adapters.local import LocalAdapter

        a = LocalAdapter(load_profiles([st["platforms"]])["box"])
        for h in st["procs"]:
            a.cancel(h)
    return rows


def bench_replacement(work: Path, heartbeat_s: float, interval: float) -> tuple:
    from gwi.adapters.base import load_profiles
    from gwi.scheduler import Scheduler
    from gwi.spec import load_spec

    root = work / f"hb{heartbeat_s:g}"
    root.mkdir()
    plat = root / "platforms"
    plat.mkdir()
    for n in ("first", "second"):
        (plat / f"{n}.yaml").write_text(PROFILE)
    store = f"file://{work}/store"
    (root / "r.yaml").write_text(f"""name: r
store: {store}
jobs:
  - name: tr{heartbeat_s:g}
    kind: train
    model: inversionnet
    preset: tiny
    dataset: d
    platforms: [first, second]
    heartbeat_s: {heartbeat_s}
    config: {{epochs: 500, batch_size: 4, fold: 0, folds: 4, checkpoint_every: 5}}
""")
    s = Scheduler(root / "home", profiles=load_profiles([plat]))
    s.submit(load_spec(root / "r.yaml", profiles=s.profiles))
    jid = f"r/tr{heartbeat_s:g}"

    def att(n):
        rows = s.state.attempts(jid)
        return rows[n - 1] if len(rows) >= n else None

    def wait(cond, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            s.reconcile()
            if cond():
                return True
            time.sleep(interval)
        raise RuntimeError(f"timed out waiting ({timeout} s)")

    try:
        wait(lambda: att(1) and att(1)["progress"] and json.loads(att(1)["progress"]).get("step", 0) >= 10, 300)
        pid = json.loads(att(1)["progress"])["pid"]
        t_kill = time.time()
        os.kill(pid, signal.SIGKILL)
        t_fail = t_launch = t_run = None
        end = time.monotonic() + 20 * heartbeat_s + 60
        while time.monotonic() < end and t_run is None:
            s.reconcile()
            a1, a2 = att(1), att(2)
            if t_fail is None and a1["ended_at"]:
                t_fail = a1["ended_at"]
            if a2 is not None and t_launch is None and a2["handle"]:
                t_launch = time.time()
            if a2 is not None and a2["state"] == "running":
                t_run = a2["started_at"]
            time.sleep(interval)
        resumed = att(2)["resumed_from_step"] if att(2) else None
    finally:
        for a in s.state.attempts(jid):
            if a["state"] in ("pending", "running") and a["handle"]:
                s.adapter(a["platform"]).cancel(json.loads(a["handle"]))
        s.close()
    target = 2 * heartbeat_s
    took = None if t_run is None else t_run - t_kill
    detail = (f"failed after {t_fail - t_kill:.1f} s, relaunched after {t_launch - t_kill:.1f} s, "
              f"resumed from step {resumed}") if t_fail and t_launch else "no replacement"
    return (f"kill -> replacement running (heartbeat {heartbeat_s:g} s, passes every {interval:g} s)",
            "-" if took is None else f"{took:.1f} s", detail, f"<= {target:g} s", took is not None and took <= target)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, heartbeat 5 s only")
    args = ap.parse_args(argv)
    import torch

    print("\n".join(machine_lines([__file__, *argv], f"torch {torch.__version__}  gwi {__version__}")))
    print(flush=True)
    rows = []
    with scratch_home("gwi-bench-sched-") as work:
        rows += bench_status(work, 1000, 3 if args.quick else 7)
        from gwi.data.synth import synthesize

        log("replacement: synthesising a small dataset")
        synthesize(["FlatVel_A"], 16, f"file://{work}/store", "d", seed=3, batch_size=16, progress=False, backend="deepwave")
        for hb in ([5.0] if args.quick else [20.0, 5.0]):
            log(f"replacement: heartbeat {hb:g} s")
            rows.append(bench_replacement(work, hb, 2.0))
    head = ("measure", "result", "detail", "target", "pass")
    body = [(r[0], r[1], r[2], r[3], "yes" if r[4] else "NO") for r in rows]
    w = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
    print(" | ".join(h.ljust(w[i]) for i, h in enumerate(head)))
    print("-+-".join("-" * x for x in w))
    for b in body:
        print(" | ".join(str(c).ljust(w[i]) for i, c in enumerate(b)))
    return 0 if all(r[4] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
