"""Forward-model speed and agreement, both backends measured in one run on this machine.

    python bench/physics.py                      # CPU: batch 1 and 4, 2 repeats
    python bench/physics.py --device cuda --batch 16,64,256
    python bench/physics.py --wait-idle 120      # wait for the machine to go quiet first

For each backend and batch: samples per minute forward (no gradient, what synthesis and
re-simulation use) and forward+backward (what refinement uses), peak memory on a GPU, and the
relative L2 difference to the reference fixture made by the organisers' published code
(tests/fixtures/openfwi_forward/). Target (issue 15): openfwi >= 20,000 samples/min on one H100.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import OthersCPU, log, machine_lines, others_text, table, wait_idle  # noqa: E402

from gwi import physics  # noqa: E402
from gwi.data.synth import velocity_batch  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "openfwi_forward" / "reference.npz"
TARGET_PER_MIN = 20_000


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def maps(batch: int) -> torch.Tensor:
    fams = ("FlatVel_A", "CurveVel_B", "FlatFault_A", "CurveFault_B", "Style_A")
    v = np.concatenate([velocity_batch(fams[i % len(fams)], 7, i, 1) for i in range(batch)])
    return torch.from_numpy(v)  # (B, 70, 70)


def timed(fn, device: torch.device, repeats: int) -> float:
    """Best of ``repeats`` (seconds), after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def fixture_error(name: str, device: torch.device) -> str:
    ref = np.load(FIXTURE)
    with torch.no_grad():
        out = physics.backend(name, device=device)(torch.from_numpy(ref["velocity"])).cpu().numpy()
    err = [np.linalg.norm(out[i] - ref["seismic"][i]) / np.linalg.norm(ref["seismic"][i]) for i in range(len(out))]
    return f"{max(err):.1e}"


def run(name: str, batch: int, device: torch.device, repeats: int, grad: bool) -> dict:
    fwd = physics.backend(name, device=device)
    v = maps(batch).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def forward():
        with torch.no_grad():
            fwd(v)

    def forward_backward():
        x = v.clone().requires_grad_(True)
        (fwd(x) ** 2).mean().backward()

    others = OthersCPU().start()
    t = timed(forward_backward if grad else forward, device, repeats)
    share = others.stop()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"backend": name, "batch": batch, "grad": grad, "s": t, "per_min": batch / t * 60, "peak_gib": peak,
            "others": share}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", default="1,4", help="comma-separated batch sizes")
    ap.add_argument("--grad-batch", default="1", help="batch sizes for forward+backward ('' to skip)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--backends", default=",".join(physics.BACKENDS))
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="S")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    import deepwave

    print("\n".join(machine_lines(["bench/physics.py", *argv],
                                  f"torch {torch.__version__}, deepwave {getattr(deepwave, '__version__', '?')}, "
                                  f"{torch.get_num_threads()} threads")))
    if device.type == "cuda":
        print(f"gpu     : {torch.cuda.get_device_name(device)}")
    wait_idle(a.wait_idle, "physics")
    rows, results = [], []
    for name in a.backends.split(","):
        err = fixture_error(name, device)
        for grad, sizes in ((False, a.batch), (True, a.grad_batch)):
            for b in (int(x) for x in sizes.split(",") if x):
                log(f"{name}: batch {b}{' forward+backward' if grad else ''} on {device}")
                r = run(name, b, device, a.repeats, grad)
                results.append(r)
                rows.append((name, "fwd+bwd" if grad else "forward", str(b), f"{r['s']:.2f}", f"{r['per_min']:,.0f}",
                             "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}", err,
                             "-" if r["others"] is None else f"{r['others']:.0%}"))
    print()
    print(table(("backend", "pass", "batch", "s/batch", "samples/min", "peak GiB", "rel. L2 vs fixture", "others"),
                rows, right={2, 3, 4, 5}))
    best = max((float(r[4].replace(",", "")) for r in rows if r[0] == "openfwi" and r[1] == "forward"), default=0.0)
    print(f"\nopenfwi forward, best: {best:,.0f} samples/min on {device} (target on one H100: "
          f">= {TARGET_PER_MIN:,}; {'met' if best >= TARGET_PER_MIN else 'not met'} here)")
    worst = max((r["others"] for r in results if r["others"] is not None), default=None)
    print(others_text(worst))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
