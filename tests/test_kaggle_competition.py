"""The Kaggle round trip through the official package against the fake Kaggle API on 127.0.0.1:
``gwi kaggle download`` (rules refused, killed halfway and resumed by a Range request, unzipped,
prepared), ``gwi kaggle submit`` (validated first, scored by the fake as the competition scores)
and ``gwi kaggle submissions``. Credentials come only from ``~/.kaggle/kaggle.json``."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from gwi.adapters.kaggle_competition import unzip
from gwi.paths import UnsafePath
from gwi.predict import HEADER, rows_csv

from .conftest import write_kaggle
from .fake_kaggle import KaggleState, serve

GWI = shutil.which("gwi", path=str(Path(sys.executable).parent)) or "gwi"
COMP = "waveform-inversion"


def competition_zip(root: Path) -> tuple[bytes, dict]:
    """A small competition archive: train_samples in both naming styles, test/<oid>.npy, the sample
    submission; and the test maps the fake scores against."""
    src = root / "src"
    write_kaggle(src, {"FlatVel_A": [3, 2], "CurveFault_B": [2]})
    rng = np.random.default_rng(5)
    (src / "test").mkdir()
    truth = {}
    for oid in ("000039dca2", "0a1b2c3d4e", "ffe0d1c2b3"):
        np.save(src / "test" / f"{oid}.npy", rng.standard_normal((5, 1000, 70)).astype(np.float32))
        truth[oid] = rng.uniform(1500, 4400, (70, 70))
    (src / "sample_submission.csv").write_text(HEADER + "\n")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:  # random floats: compression would not help
        for f in sorted(src.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(src).as_posix())
    return buf.getvalue(), truth


@pytest.fixture
def world(tmp_path):
    st = KaggleState(tmp_path / "kaggle", "alice", "kaggle-key-xyz", {})
    st.competitions[COMP], st.truth = competition_zip(tmp_path)
    srv, url = serve(st)
    home = tmp_path / "gwi-home"
    (home / "platforms").mkdir(parents=True)
    (home / "platforms" / "kaggle.yaml").write_text(json.dumps({
        "adapter": "kaggle", "gpus": 1, "credentials": ["KAGGLE_USERNAME", "KAGGLE_KEY"],
        "options": {"api_endpoint": url}}))
    user = tmp_path / "user"
    (user / ".kaggle").mkdir(parents=True)
    (user / ".kaggle" / "kaggle.json").write_text(json.dumps({"username": "alice", "key": "kaggle-key-xyz"}))
    (user / ".kaggle" / "kaggle.json").chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "AWS_"))}
    env.update(HOME=str(user), GWI_HOME=str(home), GWI_COLOR="never")
    yield {"st": st, "env": env, "home": home, "dir": tmp_path / "data"}
    st.stop_all()
    srv.shutdown()


def gwi(world, *args, timeout=180):
    return subprocess.run([GWI, "kaggle", *args], capture_output=True, text=True, env=world["env"], timeout=timeout)


def test_download_refused_then_killed_halfway_resumes_unzips_and_prepares(world):
    st, folder = world["st"], world["dir"]
    r = gwi(world, "download", "--dir", str(folder))
    assert r.returncode == 1 and f"accept its rules at https://www.kaggle.com/competitions/{COMP}/rules" in r.stderr
    assert "Traceback" not in r.stderr
    st.rules_accepted.add(COMP)
    total = len(st.competitions[COMP])
    st.bytes_per_s = total / 8  # about 8 s for the whole archive: time to kill it halfway
    archive = folder / f"{COMP}.zip"
    proc = subprocess.Popen([GWI, "kaggle", "download", "--dir", str(folder)], env=world["env"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (archive.exists() and archive.stat().st_size > total // 4):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = archive.stat().st_size
    assert total // 4 < partial < total
    st.bytes_per_s = None
    r = gwi(world, "download", "--dir", str(folder))
    assert r.returncode == 0, r.stdout + r.stderr
    # the second process asked only for the rest of the same object
    resumed = [h for h in st.ranges[1:] if h]
    assert resumed and int(resumed[0].split("=")[1].split("-")[0]) >= partial, st.ranges
    root = folder / COMP
    assert (root / "train_samples" / "FlatVel_A" / "data" / "data2.npy").exists() and len(list((root / "test").iterdir())) == 3
    assert not archive.exists() and (root / ".gwi-download.json").exists()
    store = world["home"] / "store" / "datasets"
    train = json.loads((store / "kaggle-train-f16" / "manifest.json").read_text())
    test = json.loads((store / "kaggle-test-f16" / "manifest.json").read_text())
    assert train["num_samples"] == 7 and set(train["families"]) == {"FlatVel_A", "CurveFault_B"}
    assert test["num_samples"] == 3 and test["source"]["path"] == str((root / "test").resolve())
    # again: nothing fetched, nothing prepared twice
    n = len(st.ranges)
    r = gwi(world, "download", "--dir", str(folder))
    assert r.returncode == 0 and len(st.ranges) == n, r.stdout + r.stderr
    assert "--force fetches it again" in r.stdout and r.stdout.count("already prepared") == 2


def test_unzip_keeps_whole_members_and_refuses_names_that_escape(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("train_samples/a.npy", b"a" * 1000)
        z.writestr("test/b.npy", b"b" * 10)
        z.writestr("sample_submission.csv", b"h\n")
    root = tmp_path / "out"
    assert unzip(archive, root) == (3, 3)
    (root / "test" / "b.npy").write_bytes(b"b")  # cut short, as by a kill before its rename
    assert unzip(archive, root) == (3, 1) and (root / "test" / "b.npy").read_bytes() == b"b" * 10
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as z:
        z.writestr("../escaped.txt", b"x")
    with pytest.raises(UnsafePath, match="contains '..'"):
        unzip(tmp_path / "evil.zip", tmp_path / "evil")
    assert not (tmp_path / "escaped.txt").exists()
    (tmp_path / "cut.zip").write_bytes(archive.read_bytes()[:200])
    from gwi.errors import GwiError

    with pytest.raises(GwiError, match="not a whole zip archive"):
        unzip(tmp_path / "cut.zip", tmp_path / "cut")


@pytest.mark.parametrize("members, says", [
    ([("data/x", b"file"), ("data/x/y.npy", b"under it")], "member 'data/x' is a file, and other members need it as a "
                                                         "folder (data/x/...); not unzipped"),
    ([("data/x/y.npy", b"under it"), ("data/x", b"file")], "member 'data/x' is a file, and other members"),
    ([("a.npy", b"1"), ("link", "LINK"), ("link/y.npy", b"through it")], "member 'link' is a symbolic link"),
    ([("a.npy", b"1"), ("a.npy", b"2")], "member 'a.npy' appears twice"),
])
def test_unzip_conflicts_are_one_line_and_nothing_is_extracted(tmp_path, members, says):
    """Issue 27: a zip with x then x/y (or a link, then a path through it) gave FileExistsError with the
    members before it left extracted."""
    import stat
    import warnings

    from gwi.errors import GwiError

    archive = tmp_path / "a.zip"
    with warnings.catch_warnings(), zipfile.ZipFile(archive, "w") as z:
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name: that is the test
        for name, data in members:
            if data == "LINK":
                info = zipfile.ZipInfo(name)
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                z.writestr(info, "/etc")
            else:
                z.writestr(name, data)
    root = tmp_path / "out"
    with pytest.raises(GwiError) as e:
        unzip(archive, root)
    assert str(e.value).startswith(f"{archive}: ") and says in str(e.value) and "\n" not in str(e.value)
    assert not root.exists() or not any(root.rglob("*"))


def test_unzip_over_a_folder_where_a_file_goes_names_the_member(tmp_path):
    from gwi.errors import GwiError

    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a.npy", b"1")
        z.writestr("b.npy", b"2")
    (tmp_path / "out" / "b.npy").mkdir(parents=True)
    with pytest.raises(GwiError, match=r"member 'b\.npy' cannot be written to .*out/b\.npy: .*move what is there aside"):
        unzip(archive, tmp_path / "out")


def test_submit_validates_first_then_submissions_list_the_score(world, tmp_path):
    st = world["st"]
    st.rules_accepted.add(COMP)
    bad = tmp_path / "bad.csv"
    bad.write_text("id,x\n1,2\n")
    r = gwi(world, "submit", str(bad), "-m", "oops")
    assert r.returncode == 1 and "not submitted, not a valid submission" in r.stderr and st.uploads == {}
    oids = sorted(st.truth)
    sub = tmp_path / "submission.csv"
    sub.write_text(HEADER + "\n" + rows_csv(oids, np.stack([st.truth[o] + 10.0 for o in oids])))
    r = gwi(world, "submit", str(sub), "-m", "ensemble + refine")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "valid (3 maps, 210 rows)" in r.stdout and "Successfully submitted" in r.stdout
    r = gwi(world, "submissions")
    assert r.returncode == 0 and "ensemble + refine" in r.stdout and "complete" in r.stdout, r.stdout + r.stderr
    rows = json.loads(gwi(world, "submissions", "--json").stdout)
    assert len(rows) == 1 and abs(float(rows[0]["public_score"]) - 10.0) < 0.01  # the fake scored the upload
    r = gwi(world, "submissions", "--competition", "nope")
    assert r.returncode == 1 and "Kaggle has no competition 'nope'" in r.stderr
