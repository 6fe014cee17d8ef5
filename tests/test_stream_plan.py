"""Issue 25's end to end: a plan trains from a dataset 5x its platforms' cache limit (a profile's
``cache_limit``), the training process is SIGKILLed mid-epoch, the job moves to the other platform,
resumes from its checkpoint and finishes having trained on exactly the samples, in exactly the order,
of a run that was never killed (the sample log of each step). And a store outage mid-epoch: the
stream waits it out and the order is unchanged."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path


from gwi.adapters.base import load_profiles
from gwi.config import TrainConfig
from gwi.scheduler import Scheduler
from gwi.spec import load_spec
from gwi.training import train

from .conftest import run_until
from .test_cache import dataset, unit_bytes

SHARD = 4
PROFILE = """adapter: local
capacity: 1
start_timeout_s: 120
cache_limit: "{limit}"
options: {{runtime: process, grace_s: 2}}
"""
PLAN = """name: st
store: {store}
jobs:
  - name: tr
    kind: train
    model: inversionnet
    preset: tiny
    dataset: big
    platforms: [local-a, local-b]
    heartbeat_s: 0.5
    limits: {{stall_s: 60}}
    config: {{epochs: 4, batch_size: 4, fold: 0, folds: 5, checkpoint_every: 3, stream_window: 1, ema: 0,
              sample_log: {log}}}
"""


def big_dataset(store: str, name: str = "big", shards: int = 10) -> tuple[str, int]:
    """(URL, bytes of its largest shard pair): two families, ``shards`` shards of SHARD samples."""
    url = dataset(store, name, shards, shard=SHARD)
    return url, unit_bytes(url)


def kept_steps(log: Path) -> list[str]:
    """The sample log as the run kept it: a step logged twice (run again after a resume) counts once,
    its last time."""
    steps: dict[int, str] = {}
    for line in log.read_text().splitlines():
        steps[int(line.split()[1])] = line
    return [steps[k] for k in sorted(steps)]


def check_epochs(lines: list[str], per_epoch: int, batch: int) -> None:
    """Within each epoch no sample twice, and every step of it there."""
    for epoch in sorted({int(ln.split()[0]) for ln in lines}):
        idx = [i for ln in lines if int(ln.split()[0]) == epoch for i in ln.split()[2:]]
        assert len(idx) == per_epoch * batch and len(set(idx)) == len(idx), (epoch, len(idx), len(set(idx)))


def training_pid(run_url: str) -> int | None:
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            # the python process itself, not the adapter's `sh -c` wrapper around it
            if os.path.basename(cmd[0]).startswith(b"python") and b"train" in cmd and run_url.encode() in cmd:
                return int(p.name)
    return None


def test_a_streamed_plan_killed_mid_epoch_moves_platform_and_keeps_the_sample_order(tmp_path, monkeypatch):
    store = f"file://{tmp_path}/store"
    url, unit = big_dataset(store)
    limit = 2 * unit  # a window of one shard and one arriving: the dataset is 5x the limit
    plat = tmp_path / "platforms"
    plat.mkdir()
    for name in ("local-a", "local-b"):
        (plat / f"{name}.yaml").write_text(PROFILE.format(limit=limit))
    monkeypatch.setenv("GWI_PLATFORMS", str(plat))
    log = tmp_path / "samples.log"
    spec = tmp_path / "st.yaml"
    spec.write_text(PLAN.format(store=store, log=log))
    s = Scheduler(tmp_path / "home", profiles=load_profiles([plat]))
    run_url = f"{store}/runs/st/tr"
    killed = []

    def kill_mid_run():  # SIGKILL at step 12 (mid-epoch: 8 steps an epoch, checkpoints every 3)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            if log.exists() and len(log.read_text().splitlines()) >= 13 and (pid := training_pid(run_url)):
                os.kill(pid, signal.SIGKILL)
                killed.append(len(log.read_text().splitlines()))
            time.sleep(0.01)

    t = threading.Thread(target=kill_mid_run, daemon=True)
    t.start()
    try:
        s.submit(load_spec(spec, profiles=s.profiles))
        run_until(s, lambda: s.state.jobs()[0]["state"] in ("succeeded", "failed"), 300)
        a1, a2 = s.state.attempts("st/tr")
    finally:
        for a in s.state.active_attempts():
            s.adapter(a["platform"]).cancel(json.loads(a["handle"]))
        s.close()
    t.join(timeout=5)
    assert killed and (a1["platform"], a1["exit_code"]) == ("local-a", 137), a1
    assert (a2["platform"], a2["state"]) == ("local-b", "succeeded"), a2
    resumed = a2["resumed_from_step"]
    assert 9 <= resumed < 32 and resumed % 8, resumed  # from a checkpoint inside an epoch
    attempt_log = Path(s.home, "attempts", "st.tr.2", "log").read_text()
    assert "streaming big (" in attempt_log and "through a cache of" in attempt_log, attempt_log[-2000:]

    raw = log.read_text().splitlines()
    assert len(raw) > 32  # the steps between the checkpoint and the kill ran twice
    got = kept_steps(log)
    assert [int(ln.split()[1]) for ln in got] == list(range(32))
    check_epochs(got, per_epoch=8, batch=4)

    # a run that was never killed, with the same settings: the same samples at every step
    straight = tmp_path / "straight.log"
    train(TrainConfig(model="inversionnet", preset="tiny", dataset=url, run=f"{store}/runs/straight", epochs=4,
                      batch_size=4, split="kfold:5:0", checkpoint_every=3, stream_window=1, ema=0, heartbeat_s=0.5,
                      cache_limit=str(limit), sample_log=str(straight)), log=lambda *_: None)
    assert got == straight.read_text().splitlines()


def test_a_store_outage_mid_epoch_is_waited_out_and_the_order_is_unchanged(proxied, tmp_path, monkeypatch):
    bucket, proxy = proxied
    url, unit = big_dataset(bucket, "outage", shards=10)
    monkeypatch.setenv("GWI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GWI_STORE_PATIENCE_S", "60")

    def cfg(run: str, log: Path) -> TrainConfig:
        return TrainConfig(model="inversionnet", preset="tiny", dataset=url, run=f"file://{tmp_path}/{run}", epochs=1,
                           batch_size=4, split="kfold:5:0", stream_window=1, ema=0, heartbeat_s=0.5,
                           cache_limit=str(2 * unit), sample_log=str(log))

    quiet, cut = tmp_path / "quiet.log", tmp_path / "cut.log"
    train(cfg("quiet", quiet), log=lambda *_: None)
    outage = []

    def cut_mid_epoch():  # the store goes away for 3 s once a few steps have run
        while not (cut.exists() and len(cut.read_text().splitlines()) >= 3):
            time.sleep(0.005)
        proxy.set("drop")
        outage.append(time.monotonic())
        time.sleep(3)
        proxy.set("pass")

    t = threading.Thread(target=cut_mid_epoch, daemon=True)
    t.start()
    t0 = time.monotonic()
    m = train(cfg("cut", cut), log=lambda *_: None)
    t.join(timeout=10)
    assert outage and time.monotonic() - t0 > 3  # it waited the outage out
    assert m["steps"] == 8
    assert cut.read_text().splitlines() == quiet.read_text().splitlines()
