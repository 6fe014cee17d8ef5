"""The image, for real: an offline ``docker run gwi predict`` writes a valid submission.

Needs a docker engine and the test image (``.ci/docker-image.sh`` builds ``gwi:test``; CI runs it).
Without an engine the test skips and says why; in CI (``CI=true``) a missing engine is a failure.
CI builds the image in the background while the other tests run (``.ci/run``): the test waits for
that build, whose folder ``GWI_TEST_IMAGE_STATUS`` names (its ``log``, and ``rc`` once it ends).
"""

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from gwi.config import TrainConfig
from gwi.data.synth import synthesize, velocity_batch
from gwi.physics import simulate
from gwi.predict import check_submission
from gwi.training import train

IMAGE = os.environ.get("GWI_TEST_IMAGE", "gwi:test")


def build_problem(status: str, timeout_s: float = 1800) -> str | None:
    """Wait for CI's background image build; what went wrong with it, or None."""
    rc, log = Path(status, "rc"), Path(status, "log")
    deadline = time.monotonic() + timeout_s
    while not rc.exists():
        if time.monotonic() > deadline:
            return f"the image build ({log}) did not finish in {timeout_s:.0f} s"
        time.sleep(2)
    code = rc.read_text().strip()
    if code != "0":
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
        return f"the image build failed (exit {code}); the end of {log}:\n{tail}"
    return None


def engine_problem() -> str | None:
    status = os.environ.get("GWI_TEST_IMAGE_STATUS")
    if status and (why := build_problem(status)):
        return why
    if not shutil.which("docker"):
        return "no docker client on PATH"
    r = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        return "no docker engine answers 'docker info' (start dockerd, or run .ci/docker-image.sh)"
    r = subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        return f"image {IMAGE} is not built (run .ci/docker-image.sh)"
    return None


@pytest.fixture(scope="module")
def image():
    why = engine_problem()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the docker test: {why}")
        pytest.skip(why)
    return IMAGE


@pytest.mark.slow
def test_offline_docker_predict_writes_a_valid_submission(image, tmp_path):
    data = tmp_path / "work"
    data.mkdir()
    synthesize(["FlatVel_A"], 10, f"file://{data}/store", "d", seed=4, batch_size=10, progress=False, backend="deepwave")
    train(TrainConfig(model="inversionnet", preset="tiny", dataset=f"file://{data}/store/datasets/d",
                      run=f"file://{data}/store/runs/r", epochs=1, batch_size=4, heartbeat_s=30), log=lambda *_: None)
    test = data / "test"
    test.mkdir()
    x = simulate(velocity_batch("FlatVel_A", 5, 0, 3), "deepwave").numpy()
    for i, xi in enumerate(x):
        np.save(test / f"oid{i}.npy", xi)
    for p in [data, *data.rglob("*")]:  # the image runs as its own user, uid 1000
        p.chmod(0o777 if p.is_dir() else 0o666)

    r = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "-v", f"{data}:/work", image, "predict",
         "--checkpoint", "/work/store/runs/r", "--test", "/work/test", "--out", "/work/submission.csv", "--tta", "flip"],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 test files, 210 rows" in r.stdout
    summary, problems = check_submission(data / "submission.csv", str(test))
    assert problems == [] and summary == {"rows": 210, "oids": 3}

    r = subprocess.run(["docker", "run", "--rm", "--network", "none", "-v", f"{data}:/work", image, "submission",
                        "check", "/work/submission.csv", "--test", "/work/test"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "valid (3 test files, 210 rows)" in r.stdout
    r = subprocess.run(["docker", "run", "--rm", "--network", "none", image, "models"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and all(m in r.stdout for m in ("egnn", "se3_transformer", "heat_kernel", "caformer_unet",
                                                           "convnext_unet", "vit_fwi"))
    assert Path(data / "submission.csv").stat().st_size > 0
    # the image's torch is the one these tests run (the Dockerfile pins TORCH_VERSION)
    import torch

    r = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "python3", image, "-c",
                        "import torch; print(torch.__version__)"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.split("+")[0].strip() == torch.__version__.split("+")[0], r.stdout + r.stderr


@pytest.mark.slow
def test_local_adapter_runs_jobs_in_the_image_and_cancels_them(image, tmp_path):
    """The local platform with ``runtime: docker``: the job runs in a container of the gwi image
    (named after the attempt, the file store mounted at its own path), beats, and ends; a cancelled
    job's container is stopped."""
    import json
    import time

    from gwi.adapters.base import load_profiles
    from gwi.scheduler import Scheduler
    from gwi.spec import load_spec
    from gwi.store import open_store

    plat = tmp_path / "platforms"
    plat.mkdir()
    (plat / "box.yaml").write_text(f"adapter: local\ncapacity: 2\nstart_timeout_s: 120\n"
                                   f"options: {{runtime: docker, image: '{image}', grace_s: 2}}\n")
    store = f"file://{tmp_path}/store"
    spec = tmp_path / "d.yaml"
    spec.write_text(f"""name: dk
store: {store}
defaults: {{platforms: [box], heartbeat_s: 1, limits: {{stall_s: 60}}}}
jobs:
  - {{name: data, kind: synth, backend: deepwave, dataset: d, families: [FlatVel_A], samples: 2}}
  - {{name: long, kind: synth, backend: deepwave, dataset: big, families: [CurveVel_B], samples: 5000}}
""")
    s = Scheduler(tmp_path / "home", profiles=load_profiles([plat]))
    s.submit(load_spec(spec, profiles=s.profiles))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        s.reconcile()
        states = {j["name"]: j["state"] for j in s.state.jobs()}
        if states["data"] in ("succeeded", "failed") and s.state.attempts("dk/long")[0]["state"] == "running":
            break
        time.sleep(0.5)
    a = s.state.attempts("dk/data")[0]
    assert states["data"] == "succeeded", (a["end_reason"], s.logs("dk/data")[1][-2000:])
    assert json.loads(a["handle"])["container"] == "gwi-dk-data-1"
    assert json.loads(open_store(store + "/datasets/d").get_bytes("manifest.json"))["num_samples"] == 2
    assert json.loads(open_store(store + "/runs/dk/data/attempts/1").get_bytes("progress.json"))["state"] == "succeeded"
    assert "dataset d at" in s.logs("dk/data")[1]
    assert s.cancel("dk/long") == "dk/long cancelled; attempt 1 on box stopped"
    r = subprocess.run(["docker", "inspect", "-f", "{{.State.Status}}", "gwi-dk-long-1"], capture_output=True, text=True)
    assert r.stdout.strip() == "exited"
    subprocess.run(["docker", "rm", "-f", "gwi-dk-data-1", "gwi-dk-long-1"], capture_output=True)
    s.close()


@pytest.mark.slow
def test_docker_stop_reaches_training_which_checkpoints_before_it_exits(image, tmp_path):
    """``docker run --init`` (what the local platform does): the stop's SIGTERM reaches gwi, not a PID 1
    that ignores it, and training saves a checkpoint at the step it was on, well inside the grace."""
    import json
    import time

    data = tmp_path / "work"
    data.mkdir()
    synthesize(["FlatVel_A"], 12, f"file://{data}/store", "d", seed=4, batch_size=12, progress=False, backend="deepwave")
    name = f"gwi-stop-test-{os.getpid()}"
    r = subprocess.run(["docker", "run", "-d", "--init", "--name", name, "--network", "none",
                        "--user", f"{os.getuid()}:{os.getgid()}", "-e", "HOME=/tmp", "-e", "GWI_CACHE=/tmp/cache",
                        "-v", f"{data}:{data}", image, "train", "--model", "inversionnet", "--preset", "tiny",
                        "--dataset", f"file://{data}/store/datasets/d", "--run", f"file://{data}/store/runs/r",
                        "--epochs", "400", "--batch-size", "4", "--device", "cpu", "--heartbeat-s", "0.5",
                        "--set", "checkpoint_every=100000"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    try:
        progress = data / "store" / "runs" / "r" / "progress.json"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if progress.exists() and json.loads(progress.read_text() or "{}").get("step", 0) >= 3:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("training did not start:\n" + subprocess.run(["docker", "logs", name],
                                                                             capture_output=True, text=True).stderr)
        t0 = time.monotonic()
        subprocess.run(["docker", "stop", "-t", "30", name], capture_output=True, text=True, timeout=60)
        took = time.monotonic() - t0
        code = subprocess.run(["docker", "inspect", "-f", "{{.State.ExitCode}}", name], capture_output=True,
                              text=True).stdout.strip()
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    out = logs.stdout + logs.stderr
    assert code == "143" and took < 25, (code, took, out[-2000:])
    assert "stopped by SIGTERM at step" in out, out[-2000:]
    step = int(out.split("stopped by SIGTERM at step ")[1].split(":")[0])
    ptr = json.loads((data / "store" / "runs" / "r" / "checkpoints" / "latest.json").read_text())
    assert ptr["latest"]["path"] == f"checkpoints/step-{step}.pt" and step >= 3
