"""gwi doctor: the state, the profiles, the stores and the cache checked, and what is safe repaired."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from gwi.doctor import check_cache, check_profiles, check_state, check_stores, doctor
from gwi.scheduler import Scheduler
from gwi.scheduler.state import StateDB, backup_path


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def state_with(home, marker: str, backup: bool = True) -> None:
    s = Scheduler(home, profiles={})
    s.state.save_spec("p", "p.yaml", "0" * 64, f"file://{home}/store", 1.0)
    s.state.set_meta("marker", marker)
    if backup:
        s.reconcile()
    s.close()


def test_a_healthy_state_and_its_backup_are_reported(tmp_path):
    home = tmp_path / "home"
    state_with(home, "x")
    found = check_state(home, fix=False)
    assert [f.ok for f in found] == [True, True, True]
    assert found[0].message.endswith("readable, integrity ok") and "holds the whole state" in found[1].message
    assert "backup from" in found[2].message


def test_fix_moves_a_corrupt_state_aside_and_restores_the_backup(tmp_path):
    home = tmp_path / "home"
    state_with(home, "backed up")
    s = StateDB.open(home / "state.db")
    s.set_meta("marker", "newer")  # recorded after the backup: lost by the restore
    s.close()
    (home / "state.db").write_bytes(b"garbage" * 1000)
    found = check_state(home, fix=False)
    assert not found[0].ok and not found[0].fixed and "file is not a database" in found[0].message
    found = check_state(home, fix=True)
    assert found[0].fixed and "restored the backup" in found[0].message and "is lost" in found[0].message
    aside = list(home.glob("state.db.corrupt-*"))
    assert [p.read_bytes()[:7] for p in aside if not p.name.endswith(("-wal", "-shm"))] == [b"garbage"]
    s = StateDB.open(home / "state.db")
    assert s.meta("marker") == "backed up"
    s.close()
    assert check_state(home, fix=False)[0].ok


def test_fix_without_a_backup_starts_empty_and_says_what_was_lost(tmp_path):
    home = tmp_path / "home"
    state_with(home, "x", backup=False)
    backup_path(home / "state.db").unlink(missing_ok=True)
    (home / "state.db").write_bytes(b"\0" * 100)
    (f,) = check_state(home, fix=True)
    assert f.fixed and "started an empty state" in f.message and "every job and attempt recorded there is lost" in f.message
    s = StateDB.open(home / "state.db")
    assert s.jobs() == []
    s.close()


def test_nothing_is_repaired_while_a_scheduler_runs(tmp_path):
    home = tmp_path / "home"
    state_with(home, "x")
    s = Scheduler(home, profiles={})
    with s.lock():
        (home / "state.db").write_bytes(b"garbage" * 1000)
        (f,) = check_state(home, fix=True)
    s.close()
    assert not f.fixed and f"a gwi scheduler (pid {os.getpid()}) is running" in f.message


def test_profiles_each_loaded_and_a_broken_one_named(tmp_path, monkeypatch):
    plat = tmp_path / "plat"
    plat.mkdir()
    (plat / "good.yaml").write_text("adapter: local\n")
    (plat / "bad.yaml").write_text("adapter: local\ncapacity: lots\n")
    monkeypatch.setenv("GWI_PLATFORMS", str(plat))
    found = {f.message.split(":")[0]: f for f in check_profiles() if str(plat) in f.message}
    assert found[str(plat / "good.yaml")].ok
    bad = found[str(plat / "bad.yaml")]
    assert not bad.ok and "capacity" in bad.message


def test_stores_of_known_plans_reachable_or_not_without_waiting(tmp_path, monkeypatch):
    import socket

    import gwi.store

    home = tmp_path / "home"
    state_with(home, "x")
    s = StateDB.open(home / "state.db")
    s.save_spec("q", "q.yaml", "0" * 64, "s3://hung-bucket", 1.0)
    s.close()
    with socket.socket() as srv:  # accepts, never answers: a hung endpoint
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{srv.getsockname()[1]}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setattr(gwi.store, "_CLIENTS", {})
        t0 = time.monotonic()
        found = {f.message.split(": ")[0]: f for f in check_stores(home, timeout_s=1.0)}
        assert time.monotonic() - t0 < 3
    assert found[f"file://{home}/store"].ok
    hung = found["s3://hung-bucket"]
    assert not hung.ok and "no answer within 1 s" in hung.message


def test_cache_strays_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    cache = tmp_path / "cache"
    d = cache / "datasets" / "abc"
    d.mkdir(parents=True)
    gone = dead_pid()
    stray = d / f".shard-0.npy.{gone}.0123abcd.download"
    live = d / f".shard-1.npy.{os.getpid()}.89abcdef.download"
    old = d / "shard-2.npy.partial"
    lock = cache / "datasets" / "abc.lock"
    for p in (stray, live, old):
        p.write_bytes(b"x")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    lock.write_text(str(gone))
    keep = d / "shard-3.npy"
    keep.write_bytes(b"done")
    found = check_cache(cache, fix=False)
    assert sorted(f.message.split(":")[0] for f in found) == sorted(map(str, (stray, old, lock)))
    assert not any(f.ok or f.fixed for f in found)
    found = check_cache(cache, fix=True)
    assert all(f.fixed for f in found) and all(f.message.endswith("; removed") for f in found)
    assert not stray.exists() and not old.exists() and not lock.exists()
    assert live.exists() and keep.exists()
    assert check_cache(cache, fix=False)[0].ok


def test_doctor_runs_every_check(tmp_path, monkeypatch):
    home = tmp_path / "home"
    state_with(home, "x")
    areas = {f.area for f in doctor(home, fix=False, cache=tmp_path / "nocache", store_timeout_s=2)}
    assert areas == {"state", "profiles", "store", "cache"}
