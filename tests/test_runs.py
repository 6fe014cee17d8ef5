"""gwi.runs.Run: checkpoints published atomically (blob, then pointer), verified on load with fallback
to the pointer's history, pruned to ``keep``; load_model from a run URL or a .pt file/URL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gwi.errors import GwiError
from gwi.models import registry
from gwi.runs import LATEST, Run, load_model


def ckpt(step: int, **kw) -> dict:
    return {"epoch": step // 2, "step": step, "w": torch.arange(4.0) * step, **kw}


def quiet(*_):
    pass


def scratch_left(tmp_path: Path) -> list[str]:
    root = tmp_path / "gwi-cache" / "scratch"  # GWI_CACHE, set per test by conftest
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_publish_then_load_round_trips_and_leaves_no_scratch(tmp_path):
    run = Run(f"file://{tmp_path}/r/")
    assert run.url == f"file://{tmp_path}/r" and run.pointer() is None and run.latest_step() is None
    assert run.load_latest(quiet) == (None, None)
    entry = run.publish_checkpoint(ckpt(2), 2, keep=3)
    blob = tmp_path / "r" / entry["path"]
    assert entry["path"] == Run.checkpoint_key(2) and entry["step"] == 2 and entry["epoch"] == 1
    assert entry["bytes"] == blob.stat().st_size and len(entry["sha256"]) == 64 and entry["rank"] == 0
    assert run.pointer() == {"latest": entry, "history": []} and run.latest_step() == 2
    got, got_entry = run.load_latest(quiet)
    assert got_entry == entry and got["step"] == 2 and torch.equal(got["w"], ckpt(2)["w"])
    assert scratch_left(tmp_path) == []


def test_pointer_keeps_history_and_prunes_beyond_keep(tmp_path):
    run = Run(f"file://{tmp_path}/r")
    for step in (1, 2, 3, 4):
        run.publish_checkpoint(ckpt(step), step, keep=2)
    ptr = json.loads((tmp_path / "r" / LATEST).read_text())
    assert ptr["latest"]["step"] == 4 and [h["step"] for h in ptr["history"]] == [3]
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").glob("*.pt")) == ["step-3.pt", "step-4.pt"]
    # publishing a step again (a resumed run) replaces its entry rather than listing it twice
    run.publish_checkpoint(ckpt(4), 4, keep=3)
    ptr = run.pointer()
    assert ptr["latest"]["step"] == 4 and [h["step"] for h in ptr["history"]] == [3]


def test_a_corrupt_or_missing_latest_falls_back_to_the_previous(tmp_path):
    run = Run(f"file://{tmp_path}/r")
    for step in (2, 4, 6):
        run.publish_checkpoint(ckpt(step), step, keep=3)
    ckdir = tmp_path / "r" / "checkpoints"
    (ckdir / "step-6.pt").unlink()
    latest = ckdir / "step-4.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    logs = []
    got, entry = run.load_latest(logs.append)
    assert entry["step"] == 2 and got["step"] == 2
    assert any("step-6.pt is missing" in m for m in logs)
    assert any("step-4.pt is truncated or corrupt" in m for m in logs)
    # the entry says why newer checkpoints were skipped (train reports it as resume_fallback)
    assert entry["fallback"].startswith("checkpoints/step-6.pt is missing (no such object: ")
    assert entry["fallback"].endswith("; checkpoints/step-4.pt is truncated or corrupt (size/sha256 mismatch)")
    assert "fallback" not in run.pointer()["history"][-1]  # the pointer itself is not touched
    (ckdir / "step-2.pt").write_bytes(b"x" * entry["bytes"])  # right size, wrong bytes
    logs.clear()
    assert run.load_latest(logs.append) == (None, None)
    assert logs[-1] == "no readable checkpoint found; starting from scratch"
    assert scratch_left(tmp_path) == []


@pytest.mark.parametrize("garbage", [b"\x00\xffnot json", b'"a string"', b"[1, 2]", b'{"latest": {"path": '
                                     b'"checkpoints/step-4.pt", "step": 4}, "history": []}',  # no bytes, no sha256
                                     b'{"latest": {"path": "../../etc/passwd", "step": 4, "bytes": 1, "sha256": "x"}}'])
def test_an_unreadable_pointer_is_rebuilt_from_the_blobs_and_nothing_is_lost(tmp_path, garbage):
    """Issue 27: garbage in latest.json was read as 'no checkpoint', training restarted from step 0 and
    its first save deleted every older checkpoint."""
    run = Run(f"file://{tmp_path}/r")
    for step in (2, 4):
        run.publish_checkpoint(ckpt(step), step, keep=3)
    (tmp_path / "r" / LATEST).write_bytes(garbage)
    assert run.pointer() is None and run.latest_step() is None  # the scheduler's reads do not crash either
    logs = []
    got, entry = run.load_latest(logs.append)
    assert got["step"] == 4 and entry["step"] == 4 and torch.equal(got["w"], ckpt(4)["w"])
    assert len(logs) == 1 and logs[0].startswith(f"warning: {LATEST} is unreadable (") and "rebuilding" in logs[0]
    assert entry["bytes"] == (tmp_path / "r" / "checkpoints" / "step-4.pt").stat().st_size  # a verifiable entry
    # a save at an earlier step (a run that did start over) deletes no later checkpoint
    run.publish_checkpoint(ckpt(1), 1, keep=3)
    names = sorted(p.name for p in (tmp_path / "r" / "checkpoints").glob("*.pt"))
    assert names == ["step-1.pt", "step-2.pt", "step-4.pt"]
    assert run.load_latest(quiet)[1]["step"] == 1  # the pointer names step 1 now, but nothing was lost


def test_a_missing_pointer_with_blobs_resumes_from_the_newest_that_loads(tmp_path):
    run = Run(f"file://{tmp_path}/r")
    for step in (2, 4, 6):
        run.publish_checkpoint(ckpt(step), step, keep=3)
    ckdir = tmp_path / "r" / "checkpoints"
    (tmp_path / "r" / LATEST).unlink()
    torch.save(ckpt(5), ckdir / "step-6.pt")  # a blob that does not hold its own step is not trusted
    logs = []
    got, entry = run.load_latest(logs.append)
    assert got["step"] == 4 and entry["path"] == "checkpoints/step-4.pt"
    assert logs[0].startswith(f"warning: {LATEST} is missing but 3 checkpoint(s)")
    assert entry["fallback"] == "checkpoints/step-6.pt does not hold step 6"


def test_blobs_that_cannot_be_proven_corrupt_are_never_trained_over_from_step_0(tmp_path):
    run = Run(f"file://{tmp_path}/r")
    run.publish_checkpoint(ckpt(2), 2, keep=3)
    (tmp_path / "r" / LATEST).write_text("{")
    (tmp_path / "r" / "checkpoints" / "step-2.pt").write_bytes(b"a format this gwi cannot read")
    with pytest.raises(GwiError, match=r"no checkpoint loads, and checkpoints/step-2\.pt may not be corrupt.*"
                                       r"refusing to train over it from step 0"):
        run.load_latest(quiet)
    assert (tmp_path / "r" / "checkpoints" / "step-2.pt").exists()


def test_a_publish_deletes_nothing_until_its_blob_is_in_the_store_whole(tmp_path, monkeypatch):
    run = Run(f"file://{tmp_path}/r")
    run.publish_checkpoint(ckpt(2), 2, keep=1)
    real_put = type(run.store).put_file

    def short_put(self, src, key, *, move=False):  # a store that keeps a truncated object
        real_put(self, src, key, move=move)
        path = self.path(key)
        path.write_bytes(path.read_bytes()[:10])

    monkeypatch.setattr(type(run.store), "put_file", short_put)
    with pytest.raises(GwiError, match=r"step-3\.pt: 10 bytes in the store after the upload, expected \d+; older "
                                       r"checkpoints kept"):
        run.publish_checkpoint(ckpt(3), 3, keep=1)
    assert (tmp_path / "r" / "checkpoints" / "step-2.pt").exists()
    monkeypatch.undo()
    assert run.load_latest(quiet)[0]["step"] == 2  # the truncated step 3 is proven corrupt, step 2 is there


def model_ckpt(step: int = 3) -> tuple[dict, torch.nn.Module]:
    args = registry.model_args("inversionnet", "tiny")
    torch.manual_seed(0)
    model = registry.build_from_args("inversionnet", args)
    ema = {k: v + 1 if v.dtype.is_floating_point else v for k, v in model.state_dict().items()}
    return {"format": "gwi-checkpoint", "model": {"name": "inversionnet", "preset": "tiny", "args": args},
            "state_dict": model.state_dict(), "ema": ema, "step": step, "epoch": 0, "split": "kfold:5:1",
            "normalisation": {"seis_min": -1.0, "seis_max": 2.0, "vel_min": 1500.0, "vel_max": 4500.0,
                              "vel_mean": 3000.0}}, model


def test_load_model_from_a_run_url_and_from_a_pt(tmp_path, monkeypatch):
    ck, model = model_ckpt()
    run = Run(f"file://{tmp_path}/s/runs/r")
    entry = run.publish_checkpoint(ck, 3, keep=2)
    m = load_model(run.url, torch.device("cpu"), use_ema=False)
    assert (m.name, m.step, m.split, m.source) == ("inversionnet", 3, "kfold:5:1", run.key_url(entry["path"]))
    assert (m.norm.seis_max, m.norm.vel_mean) == (2.0, 3000.0) and not m.model.training
    for k, v in model.state_dict().items():
        assert torch.equal(m.model.state_dict()[k], v), k
    head = "head.weight"
    assert torch.equal(load_model(run.url, "cpu").model.state_dict()[head], ck["ema"][head])  # EMA by default

    pt = tmp_path / "s" / "runs" / "r" / entry["path"]
    for ref in (str(pt), f"file://{pt}"):
        assert load_model(ref, "cpu").source == ref
    # an offline mirror of a remote store (a Kaggle dataset) serves both kinds of reference
    monkeypatch.setenv("GWI_STORE_MAP", json.dumps({"s3://bucket/x": f"file://{tmp_path}/s"}))
    assert load_model("s3://bucket/x/runs/r", "cpu").source == f"s3://bucket/x/runs/r/{entry['path']}"
    assert load_model(f"s3://bucket/x/runs/r/{entry['path']}", "cpu").source == f"file://{pt}"
    assert scratch_left(tmp_path) == []


def test_load_model_errors_name_the_reference(tmp_path):
    with pytest.raises(GwiError, match=r"none\.pt: no such file"):
        load_model(str(tmp_path / "none.pt"), "cpu")
    with pytest.raises(GwiError, match=r"/empty: no usable checkpoint \(expected checkpoints/latest.json"):
        load_model(f"file://{tmp_path}/empty", "cpu")
    torch.save({"format": "other"}, tmp_path / "x.pt")
    with pytest.raises(GwiError, match=r"x\.pt: not a gwi checkpoint"):
        load_model(str(tmp_path / "x.pt"), "cpu")
    (tmp_path / "bad.pt").write_bytes(b"not a zip")
    with pytest.raises(GwiError, match=r"bad\.pt: cannot be loaded"):
        load_model(str(tmp_path / "bad.pt"), "cpu")


def test_importing_runs_and_progress_loads_no_torch():
    code = "import sys, gwi.runs, gwi.progress; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
